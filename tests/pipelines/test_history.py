"""The run index (issue 20, part 6): start-up reads one index per run, and the index never decides alone.

The layout tests write shards with the real sink (no Ray) on local disk and on the moto S3
server; one small Ray test compares the resume keys read through the index with a full scan,
and one end-to-end test resumes exactly once after a run whose index was never written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.history import write_index
from pipelines.layout import OutputLayout
from pipelines.resume import done_after, done_keys
from pipelines.spec import load_spec
from tests.pipelines.shards import commit_shards


def _full_scan(layout: OutputLayout) -> dict[int, dict]:
    return {shard: layout.read_stats(shard) for shard in layout.committed_shards()}


def test_the_index_gives_the_stats_of_the_full_scan_and_uncovered_shards_are_read(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(4), errors=1)
    write_index(layout, "20260101T000000-aaaa", [0, 1, 2, 3])
    commit_shards(uri, run_id="20260102T000000-bbbb", shards=range(4, 6))  # a run that died before its index
    assert sorted(p.name for p in (tmp_path / "out" / "_runs").iterdir()) == [
        "20260101T000000-aaaa.keys.parquet", "20260101T000000-aaaa.shards.parquet"]
    check = layout.check_shards()
    assert check.covered == {shard: "20260101T000000-aaaa" for shard in range(4)}
    assert check.stats == _full_scan(layout) and not check.damaged
    assert [s["count"] for s in layout.all_stats()] == [3] * 6
    assert all(layout.is_owned(str(p)) for p in (tmp_path / "out" / "_runs").iterdir())


def test_a_rewritten_shard_is_read_again_and_not_deleted(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(3))
    write_index(layout, "20260101T000000-aaaa", [0, 1, 2])
    stats_1 = tmp_path / "out" / "00001_stats.json"
    rewritten = json.loads(stats_1.read_text()) | {"count": 2, "superseded": 1}  # another size
    stats_1.write_text(json.dumps(rewritten, indent=2))
    stats_2 = tmp_path / "out" / "00002_stats.json"
    same_size = stats_2.read_text().replace('"count": 3', '"count": 4')  # the same size, another write
    stats_2.write_text(same_size)
    os.utime(stats_2, (1, 1))
    check = layout.check_shards()
    assert check.whole == [0, 1, 2] and not check.damaged
    assert check.covered == {0: "20260101T000000-aaaa"}
    assert check.stats[1]["superseded"] == 1 and check.stats[2]["count"] == 4


def test_a_damaged_shard_is_found_through_the_index(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(3))
    write_index(layout, "20260101T000000-aaaa", [0, 1, 2])
    (tmp_path / "out" / "00001.tar").write_bytes(b"short")
    (tmp_path / "out" / "00002.parquet").unlink()
    check = layout.check_shards()
    assert check.whole == [0] and check.covered == {0: "20260101T000000-aaaa"}
    assert check.damaged[1].startswith("00001.tar has 5 bytes")
    assert check.damaged[2] == "00002.parquet is missing"


def test_a_later_index_wins_for_a_shard_number_used_again(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(2))
    write_index(layout, "20260101T000000-aaaa", [0, 1])
    layout.remove_shard(1)  # damaged and removed; the next run numbers its shard 1 again
    commit_shards(uri, run_id="20260102T000000-bbbb", shards=range(1, 2), errors=2)
    assert layout.check_shards().covered == {0: "20260101T000000-aaaa"}  # the old entry no longer applies
    write_index(layout, "20260102T000000-bbbb", [1])
    check = layout.check_shards()
    assert check.covered == {0: "20260101T000000-aaaa", 1: "20260102T000000-bbbb"}
    assert check.stats[1]["failures"] == 2 and check.stats == _full_scan(layout)


def test_the_index_on_s3(s3) -> None:
    uri = "s3://pixelmill/out"
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(3), errors=1)
    write_index(layout, "20260101T000000-aaaa", [0, 1, 2])
    same_size = s3.cat("pixelmill/out/00002_stats.json").replace(b'"count": 3', b'"count": 4')
    s3.pipe("pixelmill/out/00002_stats.json", same_size)  # the same size, another ETag
    s3.rm("pixelmill/out/00001.parquet")
    check = OutputLayout(uri).check_shards()
    assert check.covered == {0: "20260101T000000-aaaa"}
    assert check.whole == [0, 2] and check.damaged == {1: "00001.parquet is missing"}
    assert check.stats[2]["count"] == 4


def test_done_keys_through_the_index_are_the_full_scans(tmp_path: Path, ray_session) -> None:
    uri = str(tmp_path / "out")
    layout = commit_shards(uri, run_id="20260101T000000-aaaa", shards=range(4))
    write_index(layout, "20260101T000000-aaaa", [0, 1, 2, 3])
    commit_shards(uri, run_id="20260102T000000-bbbb", shards=range(4, 5))  # no index: read from its Parquet
    layout.remove_shard(3)  # in the keys file, no longer committed
    check = layout.check_shards()
    indexed = done_after(layout, check.whole, 5, covered=check.covered)
    scanned = done_after(layout, check.whole, 5)
    assert len(indexed.done_parquet) == 1 and indexed.done_shards == scanned.done_shards == 4

    def keys(plan) -> list[tuple]:
        dataset = done_keys(layout, plan)
        assert dataset is not None
        return sorted(tuple(row.values()) for row in dataset.take_all())

    found = keys(indexed)
    assert found == keys(scanned)
    assert sorted(key[0] for key in found) == sorted(f"s{s}r{i}" for s in (0, 1, 2, 4) for i in range(3))


def test_a_run_that_died_before_its_index_resumes_exactly_once(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    from pipelines.runner import run_job
    from tests.pipelines.readback import check_exactly_once, read_output

    ids = [f"h{i:02d}" for i in range(10)]
    path = write_prompts([{"id": i, "prompt": f"a red circle number {i}"} for i in ids], "prompts.jsonl")
    out = tmp_path / "out"

    def spec(limit: int | None):
        raw = {"input": {"uri": str(path)}, "output": {"uri": str(out), "samples_per_shard": 2},
               "model": {"cache_dir": model_cache}, "score": None, "limit": limit,
               "defaults": {"width": 32, "height": 32, "steps": 1}}
        return load_spec(raw=raw)

    first = run_job(spec(4))
    died = run_job(spec(7))
    for suffix in (".keys.parquet", ".shards.parquet"):  # it died after its shards committed, before its index
        (out / "_runs" / f"{died.run_id}{suffix}").unlink()
    assert set(OutputLayout(str(out)).check_shards().covered.values()) == {first.run_id}
    last = run_job(spec(None))
    assert (last.skipped, last.rows) == (7, 3)
    check_exactly_once(read_output(str(out)), ids)
    covered = OutputLayout(str(out)).check_shards().covered
    assert {covered[int(s)] for s in first.shards + last.shards} == {first.run_id, last.run_id}
    assert not set(map(int, died.shards)) & set(covered)
