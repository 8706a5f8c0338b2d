"""The one-pass student (``builtin:shapes-turbo``, ``models.gan.Generator`` with cross-attention).

It reads its teacher's token states (``prompt_embeds``) through a text tower in ``"sequence"``
mode (``models.texttower``), exactly the bytes ``builtin:shapes-sd`` conditions on, and keeps the
contract of every backend: a row's bytes do not depend on its batch. How well it draws held-out
captions is tested in ``tests/training/test_distil.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.backends import load_backend
from models.diffusion import PromptEncoder
from models.gan import CrossAttention, GANImageGenerator, GeneratorConfig, load_generator
from models.store import resolve_model_path
from models.texttower import EMBED_KEY, SEQUENCE_KEY
from training import world

CAPTIONS = [text for text, _image, _scene in world.held_out(5, 1)]  # held-out: never trained on


@pytest.fixture(scope="module")
def student_path(model_cache_dir: str) -> str:
    return resolve_model_path("builtin:shapes-turbo", cache_dir=model_cache_dir)


@pytest.fixture(scope="module")
def encoder(student_path: str) -> PromptEncoder:
    return PromptEncoder(student_path)


@pytest.fixture(scope="module")
def generator(student_path: str) -> GANImageGenerator:
    return GANImageGenerator(student_path)


@pytest.fixture(scope="module")
def embeds(encoder: PromptEncoder) -> dict[str, np.ndarray]:
    return encoder.encode(CAPTIONS, None, guidance=[1.0] * len(CAPTIONS), micro_batch=4)


def test_folder_reads_the_token_sequence(student_path: str, embeds: dict[str, np.ndarray]) -> None:
    with open(os.path.join(student_path, "model_index.json"), encoding="utf-8") as handle:
        assert json.load(handle)["text_output"] == "sequence"
    assert os.path.exists(os.path.join(student_path, "README.md"))  # the model card
    config = load_generator(student_path).config
    assert config.sequence_dim == 64 and config.attention_at
    assert embeds[SEQUENCE_KEY].shape == (len(CAPTIONS), 77, 64) and embeds[EMBED_KEY].shape == (len(CAPTIONS), 64)


def test_student_sees_exactly_the_teachers_prompt_embeds(
    embeds: dict[str, np.ndarray], model_cache_dir: str
) -> None:
    teacher = PromptEncoder(resolve_model_path("builtin:shapes-sd", cache_dir=model_cache_dir))
    expected = teacher.encode(CAPTIONS, None, guidance=[1.0] * len(CAPTIONS), micro_batch=4)["prompt_embeds"]
    assert np.array_equal(embeds[SEQUENCE_KEY], expected)


def test_a_rows_bytes_do_not_depend_on_its_batch(student_path: str, embeds: dict[str, np.ndarray]) -> None:
    generator = load_backend("gan", student_path)
    seeds = [11, 12, 13, 14, 15]
    together = generator.generate(embeds, seeds=seeds, width=64, height=64, steps=1, guidance=1.0, micro_batch=4)
    assert together.shape == (5, 64, 64, 3) and together.dtype == np.uint8
    for i in (0, 4):
        alone = generator.generate(
            {key: value[i : i + 1] for key, value in embeds.items()}, seeds=[seeds[i]], width=64, height=64,
            steps=1, guidance=1.0, micro_batch=4,
        )
        assert np.array_equal(alone[0], together[i])
    assert np.abs(together[0].astype(int) - together[1]).mean() > 10  # other captions, other images


def test_missing_or_misshapen_token_states_are_refused(student_path: str, embeds: dict[str, np.ndarray]) -> None:
    generator = GANImageGenerator(student_path)
    with pytest.raises(ValueError, match="no 'prompt_embeds'"):
        generator.generate({EMBED_KEY: embeds[EMBED_KEY]}, seeds=list(range(5)), width=64, height=64)
    with pytest.raises(ValueError, match="prompt_embeds has shape"):
        generator.generate(
            {**embeds, SEQUENCE_KEY: embeds[SEQUENCE_KEY][:, :, :32]}, seeds=list(range(5)), width=64, height=64
        )


def test_attention_needs_token_states_at_a_real_side() -> None:
    with pytest.raises(ValueError, match="sequence_dim"):
        GeneratorConfig(attention_at=(8,))
    with pytest.raises(ValueError, match="sides among"):
        GeneratorConfig(sequence_dim=64, attention_at=(6,))


def test_a_new_cross_attention_block_is_the_identity() -> None:
    block = CrossAttention(channels=8, sequence_dim=16, side=4, heads=2)
    x = torch.randn(3, 8, 4, 4)
    assert torch.equal(block(x, torch.randn(3, 5, 16)), x)


@settings(max_examples=25, deadline=None)
@given(prompts=st.lists(st.text(max_size=400), min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_any_text_gives_finite_states_and_images_whatever_the_batch(
    encoder: PromptEncoder, generator: GANImageGenerator, prompts: list[str], seed: int
) -> None:
    """Empty, unicode, control characters, far past the 77-token window: each prompt is its own row."""
    embeds = encoder.encode(prompts, None, guidance=[1.0] * len(prompts), micro_batch=4)
    assert embeds[SEQUENCE_KEY].shape == (len(prompts), 77, 64)
    assert all(np.isfinite(value).all() for value in embeds.values())
    seeds = [seed + i for i in range(len(prompts))]
    images = generator.generate(embeds, seeds=seeds, width=64, height=64, micro_batch=4)
    last = {key: value[-1:] for key, value in encoder.encode(prompts[-1:], None, guidance=[1.0], micro_batch=4).items()}
    assert all(np.array_equal(last[key], embeds[key][-1:]) for key in embeds)  # encoding ignores batch-mates
    alone = generator.generate(last, seeds=seeds[-1:], width=64, height=64, micro_batch=4)
    assert images.dtype == np.uint8 and np.array_equal(alone[0], images[-1])

