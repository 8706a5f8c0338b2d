"""S3 that throttles: a share of reads and writes answered 503 SlowDown, through a real proxy to moto."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output
from tests.s3faults import READ_METHODS, WRITE_METHODS, FlakyS3Proxy


def test_run_survives_503_slowdown_on_reads_and_writes(
    ray_session, s3, moto_endpoint: str, write_prompts, model_cache: str
) -> None:
    rows = [{"id": f"s{i:02d}", "prompt": f"a shape number {i}"} for i in range(12)] + [{"id": "e", "prompt": ""}]
    s3.put(str(write_prompts(rows, "prompts.jsonl")), "pixelmill/in/prompts.jsonl")
    # Never the same request failed more than 3 times in a row: below the client's 10 attempts.
    with FlakyS3Proxy(moto_endpoint, fail_rate=0.3, seed=3, max_consecutive_failures=3) as proxy:
        spec = load_spec(raw={
            "input": {"uri": "s3://pixelmill/in/prompts.jsonl"},
            "output": {"uri": "s3://pixelmill/flaky", "samples_per_shard": 4},
            "model": {"cache_dir": model_cache},
            "defaults": {"width": 32, "height": 32, "steps": 1},
            "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 4}},
            # No retry settings here: pixelmill adds the client retries to every s3:// filesystem.
            "storage_options": {"client_kwargs": {"endpoint_url": proxy.endpoint_url}},
        })
        first = run_job(spec)
        again = run_job(spec)  # resume through the flaky endpoint: reads committed ids, skips them all
        failed = proxy.failed_by_method()
        print(f"503 SlowDown answers injected: {failed}, requests forwarded: {proxy.forwarded}")
    assert first.balanced and (first.images, first.errors) == (12, 1), first.equation
    assert again.balanced and (again.rows, again.skipped) == (0, 13), again.equation
    assert sum(failed.get(m, 0) for m in READ_METHODS) > 0 and sum(failed.get(m, 0) for m in WRITE_METHODS) > 0
    out = read_output("s3://pixelmill/flaky")
    check_exactly_once(out, [row["id"] for row in rows])
    assert len(out["tars"]) == 4 and not s3.exists("pixelmill/flaky/_tmp")


def test_local_write_once_leaves_nothing_on_error(tmp_path: Path) -> None:
    import fsspec
    import pytest

    from pipelines.storage import write_once

    fs = fsspec.filesystem("file")
    target = tmp_path / "00000.tar"
    with pytest.raises(RuntimeError):
        with write_once(fs, str(target), staging_dir=str(tmp_path / "_tmp")) as f:
            f.write(b"half a shard")
            raise RuntimeError("the writer died")
    assert not target.exists() and list((tmp_path / "_tmp").iterdir()) == []
    with write_once(fs, str(target), staging_dir=str(tmp_path / "_tmp")) as f:
        f.write(b"a whole shard")
    assert target.read_bytes() == b"a whole shard"


@pytest.mark.parametrize("in_memory_limit", [64 << 20, 1 << 20], ids=["in-memory", "streamed-multipart"])
def test_s3_write_once_leaves_nothing_on_error(s3, monkeypatch, in_memory_limit: int) -> None:
    from pipelines import storage

    monkeypatch.setattr(storage, "IN_MEMORY_LIMIT", in_memory_limit)
    fs, _ = storage.filesystem("s3://pixelmill/x")
    with pytest.raises(RuntimeError):
        with storage.write_once(fs, "pixelmill/w/00000.tar", staging_dir="unused") as f:
            f.write(b"x" * (6 << 20))
            f.flush()
            assert (f.upload is not None) == (in_memory_limit < (6 << 20))  # streaming as a multipart upload
            raise RuntimeError("the writer died")
    fs.invalidate_cache()
    assert not fs.exists("pixelmill/w/00000.tar")
    assert s3.call_s3("list_multipart_uploads", Bucket="pixelmill").get("Uploads", []) == []  # aborted
    whole = b"a whole shard" * (1 << 17)  # 1.6 MiB: past the 1 MiB limit, under the default
    with storage.write_once(fs, "pixelmill/w/00000.tar", staging_dir="unused") as f:
        f.write(whole[:100])
        f.write(memoryview(whole)[100:])
        assert f.tell() == len(whole)
    fs.invalidate_cache()
    assert fs.cat_file("pixelmill/w/00000.tar") == whole


@pytest.mark.parametrize("mode", ["overwrite", "resume", "append"])
def test_every_mode_starts_on_a_prefix_nothing_was_written_to(s3, mode: str) -> None:
    from pipelines.layout import OutputLayout
    from pipelines.resume import prepare_output

    spec = load_spec(raw={"input": {"uri": "s3://pixelmill/in/p.jsonl"}, "output": {"uri": "s3://pixelmill/never/written"}})
    plan = prepare_output(OutputLayout(spec.output.uri, spec.storage_options), mode)
    assert (plan.shard_offset, plan.done_parquet) == (0, [])
