"""resolve_model_path for built-in, local and file:// URIs (remote ones are the storage layer's); model_fingerprint.

Copies of remote model folders are tested with the store: tests/pipelines/test_storage.py.
"""

from __future__ import annotations

import os
import shutil

import pytest

from models.store import model_fingerprint, resolve_model_path


def test_local_folder_and_file_uri(tiny_sd_path: str, tmp_path) -> None:
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_sd_path, copy)
    assert resolve_model_path(copy, cache_dir=str(tmp_path / "cache")) == copy
    assert resolve_model_path(f"file://{copy}", cache_dir=str(tmp_path / "cache")) == copy
    assert not (tmp_path / "cache").exists()  # local models are used in place


def test_folder_without_model_index_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve_model_path(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve_model_path(f"file://{tmp_path}/missing", cache_dir=str(tmp_path / "cache"))


def test_builtin_model_resolves_to_its_cached_folder(tiny_sd_path: str, model_cache_dir: str) -> None:
    assert resolve_model_path("builtin:tiny-sd", cache_dir=model_cache_dir) == tiny_sd_path


@pytest.mark.parametrize("uri", ["s3://bucket/models/tiny-sd", "memory://models/tiny-sd", "simplecache::s3://b/m"])
def test_remote_uri_is_left_to_the_storage_layer(uri: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="pipelines.storage.sync_folder"):
        resolve_model_path(uri, cache_dir=str(tmp_path))
    assert not (tmp_path / "remote").exists()


def test_fingerprint_is_stable_and_tracks_configs(tiny_sd_path: str, tmp_path) -> None:
    fingerprint = model_fingerprint(tiny_sd_path)
    assert len(fingerprint) == 16 and fingerprint == model_fingerprint(tiny_sd_path)
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_sd_path, copy)
    assert model_fingerprint(copy) == fingerprint  # location does not matter
    with open(os.path.join(copy, "scheduler", "scheduler_config.json"), "a") as handle:
        handle.write(" ")
    assert model_fingerprint(copy) != fingerprint
