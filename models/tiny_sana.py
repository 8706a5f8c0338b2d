"""``builtin:tiny-sana``: a tiny, seeded Sana pipeline built in code, an LLM-encoded family.

Sana encodes prompts with a decoder-only LLM (Gemma 2) instead of CLIP/T5: the pipeline
prepends a long "complex human instruction" to each prompt, pads to a fixed window
(``max_sequence_length``, 300) and hands the denoiser the hidden states *with their
attention mask*. This module builds the real classes at toy sizes (``SanaPipeline``:
``GemmaTokenizer``, ``Gemma2Model``, ``SanaTransformer2DModel``, ``AutoencoderDC``,
``DPMSolverMultistepScheduler`` with flow sigmas as Sana's checkpoints ship it), so the
family's whole path runs on CPU in seconds without a download.

The tokenizer is a ``GemmaTokenizer`` (byte-fallback BPE over ``▁``-joined text, BOS added)
whose vocabulary has whole-word tokens for the common prompt words and for the words of
the pipeline's instruction, so the instruction is a few hundred tokens, not a thousand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.tiny_tokenizer import COMMON_WORDS

if TYPE_CHECKING:
    from diffusers import SanaPipeline

TEXT_HIDDEN = 32  # Gemma 2 hidden size = the transformer's caption_channels
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # GemmaTokenizer's default ids 0-4
SPACE = "▁"  # SentencePiece's word boundary, as Gemma writes a space


def _seeded(build: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``build(**kwargs)`` right after ``torch.manual_seed(0)`` (deterministic weights)."""
    import torch

    torch.manual_seed(0)
    return build(**kwargs)


def _merge_pieces(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the merges in ``ranks`` to ``pieces`` lowest rank first, as BPE does."""
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def gemma_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return ``(vocab, merges)`` of a Gemma-style BPE with whole-word tokens ``word`` and ``▁word``.

    The vocabulary holds the five special tokens (ids 0-4), the 256 byte-fallback tokens
    ``<0xNN>``, every printable ASCII character, ``▁``, and one token per word, each with and
    without its leading ``▁``. Words are added one merge at a time after all earlier merges
    (as in ``models.tiny_tokenizer``), so earlier words keep their tokenization.
    """
    tokens: list[str] = [*SPECIALS, *(f"<0x{byte:02X}>" for byte in range(256))]
    tokens += [chr(code) for code in range(33, 127)] + [SPACE]
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for form in dict.fromkeys(form for word in words for form in (word, SPACE + word)):
        while len(pieces := _merge_pieces(list(form), ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            if (joined := pieces[0] + pieces[1]) not in known:
                known.add(joined)
                tokens.append(joined)
    return {token: index for index, token in enumerate(tokens)}, list(ranks)  # dicts keep insertion = rank order


def sana_instruction() -> list[str]:
    """The complex human instruction ``SanaPipeline.__call__`` prepends by default (its signature's default)."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def build_gemma_tokenizer():  # -> transformers.GemmaTokenizer
    """A ``GemmaTokenizer`` over :func:`gemma_vocab_and_merges` of the common prompt words and
    the words of Sana's instruction (as written: the pipeline lower-cases prompts, not the
    instruction), adding BOS like Gemma's own tokenizer."""
    from transformers import GemmaTokenizer

    vocab, merges = gemma_vocab_and_merges([*COMMON_WORDS, *" ".join(sana_instruction()).split()])
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)


def build_tiny_sana_pipeline() -> SanaPipeline:
    """Build a tiny Sana pipeline (Gemma 2 text encoder, linear-attention DiT, DC-AE) with seeded weights.

    Returns:
        A ``SanaPipeline``; the DC-AE downsamples once (scale factor 2), so 32x32 images have
        16x16 latents. Width and height must be multiples of 32 (the pipeline's own check).
    """
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = build_gemma_tokenizer()
    text_config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformer = _seeded(
        SanaTransformer2DModel,
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=TEXT_HIDDEN,
        sample_size=16,
        patch_size=1,
    )
    vae = _seeded(
        AutoencoderDC,
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, final_sigmas_type="zero"
    )
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=_seeded(Gemma2Model, config=text_config),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
