"""Built-in tiny models: build, save, reload, cache hits, tokenizer, locking."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

from models.builtin import BUILTIN_MODELS, build_tiny_sd_pipeline, ensure_builtin_model
from models.publish import publish_once
from models.store import resolve_model_path
from models.tiny_tokenizer import COMMON_WORDS, build_clip_tokenizer


def _folder_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names
    )


def test_builtin_builds_saves_and_reloads(tiny_sd_path: str, model_cache_dir: str) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    assert tiny_sd_path == os.path.join(model_cache_dir, "builtin", "tiny-sd")
    assert os.path.isfile(os.path.join(tiny_sd_path, "unet", "diffusion_pytorch_model.safetensors"))
    assert _folder_size(tiny_sd_path) < 20 * 2**20
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_path)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.safety_checker is None


def test_second_resolve_is_a_cache_hit(tiny_sd_path: str, model_cache_dir: str) -> None:
    index = os.path.join(tiny_sd_path, "model_index.json")
    before = os.stat(index).st_mtime_ns
    assert resolve_model_path("builtin:tiny-sd", cache_dir=model_cache_dir) == tiny_sd_path
    assert os.stat(index).st_mtime_ns == before


def test_unknown_builtin_lists_known_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="tiny-sd"):
        ensure_builtin_model("huge-sd", cache_dir=str(tmp_path))
    assert "tiny-sd" in BUILTIN_MODELS


def test_weights_are_deterministic() -> None:
    first, second = build_tiny_sd_pipeline(), build_tiny_sd_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(a[key].equal(b[key]) for key in a), name


def test_tokenizer_keeps_common_words_whole() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_clip_tokenizer(folder)
    assert all(len(tokenizer(word).input_ids) == 3 for word in COMMON_WORDS)  # bos, word, eos
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A photo of a Zebra!").input_ids)
    assert tokens[:4] == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>"]
    assert tokens[-1] == "<|endoftext|>" and "z" in tokens  # unknown words fall back to pieces


def test_publish_once_builds_once_under_concurrency(tmp_path) -> None:
    target, calls = str(tmp_path / "model"), []

    def fill(folder: str) -> None:
        calls.append(folder)
        time.sleep(0.2)  # hold the lock long enough for the others to queue up
        with open(os.path.join(folder, "model_index.json"), "w") as handle:
            handle.write("{}")

    threads = [threading.Thread(target=publish_once, args=(target, fill)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(os.listdir(tmp_path)) == ["model", "model.lock"]  # no temp folder left


def test_publish_once_rejects_incomplete_fill(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="model_index.json"):
        publish_once(str(tmp_path / "model"), lambda folder: None)
    assert not (tmp_path / "model").exists()
