"""The LLM prompt writer: a transformers causal LM that rewrites prompts, one seed per row.

``PromptWriter`` loads a plain transformers causal-LM folder (``AutoTokenizer`` /
``AutoModelForCausalLM``: ``config.json``, weights, tokenizer files, ``generation_config.json``),
fills the instruction with each prompt, wraps it in the tokenizer's chat template when it has
one (one user message, ``add_generation_prompt=True``), generates new tokens until EOS or
``max_new_tokens`` and decodes them with ``skip_special_tokens``, whitespace stripped.

**Seeds and batch invariance.** ``transformers``' ``generate`` samples every row of a batch
from one global generator, so a row's text would depend on its batch-mates. Here the decoding
loop is our own: each row samples from its own ``torch.Generator`` seeded with the row's seed,
one draw per step, on the CPU (the same generator stream on every device). Rows run in chunks
of ``micro_batch`` rows, left-padded to the chunk's longest prompt, with position ids counted
from each row's first real token. At ``micro_batch=1`` (the stage's default) every forward pass
holds one row, so a row's text depends on its prompt, seed and settings alone. Larger chunks run
other matmul shapes, whose logits may differ in the last bits and could flip a near-tie draw on
some model; measured on ``builtin:tiny-lm`` on CPU (16 prompts of 1-30 words, 24 new tokens,
chunks of 2-16 rows, 1 and 2 threads, sampled and greedy) every text was the same as row by
row (``tests/models/test_llm.py`` keeps a smaller version of that check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from models.store import model_fingerprint

__all__ = ["PromptWriter", "TextWindow"]


class PromptWriter:
    """A causal LM that writes one text per (prompt, seed).

    Args:
        model_path: a local transformers causal-LM folder.
        device: ``cpu`` or ``cuda``.
        dtype: the weights' dtype name (``float32``, ``bfloat16``, ...); None keeps float32.
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = torch.device(device)
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype or "float32"))
        self.model = model.to(self.device).eval()
        ends = self.model.generation_config.eos_token_id
        ends = ends if isinstance(ends, list) else [ends]
        self.eos = {int(token) for token in (*ends, self.tokenizer.eos_token_id) if token is not None}
        self.info = {"model_hash": model_fingerprint(model_path)}

    def render(self, prompt: str, instruction: str = "{prompt}") -> str:
        """Return the text the LM continues: ``instruction`` filled with ``prompt``, in the chat template if any."""
        text = instruction.format(prompt=prompt)
        if not getattr(self.tokenizer, "chat_template", None):
            return text
        messages = [{"role": "user", "content": text}]
        return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    @torch.no_grad()
    def write(
        self, prompts: Sequence[str], seeds: Sequence[int], *, instruction: str = "{prompt}",
        max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
        micro_batch: int = 1,
    ) -> list[str]:
        """Return the LM's text for each prompt, drawn with that row's seed.

        Args:
            prompts: the rows' prompts; ``seeds``: one seed per prompt.
            micro_batch: rows per forward pass (see the module docstring: 1 is batch invariant).

        Raises:
            ValueError: ``prompts`` and ``seeds`` differ in length.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        texts: list[str] = []
        for start in range(0, len(prompts), micro_batch):
            chunk = [self.render(p, instruction) for p in prompts[start:start + micro_batch]]
            texts += self._chunk(chunk, list(seeds[start:start + micro_batch]), max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, do_sample=do_sample)
        return texts

    def _chunk(self, texts: list[str], seeds: list[int], *, max_new_tokens: int, temperature: float,
               top_p: float, do_sample: bool) -> list[str]:
        """Decode one left-padded chunk, each row with its own generator; returns the decoded new text."""
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template holds its own specials
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)
        ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        new: list[list[int]] = [[] for _ in texts]
        done = [False] * len(texts)
        past: Any = None
        step_ids, step_positions = ids, positions
        for _ in range(max_new_tokens):
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions,
                             past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            picks = [self.tokenizer.pad_token_id if done[row] else
                     _pick(logits[row], generators[row], temperature=temperature, top_p=top_p, sample=do_sample)
                     for row in range(len(texts))]
            for row, token in enumerate(picks):
                if not done[row]:
                    done[row] = token in self.eos
                    if not done[row]:
                        new[row].append(token)
            if all(done):
                break
            step_ids = torch.tensor(picks, device=self.device)[:, None]
            step_positions = step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return [str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip() for tokens in new]


def _pick(logits: torch.Tensor, generator: torch.Generator, *, temperature: float, top_p: float,
          sample: bool) -> int:
    """Return the next token from one row's float32 CPU logits: argmax, or a top-p draw from ``generator``."""
    if not sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = (ordered.cumsum(-1) - ordered) < top_p  # the smallest head whose mass reaches top_p (>= 1 token)
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class TextWindow:
    """The image model's prompt window: the tokenizer and length that define its ``prompt_truncated``.

    The same rule as the encode stage (``models.families.token_window``): a diffusers family's
    ``window_tokenizer`` subfolder, capped by its ``max_sequence_length`` (T5's for FLUX/SD3,
    Gemma's 300 for Sana); any other folder (a GAN's text tower) its ``tokenizer`` subfolder.
    Counts as ``models.encoder.PromptEncoder.token_counts`` does (special tokens included, no
    truncation). A folder without that tokenizer has no window (``limit`` None).

    Args:
        image_model_path: the local image-model folder.
    """

    def __init__(self, image_model_path: str) -> None:
        import os

        from transformers import AutoTokenizer

        from models.families import FAMILIES, read_model_index

        family = None
        if os.path.isfile(os.path.join(image_model_path, "model_index.json")):
            family = FAMILIES.get(read_model_index(image_model_path).get("_class_name", ""))
        folder = os.path.join(image_model_path, family.window_tokenizer if family else "tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(folder) if os.path.isdir(folder) else None
        self.limit: int | None = None
        if self.tokenizer is not None:
            self.limit = family.window_of(self.tokenizer) if family else int(self.tokenizer.model_max_length)

    def count(self, text: str) -> int:
        """Return the tokens of ``text`` in the image model's tokenizer (0 without a window)."""
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])
