"""``builtin:tiny-lm``: a tiny, seeded, random-weight GPT-2 causal LM with a code-built tokenizer.

About 150K parameters and a word-level vocabulary of the common prompt words
(``models.tiny_tokenizer.COMMON_WORDS``), saved in the plain transformers layout
(``config.json``, ``model.safetensors``, tokenizer files with a chat template,
``generation_config.json``) that ``models.llm.PromptWriter`` loads. Its text is gibberish but
deterministic: enough to test the LLM stage (seeds, batch invariance, fan-out, retries, errors).
"""

from __future__ import annotations

from typing import Any

from models.tiny_tokenizer import COMMON_WORDS

__all__ = ["CHAT_TEMPLATE", "USER", "ASSISTANT", "build_tiny_lm"]

EOS = "<|endoftext|>"
UNK = "<unk>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
# The agreed rule (``models.llm``): the stage wraps the filled instruction as one user message.
CHAT_TEMPLATE = (
    "{% for message in messages %}" + USER + " {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


class _LmFolder:
    """A causal LM and its tokenizer, saved into one folder like hub checkpoints."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, folder: str, **kwargs: Any) -> None:
        """Write the model (with its generation config) and the tokenizer into ``folder``."""
        self.model.save_pretrained(folder, **kwargs)
        self.tokenizer.save_pretrained(folder)


def _tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary; decoding joins words with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [EOS, UNK, USER, ASSISTANT, *dict.fromkeys(COMMON_WORDS), ",", "."]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with one space
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, unk_token=UNK, additional_special_tokens=[USER, ASSISTANT],
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_lm() -> _LmFolder:
    """Build the tiny GPT-2 LM (2 layers, 64 wide, seeded weights) with its tokenizer.

    Returns:
        an object whose ``save_pretrained(folder)`` writes the transformers folder.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        initializer_range=0.3)  # sharper than 0.02: the text depends on the prompt
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    return _LmFolder(model, tokenizer)
