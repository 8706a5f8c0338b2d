"""The driver's checks before any work (``pipelines.preflight``, ``pipelines.hub``), in process: no Ray."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pipelines.hub import HubModel, HubUnavailable, hub_commit, hub_folder, hub_model
from pipelines.preflight import (
    ModelUnavailable,
    StorageUnreachable,
    check_models,
    check_output_reachable,
    check_reachable,
)
from pipelines.spec import load_spec
from tests.pipelines.hubcache import COMMIT, fill_hub_cache


def _spec(tmp_path: Path, **sets: object):
    raw = {"input": {"uri": str(tmp_path / "in.jsonl")}, "output": {"uri": str(tmp_path / "out")},
           "model": {"cache_dir": str(tmp_path / "cache")}, "score": None}
    return load_spec(raw=raw, sets=[f"{key}={value}" for key, value in sets.items()])


def test_hub_ids_are_parsed_and_local_paths_stay_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_model("stabilityai/sd-turbo") == HubModel("stabilityai/sd-turbo")
    flux = "black-forest-labs/FLUX.1-schnell"
    assert hub_model(f"hf://{flux}@main") == HubModel(flux, "main")
    for not_hub in ("builtin:shapes-sd", "s3://bucket/models/sd", "/models/sd-turbo", "./a/b", "a/b/c", "~/m"):
        assert hub_model(not_hub) is None, not_hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sd-turbo").mkdir(parents=True)
    assert hub_model("models/sd-turbo") is None  # an existing local path wins over a Hub id
    assert hub_model("hf://models/sd-turbo") == HubModel("models/sd-turbo")


def test_missing_and_incomplete_model_folders_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"^model.uri: /nowhere/sd-turbo does not exist"):
        check_models(_spec(tmp_path, **{"model.uri": "/nowhere/sd-turbo"}))
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelUnavailable, match=r"model.uri: .*half is not a model folder: no model_index.json or "):
        check_models(_spec(tmp_path, **{"model.uri": str(tmp_path / "half")}))
    with pytest.raises(ModelUnavailable, match=r"^model.performance.tiny_vae: .*does not exist"):
        check_models(_spec(tmp_path, **{"model.performance.tiny_vae": str(tmp_path / "taesd")}))
    with pytest.raises(ModelUnavailable, match=r"^model.uri: unknown built-in model 'nope'; known: "):
        check_models(_spec(tmp_path, **{"model.uri": "builtin:nope"}))
    check_models(_spec(tmp_path))  # the default built-in model passes


def test_model_folders_and_weights_in_object_storage_are_checked(tmp_path: Path, s3) -> None:
    s3.pipe("pixelmill/models/sd/model_index.json", b"{}")
    s3.pipe("pixelmill/models/broken/unet/config.json", b"{}")
    check_models(_spec(tmp_path, **{"model.uri": "s3://pixelmill/models/sd"}))
    with pytest.raises(ModelUnavailable, match=r"^model.uri: s3://pixelmill/models/broken is not a model folder"):
        check_models(_spec(tmp_path, **{"model.uri": "s3://pixelmill/models/broken"}))
    s3.pipe("pixelmill/adain/vgg.pth", b"x")
    adain = {"style.backend": "adain", "style.adain.vgg": "s3://pixelmill/adain/vgg.pth",
             "style.adain.decoder": "s3://pixelmill/adain/decoder.pth"}
    with pytest.raises(ModelUnavailable, match=r"^style.adain.decoder: s3://pixelmill/adain/decoder.pth: no file"):
        check_models(_spec(tmp_path, **adain))


def test_a_hub_model_in_the_model_cache_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    cache = tmp_path / "cache"
    snapshot = fill_hub_cache(cache / "hub", "pixelmill-test/tiny")
    model = HubModel("pixelmill-test/tiny")
    assert hub_commit(model, "pixelmill-test/tiny", cache_dir=str(cache)) == COMMIT
    assert hub_folder(model, "pixelmill-test/tiny", cache_dir=str(cache)) == str(snapshot)
    check_models(_spec(tmp_path, **{"model.uri": "pixelmill-test/tiny"}))
    with pytest.raises(HubUnavailable, match=r"there is no network .*`hf download pixelmill-test/other --local-dir "):
        hub_folder(HubModel("pixelmill-test/other"), "pixelmill-test/other", cache_dir=str(cache))
    from pipelines.fingerprint import model_hash

    assert model_hash(_spec(tmp_path, **{"model.uri": "hf://pixelmill-test/tiny"}).model) == COMMIT[:16]


def _refused_endpoint() -> str:
    with socket.socket() as sock:  # bound and closed: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_endpoint_fails_at_once_naming_it(tmp_path: Path) -> None:
    endpoint = _refused_endpoint()
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match=rf"^input.uri: cannot connect to the storage endpoint {endpoint} "):
        check_reachable("s3://pixelmill/prompts.jsonl", options, key="input.uri", bucket_must_exist=False)
    assert time.monotonic() - started < 5


def test_the_output_check_creates_no_bucket(tmp_path: Path, s3) -> None:
    with pytest.raises(StorageUnreachable, match=r"^output.uri: the bucket 'typo-bukcet' .* does not exist"):
        check_output_reachable(_spec(tmp_path, **{"output.uri": "s3://typo-bukcet/images/2026-11-30"}))
    assert not s3.exists("typo-bukcet")
    # A new prefix in an existing bucket is fine.
    check_output_reachable(_spec(tmp_path, **{"output.uri": "s3://pixelmill/images/2026-11-30"}))
    local = tmp_path / "new" / "out"
    check_output_reachable(_spec(tmp_path, **{"output.uri": str(local)}))
    assert local.is_dir()
