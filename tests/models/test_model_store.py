"""resolve_model_path for local, file:// and remote (memory://) URIs; model_fingerprint."""

from __future__ import annotations

import os
import shutil
import uuid

import fsspec
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


def test_remote_uri_is_copied_once(tiny_sd_path: str, tmp_path) -> None:
    memory = fsspec.filesystem("memory")
    prefix = f"/models-{uuid.uuid4().hex}/tiny-sd"
    memory.put(f"{tiny_sd_path}/", f"{prefix}/", recursive=True)
    uri, cache = f"memory://{prefix}", str(tmp_path / "cache")

    local = resolve_model_path(uri, cache_dir=cache)
    assert os.path.dirname(local) == os.path.join(cache, "remote")
    assert sorted(os.listdir(local)) == sorted(os.listdir(tiny_sd_path))
    assert model_fingerprint(local) == model_fingerprint(tiny_sd_path)

    memory.rm(prefix, recursive=True)  # a second call must not need the remote any more
    assert resolve_model_path(uri, cache_dir=cache) == local
    assert [name for name in os.listdir(os.path.dirname(local)) if ".tmp-" in name] == []


def test_remote_uri_without_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve_model_path(f"memory://nothing-{uuid.uuid4().hex}", cache_dir=str(tmp_path))


def test_fingerprint_is_stable_and_tracks_configs(tiny_sd_path: str, tmp_path) -> None:
    fingerprint = model_fingerprint(tiny_sd_path)
    assert len(fingerprint) == 16 and fingerprint == model_fingerprint(tiny_sd_path)
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_sd_path, copy)
    assert model_fingerprint(copy) == fingerprint  # location does not matter
    with open(os.path.join(copy, "scheduler", "scheduler_config.json"), "a") as handle:
        handle.write(" ")
    assert model_fingerprint(copy) != fingerprint
