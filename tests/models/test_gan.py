"""The text-conditional GAN (``models.gan``) and its shipped weights (``builtin:shapes-gan``).

It loads through the model store like any model, its text half runs through
``PromptEncoder`` (the encode stage's class), it draws images of the requested size, the
same bytes for the same row whatever the batch.  How well it draws held-out captions
(``training.adherence``) is tested in ``tests/training/test_gan_training.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from models.diffusion import BLANK, NON_FINITE, ImageGenerator, PromptEncoder
from models.gan import GAN_CLASS_NAME, GANImageGenerator, load_generator
from models.store import resolve_model_path

# The first held-out captions of the procedural world (``training.world.held_out(6, 1)``).
CAPTIONS = [
    "a small cyan triangle in the center, orange background",
    "a small red cross at the top and a small pink square at the bottom, purple background",
    "a small green square on the right and a large pink square on the left, white background",
    "a large black cross at the top and a large pink diamond at the bottom, orange background",
    "a small white cross at the bottom, pink background",
    "a large pink diamond at the bottom and a small cyan square at the top, red background",
]


@pytest.fixture(scope="module")
def gan_path(model_cache_dir: str) -> str:
    return resolve_model_path("builtin:shapes-gan", cache_dir=model_cache_dir)


@pytest.fixture(scope="module")
def encoder(gan_path: str) -> PromptEncoder:
    return PromptEncoder(gan_path)


@pytest.fixture(scope="module")
def generator(gan_path: str) -> GANImageGenerator:
    return GANImageGenerator(gan_path)


def _embeds(encoder: PromptEncoder, prompts: list[str]) -> dict[str, np.ndarray]:
    return encoder.encode(prompts, None, guidance=[1.0] * len(prompts), micro_batch=4)


def test_builtin_resolves_in_place_to_a_self_contained_folder(gan_path: str) -> None:
    assert os.path.samefile(gan_path, os.path.join(os.path.dirname(__file__), "../../models/zoo/shapes-gan"))
    for part in ("model_index.json", "README.md", "tokenizer", "text_encoder/model.safetensors",
                 "generator/config.json", "generator/model.safetensors"):
        assert os.path.exists(os.path.join(gan_path, part)), part
    parameters = sum(p.numel() for p in load_generator(gan_path).parameters())
    assert 0.5e6 <= parameters <= 2e6


def test_encode_gives_clip_text_embeddings(encoder: PromptEncoder) -> None:
    """The copied text tower gives shapes-clip's own (projected) text embeddings."""
    from models.clip_score import ClipScorer

    prompts = CAPTIONS[:3]
    embeds = _embeds(encoder, prompts)
    assert list(embeds) == ["text_embeds"] and embeds["text_embeds"].shape == (3, 64)
    clip = ClipScorer(os.path.join(os.path.dirname(__file__), "../../models/zoo/shapes-clip"))
    ours = torch.nn.functional.normalize(torch.from_numpy(embeds["text_embeds"]), dim=-1)
    assert torch.allclose(ours, clip.embed_texts(prompts), atol=1e-5)
    assert encoder.max_tokens == 77 and encoder.token_counts(["a red circle"])[0] > 2


def test_sizes_and_determinism_per_seed(encoder: PromptEncoder, generator: GANImageGenerator) -> None:
    embeds = _embeds(encoder, CAPTIONS[:2])
    first = generator.generate(embeds, seeds=[3, 4], width=64, height=64, micro_batch=2)
    again = generator.generate(embeds, seeds=[3, 4], width=64, height=64, micro_batch=2)
    assert first.shape == (2, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    # Other sizes are the native 64x64 drawing, resampled (the scene is laid out in canvas fractions)
    wide = generator.generate(embeds, seeds=[3, 4], width=96, height=48, micro_batch=2)
    assert wide.shape == (2, 48, 96, 3)
    with pytest.raises(ValueError, match="multiples of 8"):
        generator.generate(embeds, seeds=[3, 4], width=60, height=64)


def test_a_rows_bytes_do_not_depend_on_its_batch(encoder: PromptEncoder, generator: GANImageGenerator) -> None:
    prompts = CAPTIONS[:6]
    seeds = [11, 12, 13, 14, 15, 16]
    embeds = _embeds(encoder, prompts)
    together = generator.generate(embeds, seeds=seeds, width=64, height=64, micro_batch=4)
    for row in (0, 3, 5):
        one = {"text_embeds": embeds["text_embeds"][row : row + 1]}
        alone = generator.generate(one, seeds=[seeds[row]], width=64, height=64, micro_batch=4)
        assert np.array_equal(alone[0], together[row]), row
    order = [5, 2, 0, 4, 1, 3]
    reordered = {"text_embeds": embeds["text_embeds"][order]}
    shuffled = generator.generate(reordered, seeds=[seeds[i] for i in order], width=64, height=64, micro_batch=4)
    assert np.array_equal(shuffled, together[order])


def test_different_prompts_give_different_images(encoder: PromptEncoder, generator: GANImageGenerator) -> None:
    prompts = [
        "a large red circle on the left, blue background",
        "a large yellow square on the right, green background",
    ]
    images = generator.generate(_embeds(encoder, prompts), seeds=[0, 0], width=64, height=64).astype(int)
    assert np.abs(images[0] - images[1]).mean() > 20


def test_checks_catch_non_finite_and_blank_images(gan_path: str, encoder: PromptEncoder) -> None:
    embeds = _embeds(encoder, CAPTIONS[:2])
    broken = GANImageGenerator(gan_path)
    with torch.no_grad():
        broken.generator.to_rgb.weight.zero_()
        broken.generator.to_rgb.bias.fill_(-100.0)  # tanh -> -1 everywhere: an all-black image
    images, problems = broken.generate_checked(embeds, seeds=[0, 1], width=64, height=64)
    assert problems == {0: BLANK, 1: BLANK} and not images.any()
    with torch.no_grad():
        broken.generator.to_rgb.bias.fill_(float("nan"))
    images, problems = broken.generate_checked(embeds, seeds=[0, 1], width=64, height=64)
    assert problems == {0: NON_FINITE, 1: NON_FINITE}


def test_backends_refuse_each_others_folders(gan_path: str, tiny_sd_path: str) -> None:
    from models.backends import load_backend

    with pytest.raises(ValueError, match="generate.backend: gan"):
        load_backend("diffusers", gan_path)
    with pytest.raises(ValueError, match="generate.backend: diffusers"):
        load_backend("gan", tiny_sd_path)
    with pytest.raises(ValueError, match=GAN_CLASS_NAME):
        ImageGenerator(gan_path)
