"""ImageGenerator.generate_checked and PromptEncoder's token metadata, on real tiny models.

Failures that real checkpoints produce (fp16 VAE overflow, black images) are provoked
with forward hooks on the real VAE decoder; the safety checker is a real, tiny
``StableDiffusionSafetyChecker`` saved into a copy of the tiny SD folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from models.diffusion import BLANK, NON_FINITE, SAFETY_FLAGGED, ImageGenerator, PromptEncoder

PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset"]
SIZE = {"width": 32, "height": 32, "steps": 1, "guidance": 1.0}
SEEDS = [3, 4, 5]


def _embeds(model_path: str) -> dict[str, np.ndarray]:
    """Embeddings of ``PROMPTS`` for the model."""
    return PromptEncoder(model_path).encode(PROMPTS, None, guidance=[1.0] * len(PROMPTS))


@contextmanager
def _decoder_output(
    generator: ImageGenerator, change: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Inside the block, the VAE decoder's output goes through ``change``."""
    handle = generator.pipe.vae.decoder.register_forward_hook(lambda _module, _args, output: change(output))
    try:
        yield
    finally:
        handle.remove()


def _nan_in_reduced_precision(output: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 overflow: every decoded pixel NaN unless the decoder runs in float32."""
    return output if output.dtype == torch.float32 else torch.full_like(output, float("nan"))


@pytest.mark.parametrize("model", ["tiny_sd_path", "tiny_sdxl_path"])
def test_healthy_rows_have_no_problems_and_the_bytes_of_generate(request, model: str) -> None:
    path = request.getfixturevalue(model)
    generator, embeds = ImageGenerator(path), _embeds(path)
    for micro_batch in (1, 2):  # 2: the last chunk is padded
        expected = generator.generate(embeds, seeds=SEEDS, micro_batch=micro_batch, **SIZE)
        images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=micro_batch, **SIZE)
        assert problems == {}
        assert images.dtype == np.uint8 and images.tobytes() == expected.tobytes()
    assert generator.fp32_decode_retries == 0
    assert generator.safety_checker is None  # the tiny folders have none


# SDXL's pipeline upcasts an fp16 VAE by itself (force_upcast); bf16 it decodes as is
@pytest.mark.parametrize(
    "model, dtype",
    [("tiny_sd_path", "float16"), ("tiny_sdxl_path", "bfloat16"), ("tiny_flux_builtin_path", "bfloat16")],
)
def test_nan_in_reduced_precision_is_fixed_by_a_float32_decode(request, model: str, dtype: str) -> None:
    path = request.getfixturevalue(model)
    generator, embeds = ImageGenerator(path, dtype=dtype), _embeds(path)
    healthy = generator.generate(embeds, seeds=SEEDS, **SIZE)
    with _decoder_output(generator, _nan_in_reduced_precision):
        images, problems = generator.generate_checked(embeds, seeds=SEEDS, **SIZE)
    assert problems == {}
    assert generator.fp32_decode_retries == len(PROMPTS)  # micro_batch 1: one retry per row
    assert generator.pipe.vae.dtype == generator.dtype  # the VAE is back in its dtype
    # the same latents, decoded in float32 instead of reduced precision
    assert np.abs(images.astype(int) - healthy).mean() < 2


def test_nan_that_persists_in_float32_is_an_error_row(tiny_sd_path: str) -> None:
    generator, embeds = ImageGenerator(tiny_sd_path, dtype="float16"), _embeds(tiny_sd_path)
    healthy = generator.generate(embeds, seeds=SEEDS, micro_batch=2, **SIZE)

    def nan_in_second_position(output: torch.Tensor) -> torch.Tensor:
        output[1] = float("nan")
        return output

    # micro_batch 2: chunks [0, 1] and [2, 2 (padding)]; position 1 is row 1, then padding
    with _decoder_output(generator, nan_in_second_position):
        images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=2, **SIZE)
    assert problems == {1: NON_FINITE}
    assert generator.fp32_decode_retries == 1  # the padding's NaN does not trigger a retry
    assert not images[1].any()  # NaN became 0, not garbage
    assert images[[0, 2]].tobytes() == healthy[[0, 2]].tobytes()


def test_all_black_image_is_an_error_row(tiny_sd_path: str) -> None:
    generator, embeds = ImageGenerator(tiny_sd_path), _embeds(tiny_sd_path)

    def black_first_row(output: torch.Tensor) -> torch.Tensor:
        output[0] = -1.0  # the decoder's -1 is pixel value 0
        return output

    # one chunk of 3: position 0 is row 0
    with _decoder_output(generator, black_first_row):
        images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=3, **SIZE)
    assert problems == {0: BLANK}
    assert not images[0].any() and all(image.any() for image in images[1:])


def _with_safety_checker(model_path: str, folder: Path, *, threshold: float) -> str:
    """Copy the tiny SD folder and add a tiny real safety checker + feature extractor.

    Every concept threshold is ``threshold``: the checker flags an image when a cosine
    similarity (in [-1, 1]) exceeds it, so -2 flags everything and 2 nothing.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    shutil.copytree(model_path, folder)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    checker.concept_embeds_weights.data.fill_(threshold)
    checker.special_care_embeds_weights.data.fill_(threshold)
    checker.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor"
    )
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index))
    return str(folder)


def test_safety_checker_flags_are_filtered_rows(tiny_sd_path: str, tmp_path: Path) -> None:
    path = _with_safety_checker(tiny_sd_path, tmp_path / "flags-all", threshold=-2.0)
    generator, embeds = ImageGenerator(path), _embeds(tiny_sd_path)
    assert generator.safety_checker is not None and generator.pipe.safety_checker is None
    images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=2, **SIZE)
    assert problems == {row: SAFETY_FLAGGED for row in range(len(PROMPTS))}
    assert not images.any()  # blacked out by the checker, yet "filtered", not "blank"
    # generate itself never runs the checker: the same bytes as without one
    plain = ImageGenerator(tiny_sd_path).generate(embeds, seeds=SEEDS, **SIZE)
    assert generator.generate(embeds, seeds=SEEDS, **SIZE).tobytes() == plain.tobytes()


def test_safety_checker_that_flags_nothing_changes_nothing(tiny_sd_path: str, tmp_path: Path) -> None:
    path = _with_safety_checker(tiny_sd_path, tmp_path / "flags-none", threshold=2.0)
    generator, embeds = ImageGenerator(path), _embeds(tiny_sd_path)
    images, problems = generator.generate_checked(embeds, seeds=SEEDS, **SIZE)
    assert problems == {}
    assert images.tobytes() == ImageGenerator(tiny_sd_path).generate(embeds, seeds=SEEDS, **SIZE).tobytes()


def test_token_counts_include_special_tokens_and_are_not_truncated(tiny_sd_path: str) -> None:
    encoder = PromptEncoder(tiny_sd_path)
    assert encoder.max_tokens == 77
    long_prompt = "a red cat " * 40  # 120 words, one token each
    short, long = encoder.token_counts(["a red cat", long_prompt])
    assert short == 5  # <|startoftext|> a red cat <|endoftext|>
    assert long == 122 > encoder.max_tokens
    assert encoder.token_counts([]) == []
