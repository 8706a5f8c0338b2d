"""The one storage stack: reads, model folders and files copied once per node, always with the retry policy."""

from __future__ import annotations

import copy
import os
import threading
import uuid
from pathlib import Path

import fsspec
import pytest

from pipelines import storage
from pipelines.resilience import with_storage_retries
from pipelines.storage import publish_once, read_bytes, sync_file, sync_folder
from tests.s3faults import FlakyS3Proxy


def _fake_model(folder: Path, marker: str = "model_index.json") -> Path:
    """A folder shaped like a model: a marker, a nested component, a binary 'weight' file."""
    (folder / "unet").mkdir(parents=True)
    (folder / marker).write_text('{"_class_name": "Fake"}')
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "weights.bin").write_bytes(os.urandom(70_000))
    return folder


def _files(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- read_bytes ---------------------------------------------------------------------------


def test_read_bytes_local_and_s3(s3, tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"local bytes")
    assert read_bytes(str(path)) == read_bytes(f"file://{path}") == b"local bytes"
    s3.pipe("pixelmill/x/b.bin", b"remote bytes")
    assert read_bytes("s3://pixelmill/x/b.bin") == b"remote bytes"
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.bin"))
    with pytest.raises(FileNotFoundError):
        read_bytes("s3://pixelmill/x/missing.bin")


# --- sync_folder ----------------------------------------------------------------------------


def test_local_folder_is_used_in_place(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "model")
    cache = tmp_path / "cache"
    assert sync_folder(str(model), cache_dir=str(cache)) == str(model)
    assert sync_folder(f"file://{model}", cache_dir=str(cache)) == str(model)
    assert not cache.exists()


def test_folder_without_marker_is_a_clear_error(s3, tmp_path: Path) -> None:
    (tmp_path / "empty" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no model_index.json or config.json in"):
        sync_folder(str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        sync_folder(f"memory://nothing-{uuid.uuid4().hex}", cache_dir=str(tmp_path / "cache"))
    s3.pipe("pixelmill/models/empty/unet/weights.bin", b"x")
    with pytest.raises(FileNotFoundError, match="no model_index.json or config.json under it"):
        sync_folder("s3://pixelmill/models/empty", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_remote_folder_is_copied_once(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "model")
    memory = fsspec.filesystem("memory")
    prefix = f"/models-{uuid.uuid4().hex}/fake"
    memory.put(f"{model}/", f"{prefix}/", recursive=True)
    uri, cache = f"memory://{prefix}", str(tmp_path / "cache")

    local = sync_folder(uri, cache_dir=cache)
    # the cache layout models/store.py used before the move: cache_dir/remote/<sha256(uri)[:16]>
    assert os.path.dirname(local) == os.path.join(cache, "remote") and len(os.path.basename(local)) == 16
    assert _files(local) == _files(model)

    memory.rm(prefix, recursive=True)  # a second call must not need the remote any more
    assert sync_folder(uri, cache_dir=cache) == local
    assert [name for name in os.listdir(os.path.dirname(local)) if ".tmp-" in name] == []


def test_s3_model_folder_through_the_stage_loader(s3, tmp_path: Path) -> None:
    """What a stage does: ``actors.loading`` syncs the S3 folder and hands ``models`` the local copy."""
    from actors.loading import local_model_folder

    model = _fake_model(tmp_path / "taesd", marker="config.json")  # a tiny VAE is a config.json folder
    s3.put(f"{model}/", "pixelmill/models/taesd/", recursive=True)
    local = local_model_folder("s3://pixelmill/models/taesd", cache_dir=str(tmp_path / "cache"), storage_options={})
    assert local.startswith(str(tmp_path / "cache" / "remote")) and _files(local) == _files(model)


def test_publish_once_builds_once_under_concurrency(tmp_path: Path) -> None:
    calls = []

    def fill(folder: str) -> None:
        calls.append(folder)
        Path(folder, "done").write_text("x")

    complete = lambda folder: os.path.isfile(os.path.join(folder, "done"))  # noqa: E731
    target = str(tmp_path / "target")
    threads = [
        threading.Thread(target=publish_once, args=(target, fill), kwargs={"complete": complete}) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and complete(target)
    with pytest.raises(RuntimeError, match="incomplete"):
        publish_once(str(tmp_path / "other"), lambda folder: None, complete=complete)
    assert not (tmp_path / "other").exists()


# --- sync_file ------------------------------------------------------------------------------


def test_sync_file_local_and_s3(s3, tmp_path: Path) -> None:
    weights = tmp_path / "decoder.pth"
    weights.write_bytes(b"weights")
    cache = str(tmp_path / "cache")
    assert sync_file(str(weights), cache_dir=cache) == str(weights)
    assert sync_file(f"file://{weights}", cache_dir=cache) == str(weights)

    s3.pipe("pixelmill/adain/decoder.pth", b"remote weights")
    local = sync_file("s3://pixelmill/adain/decoder.pth", cache_dir=cache)
    assert Path(local).read_bytes() == b"remote weights" and os.path.basename(local) == "decoder.pth"
    assert Path(local).parent.parent == Path(cache) / "files"
    s3.rm("pixelmill/adain/decoder.pth")
    assert sync_file("s3://pixelmill/adain/decoder.pth", cache_dir=cache) == local  # no network once cached

    with pytest.raises(FileNotFoundError):
        sync_file("s3://pixelmill/adain/missing.pth", cache_dir=cache)
    with pytest.raises(FileNotFoundError):
        sync_file(str(tmp_path / "missing.pth"), cache_dir=cache)


def test_adain_stage_loads_its_weights_from_s3(s3, tmp_path: Path, monkeypatch) -> None:
    from actors.style import StyleStage
    from models.adain import save_test_weights
    from pipelines.spec import StageSpec, StyleSpec

    monkeypatch.setattr(storage, "DEFAULT_CACHE_DIR", str(tmp_path / "cache"))
    vgg, decoder = save_test_weights(str(tmp_path), seed=0)
    s3.put(vgg, "pixelmill/adain/vgg_normalised.pth")
    s3.put(decoder, "pixelmill/adain/decoder.pth")
    spec = StyleSpec(backend="adain", adain={"vgg": "s3://pixelmill/adain/vgg_normalised.pth",
                                             "decoder": "s3://pixelmill/adain/decoder.pth"})
    stage = StyleStage(style=spec, stage=StageSpec())
    assert stage.backend.name == "adain"
    cached = sorted(p.name for p in (tmp_path / "cache" / "files").rglob("*.pth"))
    assert cached == ["decoder.pth", "vgg_normalised.pth"]


# --- the retry policy covers every byte path ----------------------------------------------------


def test_retry_options_reach_every_s3_access(s3, tmp_path: Path, monkeypatch) -> None:
    """Model folders, single files and reads all build their filesystem with the S3 retry settings."""
    seen: list[tuple[str, dict]] = []
    real = storage.url_to_fs

    def spy(uri: str, **options):
        seen.append((uri, copy.deepcopy(options)))  # botocore rewrites the retries dict it is given
        return real(uri, **options)

    monkeypatch.setattr(storage, "url_to_fs", spy)
    _fake_model(tmp_path / "model")
    s3.put(f"{tmp_path / 'model'}/", "pixelmill/models/fake/", recursive=True)
    s3.pipe("pixelmill/adain/vgg.pth", b"w")
    user = {"client_kwargs": {"region_name": "us-east-1"}}
    sync_folder("s3://pixelmill/models/fake", cache_dir=str(tmp_path / "cache"), storage_options=user)
    sync_file("s3://pixelmill/adain/vgg.pth", cache_dir=str(tmp_path / "cache"), storage_options=user)
    read_bytes("s3://pixelmill/adain/vgg.pth", user)
    expected = with_storage_retries("s3://x", user)["config_kwargs"]["retries"]
    assert [uri for uri, _ in seen] == ["s3://pixelmill/models/fake", *["s3://pixelmill/adain/vgg.pth"] * 2]
    for _, options in seen:
        assert options["config_kwargs"]["retries"] == expected == {"max_attempts": 10, "mode": "standard"}
        assert options["client_kwargs"] == {"region_name": "us-east-1"}  # the job's options are kept
    assert user == {"client_kwargs": {"region_name": "us-east-1"}}  # and not modified


@pytest.mark.slow  # a throttling proxy server and botocore's backoff
def test_model_download_survives_503_slowdown(s3, moto_endpoint: str, tmp_path: Path) -> None:
    """A model folder copied through a throttling endpoint, with no retry settings in the job's options."""
    model = _fake_model(tmp_path / "model")
    s3.put(f"{model}/", "pixelmill/models/flaky/", recursive=True)
    with FlakyS3Proxy(moto_endpoint, fail_rate=0.5, seed=3, max_consecutive_failures=3) as proxy:
        options = {"client_kwargs": {"endpoint_url": proxy.endpoint_url}}
        local = sync_folder("s3://pixelmill/models/flaky", cache_dir=str(tmp_path / "cache"), storage_options=options)
        weights = sync_file("s3://pixelmill/models/flaky/unet/weights.bin", cache_dir=str(tmp_path / "cache"),
                            storage_options=options)
        failed = proxy.failed
    assert failed > 0
    assert _files(local) == _files(model)
    assert Path(weights).read_bytes() == (model / "unet" / "weights.bin").read_bytes()


def test_redact_hides_secrets_but_not_token_counts() -> None:
    from pipelines.storage import redact

    clean = redact({"key": "k", "secret": "s", "session_token": "t", "client_kwargs": {"aws_secret_access_key": "a"},
                    "llm": {"max_new_tokens": 48}, "keep": "best"})
    assert clean == {"key": "***", "secret": "***", "session_token": "***",
                     "client_kwargs": {"aws_secret_access_key": "***"}, "llm": {"max_new_tokens": 48}, "keep": "best"}
