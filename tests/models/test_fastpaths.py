"""GPU fast paths (models.fastpaths): spec validation, CPU no-ops, tiny VAE, fp32 retry, GPU bench smoke.

The tiny VAEs are real ``AutoencoderTiny`` models with random weights, saved with
``save_pretrained`` and loaded through the model store, with as many decoder blocks as
the pipeline's VAE (tiny-sd: 2, upsampling x2; the shipped shapes-sd: 3, x4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from models.diffusion import ImageGenerator, PromptEncoder
from models.fastpaths import FastPaths, apply_fast_paths, weights_dtype
from models.store import resolve_model_path
from pipelines.spec import ModelSpec, PerformanceSpec, SpecError, StageSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset"]
SEEDS = [3, 4, 5]
SIZE = {"width": 48, "height": 32, "steps": 1, "guidance": 1.0}
GOOD = {"input": {"uri": "prompts.jsonl"}, "output": {"uri": "out/"}}


def _tiny_vae(folder: Path, *, blocks: int) -> str:
    """Save a random ``AutoencoderTiny`` whose decoder upsamples by ``2 ** (blocks - 1)``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8,) * blocks,
        decoder_block_out_channels=(8,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
        latent_channels=4,
    )
    vae.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_vae_x2(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _tiny_vae(tmp_path_factory.mktemp("taesd-x2"), blocks=2)


@pytest.fixture(scope="module")
def embeds(tiny_sd_path: str) -> dict[str, np.ndarray]:
    return PromptEncoder(tiny_sd_path).encode(PROMPTS, None, guidance=[1.0] * len(PROMPTS))


# --- the spec ---------------------------------------------------------------------------


def test_spec_defaults_and_accepted_settings() -> None:
    spec = load_spec(raw=dict(GOOD))
    assert spec.model.performance == PerformanceSpec()
    assert (spec.model.performance.dtype, spec.model.performance.compile, spec.model.performance.tiny_vae) == (
        "auto",
        False,
        None,
    )
    performance = {"dtype": "float16", "compile": True, "compile_mode": "reduce-overhead", "tiny_vae": "s3://b/taesd"}
    spec = load_spec(raw={**GOOD, "model": {"performance": performance}}, sets=["model.performance.sdpa=false"])
    assert spec.model.performance.model_dump() == {
        **performance,
        "sdpa": False,
        "channels_last": True,
        "pinned_transfer": True,
    }
    # field names match FastPaths', so the actors hand the settings over as they are
    assert FastPaths(**spec.model.performance.model_dump()).compile_mode == "reduce-overhead"


@pytest.mark.parametrize(
    ("performance", "key", "reason"),
    [
        ({"dtype": "fp8"}, "dtype", "'auto', 'float32', 'float16' or 'bfloat16'"),
        ({"compile_mode": "fastest"}, "compile_mode", "'max-autotune-no-cudagraphs'"),
        ({"compile": "sometimes"}, "compile", "valid boolean"),
        ({"tiny_vae": ""}, "tiny_vae", "at least 1 character"),
        ({"channels_first": True}, "channels_first", "unknown key"),
    ],
)
def test_spec_rejects_bad_settings_naming_the_key(performance: dict, key: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(raw={**GOOD, "model": {"performance": performance}})
    assert f"model.performance.{key}:" in str(caught.value)
    assert reason in str(caught.value)


def test_an_explicit_stage_dtype_wins_over_the_performance_dtype() -> None:
    spec = load_spec(raw={**GOOD, "stages": {"encode": {"dtype": "float16"}}})
    assert spec.model.performance.explicit_dtype(spec.stages.encode) == "float16"
    assert spec.model.performance.explicit_dtype(spec.stages.generate) is None  # default float32, not asked for
    assert weights_dtype(FastPaths(), "cpu") == "float32"
    assert weights_dtype(FastPaths(dtype="bfloat16"), "cpu") == "float32"  # CUDA only
    assert weights_dtype(FastPaths(), "cpu", explicit="bfloat16") == "bfloat16"


# --- CPU: the fast paths are no-ops ------------------------------------------------------


def test_on_cpu_the_defaults_change_no_byte(tiny_sd_path: str, embeds: dict[str, np.ndarray]) -> None:
    default, off = ImageGenerator(tiny_sd_path), ImageGenerator(tiny_sd_path, fast_paths=FastPaths.off())
    applied = default.fast_paths_applied
    assert (applied["dtype"], applied["sdpa"], applied["channels_last"], applied["compile"]) == ("float32", [], [], [])
    assert set(applied["skipped"]) == {"sdpa", "channels_last", "pinned_transfer"}
    for micro_batch in (1, 2):
        expected = off.generate(embeds, seeds=SEEDS, micro_batch=micro_batch, **SIZE)
        assert default.generate(embeds, seeds=SEEDS, micro_batch=micro_batch, **SIZE).tobytes() == expected.tobytes()
        images, problems = default.generate_checked(embeds, seeds=SEEDS, micro_batch=micro_batch, **SIZE)
        assert problems == {} and images.tobytes() == expected.tobytes()
    assert default.info == off.info


def test_uint8_made_on_the_device_matches_the_host_conversion(tiny_sd_path: str, embeds: dict[str, np.ndarray]) -> None:
    """The bytes of diffusers' own float output, converted with numpy as before the fast paths."""
    generator = ImageGenerator(tiny_sd_path)
    floats = generator.pipe(
        prompt_embeds=torch.from_numpy(embeds["prompt_embeds"][:1]),
        negative_prompt_embeds=torch.from_numpy(embeds["negative_prompt_embeds"][:1]),
        generator=[torch.Generator().manual_seed(SEEDS[0])],
        num_inference_steps=SIZE["steps"],
        guidance_scale=SIZE["guidance"],
        width=SIZE["width"],
        height=SIZE["height"],
        output_type="np",
    ).images
    on_host = (np.clip(floats, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    images = generator.generate({key: value[:1] for key, value in embeds.items()}, seeds=SEEDS[:1], **SIZE)
    assert images.tobytes() == on_host.tobytes()


def test_cuda_paths_forced_on_cpu_run(tiny_sd_path: str, embeds: dict[str, np.ndarray]) -> None:
    """The mechanics of SDPA and channels_last (CUDA-only in production) on the CPU pipeline."""
    generator = ImageGenerator(tiny_sd_path)
    applied = apply_fast_paths(generator.pipe, FastPaths(), "cpu", cuda_paths_on_cpu=True)
    assert sorted(applied["sdpa"]) == ["unet", "vae"] and applied["channels_last"] == ["unet", "vae"]
    assert generator.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = generator.generate(embeds, seeds=SEEDS, **SIZE)
    assert images.shape == (3, 32, 48, 3) and images.dtype == np.uint8 and images.std() > 1


# --- the tiny VAE ------------------------------------------------------------------------


def test_tiny_vae_from_the_model_store_decodes_uint8_images(
    tiny_sd_path: str, tiny_vae_x2: str, embeds: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from diffusers import AutoencoderTiny

    folder = resolve_model_path(tiny_vae_x2, cache_dir=str(tmp_path))
    generator = ImageGenerator(tiny_sd_path, fast_paths=FastPaths(tiny_vae=folder))
    assert isinstance(generator.pipe.vae, AutoencoderTiny) and generator.fast_paths_applied["tiny_vae"] == folder
    images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=2, **SIZE)
    assert problems == {}
    assert images.shape == (3, 32, 48, 3) and images.dtype == np.uint8 and images.std() > 1
    plain = ImageGenerator(tiny_sd_path)
    assert generator.info["model_hash"] != plain.info["model_hash"] and len(generator.info["model_hash"]) == 16
    assert images.tobytes() != plain.generate(embeds, seeds=SEEDS, micro_batch=2, **SIZE).tobytes()


def test_tiny_vae_of_another_scale_is_a_clear_error(tiny_sd_path: str, tmp_path: Path) -> None:
    folder = _tiny_vae(tmp_path / "taesd-x4", blocks=3)
    with pytest.raises(ValueError, match="upsamples latents x4 but the pipeline's VAE x2"):
        ImageGenerator(tiny_sd_path, fast_paths=FastPaths(tiny_vae=folder))


def test_nan_from_a_reduced_precision_tiny_vae_is_retried_in_float32(
    tiny_sd_path: str, tiny_vae_x2: str, embeds: dict[str, np.ndarray]
) -> None:
    generator = ImageGenerator(tiny_sd_path, dtype="bfloat16", fast_paths=FastPaths(tiny_vae=tiny_vae_x2))
    healthy = generator.generate(embeds, seeds=SEEDS, **SIZE)

    def nan_unless_float32(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if output.dtype == torch.float32 else torch.full_like(output, float("nan"))

    handle = generator.pipe.vae.decoder.register_forward_hook(nan_unless_float32)
    try:
        images, problems = generator.generate_checked(embeds, seeds=SEEDS, **SIZE)
    finally:
        handle.remove()
    assert problems == {}
    assert generator.fp32_decode_retries == len(PROMPTS)  # micro_batch 1: one retry per row
    assert generator.pipe.vae.dtype == torch.bfloat16  # the tiny VAE is back in its dtype
    assert np.abs(images.astype(int) - healthy).mean() < 4


def test_generate_stage_with_a_tiny_vae_in_object_storage(tmp_path: Path) -> None:
    """The default model (shapes-sd, VAE x4) with a tiny VAE at a ``memory://`` URI, stages called as Ray calls them."""
    import fsspec

    from actors.encode import EncodeStage
    from actors.generate import IMAGE_COLUMN, GenerateStage

    uri = f"memory://pixelmill-test-{uuid.uuid4().hex}/taesd"
    fsspec.filesystem("memory").put(_tiny_vae(tmp_path / "taesd-x4", blocks=3) + "/", uri + "/", recursive=True)
    model = ModelSpec(cache_dir=str(tmp_path / "cache"), performance=PerformanceSpec(tiny_vae=uri))
    stage = StageSpec(micro_batch_size=2)
    statuses = ["ok", "error", "ok"]
    batch = {
        "prompt": np.array(["a red circle", "", "a blue square"], dtype=object),
        "negative_prompt": np.array([""] * 3, dtype=object),
        "status": np.array(statuses, dtype=object),
        "stage": np.array(["", "input", ""], dtype=object),
        "error": np.array(["", "prompt is empty", ""], dtype=object),
        "seed": np.array([1, 2, 3]),
        "width": np.array([64, 64, 48]),
        "height": np.array([64, 64, 32]),
        "steps": np.array([1, 1, 1]),
        "guidance": np.array([1.0, 1.0, 1.0]),
    }
    out = GenerateStage(model=model, stage=stage)(EncodeStage(model=model, stage=stage)(batch))
    assert list(out["status"]) == statuses
    shapes = [image.shape for image in out[IMAGE_COLUMN]]
    assert shapes == [(64, 64, 3), (0, 0, 3), (32, 48, 3)]
    assert all(image.dtype == np.uint8 for image in out[IMAGE_COLUMN])
    assert out[IMAGE_COLUMN][0].std() > 1
    assert len(out["model_hash"][0]) == 16


# --- the GPU benchmark's CPU smoke run ----------------------------------------------------


@pytest.mark.slow
def test_gpu_bench_smoke_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "bench/gpu_sd_turbo.py", "--smoke", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["finished"] and report["smoke"] and report["size"] == 64
    assert {"text_encoder", "unet_step", "vae_decode", "tiny_vae_decode", "per_image_vae"} <= set(report["flops"])
    assert set(report["variants"]) == {"a", "b", "c"} and "d" in report["skipped"]
    for variant in report["variants"].values():
        assert variant["images_per_s"] > 0 and variant["mfu"] >= 0
    assert report["variants"]["c"]["applied"]["tiny_vae"]
    assert report["variants"]["b"]["applied"]["channels_last"] == ["unet", "vae"]
    assert set(report["sweeps"]["b"]) == {"1", "2"}


# --- on a GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_fast_paths_apply_and_give_uint8_images(tiny_sd_path: str, tiny_vae_x2: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    embeds = PromptEncoder(tiny_sd_path, device="cuda").encode(PROMPTS, None, guidance=[1.0] * len(PROMPTS))
    generator = ImageGenerator(tiny_sd_path, device="cuda", fast_paths=FastPaths(tiny_vae=tiny_vae_x2))
    applied = generator.fast_paths_applied
    assert applied["channels_last"] == ["unet", "vae"] and applied["sdpa"] == ["unet"] and applied["pinned_transfer"]
    assert applied["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    images, problems = generator.generate_checked(embeds, seeds=SEEDS, micro_batch=2, **SIZE)
    assert problems == {} and images.shape == (3, 32, 48, 3) and images.dtype == np.uint8
