"""PromptEncoder + ImageGenerator on the tiny SD and SDXL pipelines (real models, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.diffusion import ImageGenerator, PromptEncoder

PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset", "zebra!"]
NEGATIVES = ["", "blurry", None, "ugly"]


def _rows(embeds: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in embeds.items()}


@pytest.fixture(scope="module", params=["tiny_sd_path", "tiny_sdxl_path"])
def halves(request: pytest.FixtureRequest) -> tuple[PromptEncoder, ImageGenerator]:
    """Encoder and generator of each tiny pipeline family."""
    path = request.getfixturevalue(request.param)
    return PromptEncoder(path), ImageGenerator(path)


@pytest.fixture(scope="module")
def embeds(halves: tuple[PromptEncoder, ImageGenerator]) -> dict[str, np.ndarray]:
    encoder, _ = halves
    return encoder.encode(PROMPTS, NEGATIVES, guidance=[1.0] * len(PROMPTS))


def test_each_half_loads_only_its_components(halves) -> None:
    encoder, generator = halves
    assert encoder.pipe.unet is None and encoder.pipe.vae is None
    assert encoder.pipe.text_encoder is not None
    assert generator.pipe.text_encoder is None and generator.pipe.tokenizer is None
    assert getattr(generator.pipe, "text_encoder_2", None) is None
    assert generator.info["pipeline"] == encoder.pipeline_class
    assert generator.info["scheduler"] == "EulerDiscreteScheduler"
    assert len(generator.info["model_hash"]) == 16


def test_embeddings_are_float32_batch_first(halves, embeds) -> None:
    encoder, _ = halves
    expected = {"prompt_embeds", "negative_prompt_embeds"}
    if encoder.pipeline_class == "StableDiffusionXLPipeline":
        expected |= {"pooled_prompt_embeds", "negative_pooled_prompt_embeds"}
        # force_zeros_for_empty_prompt: rows without a negative prompt get zero negatives
        assert not embeds["negative_pooled_prompt_embeds"][[0, 2]].any()
        assert embeds["negative_pooled_prompt_embeds"][[1, 3]].any()
    assert set(embeds) == expected
    assert all(value.dtype == np.float32 and len(value) == len(PROMPTS) for value in embeds.values())


def test_encoding_is_batch_invariant(halves, embeds) -> None:
    encoder, _ = halves
    for row in (2, 0):
        alone = encoder.encode([PROMPTS[row]], [NEGATIVES[row]], guidance=[1.0])
        assert all(np.array_equal(alone[key][0], embeds[key][row]) for key in embeds)


def test_images_are_uint8_of_the_requested_size(halves, embeds) -> None:
    _, generator = halves
    images = generator.generate(embeds, seeds=[0, 1, 2, 3], width=64, height=64, steps=2, guidance=1.0)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 1  # not a flat image
    small = generator.generate(_rows(embeds, [0]), seeds=[0], width=48, height=32, steps=1, guidance=1.0)
    assert small.shape == (1, 32, 48, 3)


@pytest.mark.parametrize("width, height", [(50, 64), (64, 0)])
def test_bad_size_is_a_clear_error(halves, embeds, width: int, height: int) -> None:
    _, generator = halves
    with pytest.raises(ValueError, match="multiples of 8"):
        generator.generate(_rows(embeds, [0]), seeds=[0], width=width, height=height, steps=1, guidance=1.0)


def test_seed_and_prompt_decide_the_image(halves, embeds) -> None:
    _, generator = halves
    kwargs = {"width": 32, "height": 32, "steps": 2, "guidance": 1.0}
    base = generator.generate(_rows(embeds, [0, 0, 0, 1]), seeds=[7, 7, 8, 7], **kwargs)
    assert base[0].tobytes() == base[1].tobytes()  # same row, same seed
    assert base[0].tobytes() != base[2].tobytes()  # other seed
    assert base[0].tobytes() != base[3].tobytes()  # other prompt


# guidance 3.0: classic CFG doubles the UNet batch; micro_batch 3: a padded last chunk
@pytest.mark.parametrize("guidance, micro_batch", [(1.0, 1), (3.0, 1), (1.0, 3), (3.0, 3)])
def test_rows_are_bit_identical_in_any_batch(halves, embeds, guidance: float, micro_batch: int) -> None:
    _, generator = halves
    kwargs = {"width": 64, "height": 64, "steps": 2, "guidance": guidance, "micro_batch": micro_batch}
    full = generator.generate(embeds, seeds=[10, 11, 12, 13], **kwargs)
    order = [2, 0, 3, 1]
    shuffled = generator.generate(_rows(embeds, order), seeds=[10 + row for row in order], **kwargs)
    for position, row in enumerate(order):
        assert shuffled[position].tobytes() == full[row].tobytes()
    for row in (0, 3):
        alone = generator.generate(_rows(embeds, [row]), seeds=[10 + row], **kwargs)
        assert alone[0].tobytes() == full[row].tobytes()


def test_encoding_in_micro_batches_is_batch_invariant(halves, embeds) -> None:
    encoder, _ = halves
    order = [3, 1, 2]
    chunked = encoder.encode(
        [PROMPTS[i] for i in order], [NEGATIVES[i] for i in order], guidance=[1.0] * 3, micro_batch=2
    )
    reference = encoder.encode(PROMPTS, NEGATIVES, guidance=[1.0] * 4, micro_batch=2)
    assert all(np.array_equal(chunked[key], reference[key][order]) for key in reference)


def test_empty_batches(halves, embeds) -> None:
    encoder, generator = halves
    empty = _rows(embeds, [])
    images = generator.generate(empty, seeds=[], width=32, height=48, steps=1, guidance=1.0)
    assert images.shape == (0, 48, 32, 3)
    with pytest.raises(ValueError, match="at least one prompt"):
        encoder.encode([], None, guidance=[])


def test_negative_prompt_matters_only_with_cfg(halves) -> None:
    encoder, generator = halves
    prompts, negatives = ["a red cat"] * 2, ["", "blurry"]
    embeds = encoder.encode(prompts, negatives, guidance=[3.0, 3.0])
    kwargs = {"seeds": [5, 5], "width": 32, "height": 32, "steps": 2}
    with_cfg = generator.generate(embeds, guidance=3.0, **kwargs)
    without = generator.generate(embeds, guidance=1.0, **kwargs)
    assert with_cfg[0].tobytes() != with_cfg[1].tobytes()
    assert without[0].tobytes() == without[1].tobytes()


def test_mismatched_inputs_are_rejected(halves, embeds) -> None:
    encoder, generator = halves
    with pytest.raises(ValueError, match="one entry per row"):
        encoder.encode(["a", "b"], None, guidance=[1.0])
    with pytest.raises(ValueError, match="one entry per row"):
        generator.generate(embeds, seeds=[0], width=64, height=64, steps=1, guidance=1.0)


def test_unsupported_pipeline_class_is_a_clear_error(tiny_sd_path: str, tmp_path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_sd_path, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="unsupported pipeline 'KandinskyPipeline'"):
        ImageGenerator(str(copy))

