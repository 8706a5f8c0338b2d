"""A damaged output never passes as whole (issue 16): a committed shard with a file deleted or truncated
by hand is found by one listing, removed with a warning, and its rows are done again; the report says so.

The layout and report tests write shards with the real sink (no Ray); the end-to-end tests run real
local Ray on local files and on the moto S3 server, first run then resume.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipelines.cli import main
from pipelines.layout import shard_name
from pipelines.report import build_report, report_main
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output
from tests.pipelines.shards import commit_shards

IDS = [f"d{i:02d}" for i in range(12)]


# -- the layout's check, without Ray ---------------------------------------------------------------


def test_the_stats_file_lists_each_file_of_its_shard_with_its_size(tmp_path: Path) -> None:
    layout = commit_shards(str(tmp_path / "out"), range(1), errors=1)
    listed = layout.read_stats(0)["files"]
    assert listed == {
        name: (tmp_path / "out" / name).stat().st_size
        for name in ("00000.tar", "00000.parquet", "_errors/00000.parquet")
    }
    assert all(size > 0 for size in listed.values())
    check = layout.check_shards()
    assert check.whole == [0] and check.damaged == {}


def test_check_shards_finds_each_kind_of_damage(tmp_path: Path) -> None:
    root = tmp_path / "out"
    layout = commit_shards(str(root), range(5), errors=1)
    (root / "00001.tar").unlink()
    tar = (root / "00002.tar").read_bytes()
    (root / "00002.tar").write_bytes(tar[:512])  # same name, fewer bytes
    (root / "_errors" / "00003.parquet").unlink()
    (root / "00004_stats.json").write_text("{not json")
    check = layout.check_shards()
    # the errors table is a copy of the shard Parquet's error rows: a deleted one is no damage
    assert check.whole == [0, 3]
    assert check.stats[0]["count"] == 3
    assert check.damaged == {
        1: "00001.tar is missing",
        2: f"00002.tar has 512 bytes, its stats file says {len(tar)}",
        4: "00004_stats.json cannot be read",
    }


def test_stats_without_a_file_list_count_as_whole_when_tar_and_parquet_are_there(tmp_path: Path) -> None:
    root = tmp_path / "out"
    layout = commit_shards(str(root), range(3))
    for shard in range(3):  # as written before the file list existed
        stats = layout.read_stats(shard)
        del stats["files"]
        (root / f"{shard_name(shard)}_stats.json").write_text(json.dumps(stats))
    (root / "00001.parquet").unlink()
    (root / "00002.tar").write_bytes(b"x")  # a size cannot be checked without the list
    check = layout.check_shards()
    assert check.whole == [0, 2]
    assert check.damaged == {1: "00001.parquet is missing"}


def test_remove_shard_removes_only_that_shards_files(tmp_path: Path) -> None:
    root = tmp_path / "out"
    layout = commit_shards(str(root), range(2), errors=1)
    (root / "notes.txt").write_text("mine")
    (root / "00000.tar").unlink()
    layout.remove_shard(0)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["00001.parquet", "00001.tar", "00001_stats.json", "_errors/00001.parquet", "notes.txt"]
    assert layout.check_shards().whole == [1]


def test_check_shards_on_s3(s3) -> None:
    layout = commit_shards("s3://pixelmill/out", range(3))
    assert layout.read_stats(2)["files"]["00002.tar"] == s3.size("pixelmill/out/00002.tar")
    s3.rm("pixelmill/out/00001.parquet")
    s3.pipe("pixelmill/out/00002.tar", b"short")
    check = layout.check_shards()
    assert check.whole == [0]
    assert set(check.damaged) == {1, 2}
    assert check.damaged[1] == "00001.parquet is missing"
    assert check.damaged[2].startswith("00002.tar has 5 bytes")


def test_the_report_of_a_damaged_output_says_so(tmp_path: Path, capsys) -> None:
    root = tmp_path / "out"
    commit_shards(str(root), range(3))
    assert report_main(str(root)) == 0
    html = (root / "report.html").read_text()
    assert 'id="damaged"' not in html and "DAMAGED" not in html
    (root / "00001.tar").unlink()
    capsys.readouterr()
    assert report_main(str(root)) == 1
    err = capsys.readouterr().err
    assert "DAMAGED shard 00001: 00001.tar is missing" in err and "the output is damaged" in err
    html = (root / "report.html").read_text()
    assert 'id="damaged"' in html and "DAMAGED OUTPUT: 1 committed shard(s)" in html
    assert "<td>00001</td><td class=\"error\">00001.tar is missing</td>" in html
    # the damaged shard is left out: 2 whole shards of 3 images each
    assert 'id="output-shards">2<' in html and 'id="output-images">6<' in html


# -- end to end: real Ray, first run then resume ---------------------------------------------------


def _spec(input_uri: str, output_uri: str, model_cache: str):
    raw = {"input": {"uri": input_uri}, "output": {"uri": output_uri, "samples_per_shard": 4, "report": False},
           "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1}}
    return load_spec(raw=raw)


def _prompts(write_prompts) -> Path:
    return write_prompts([{"id": i, "prompt": f"a red circle number {n}"} for n, i in enumerate(IDS)])


def _fates(out: dict[str, Any]) -> dict[str, tuple[str, int, str]]:
    """Each id's (status, shard, image sha256) as a consumer reads the output."""
    rows = {row["id"]: row for row in out["rows"]}
    return {i: (row["status"], row["shard"], row["sha256"]) for i, row in rows.items()}


def _first_run(spec) -> dict[str, tuple[str, int, str]]:
    summary = run_job(spec)
    assert summary.balanced and (summary.input_rows, summary.images, summary.skipped) == (12, 12, 0), summary.equation
    out = read_output(spec.output.uri)
    check_exactly_once(out, IDS)
    fates = _fates(out)
    assert sorted({shard for _, shard, _ in fates.values()}) == [0, 1, 2]
    assert all(status == "ok" for status, _, _ in fates.values())
    return fates


def _check_resumed(spec, before: dict[str, tuple[str, int, str]], damaged: list[int], summary) -> None:
    """Every row once, ok, with the bytes of the first run; the damaged shards' rows in new shards."""
    redone = 4 * len(damaged)
    assert len(summary.shards) == len(damaged)
    assert summary.balanced and (summary.input_rows, summary.skipped, summary.images) == (12, 12 - redone, redone), \
        summary.equation
    assert sorted(summary.damaged_shards) == [shard_name(s) for s in damaged]
    out = read_output(spec.output.uri)
    check_exactly_once(out, IDS)
    assert len(out["samples"]) == 12 and all(len(s["image_bytes"]) > 0 for s in out["samples"])
    assert {s["json"]["id"]: s["image"].size for s in out["samples"]} == {i: (32, 32) for i in IDS}
    after = _fates(out)
    for row_id, (_, shard, sha) in before.items():
        assert after[row_id][0] == "ok" and after[row_id][2] == sha, row_id  # same bytes: seeds come from ids
        if shard in damaged:  # in a shard the resume wrote (numbered after the last whole one)
            assert shard_name(after[row_id][1]) in summary.shards, f"{row_id} was not redone"
        else:
            assert after[row_id][1] == shard, f"{row_id} moved"
    assert out["run"]["damaged_shards"] == summary.damaged_shards and out["run"]["balanced"]
    again = run_job(spec)  # the repaired output is whole: nothing left to do
    assert again.balanced and (again.skipped, again.images, again.damaged_shards) == (12, 0, {}), again.equation


def test_a_deleted_tar_is_redone_on_resume(ray_session, write_prompts, tmp_path: Path, model_cache: str,
                                           caplog, capsys) -> None:
    out_dir = tmp_path / "out"
    spec = _spec(str(_prompts(write_prompts)), str(out_dir), model_cache)
    before = _first_run(spec)
    (out_dir / "00001.tar").unlink()
    capsys.readouterr()
    assert report_main(str(out_dir)) == 1  # before the resume, the report says the output is damaged
    assert "DAMAGED shard 00001: 00001.tar is missing" in capsys.readouterr().err
    assert 'id="damaged"' in (out_dir / "report.html").read_text()
    with caplog.at_level(logging.WARNING, logger="pipelines.resume"):
        resumed = run_job(spec)
    assert any(re.search(r"shard 00001 is damaged \(00001\.tar is missing\)", r.getMessage()) for r in caplog.records)
    assert not any(p.endswith("/00001.parquet") or p.endswith("/00001_stats.json")
                   for p in read_output(str(out_dir))["all_files"])
    _check_resumed(spec, before, [1], resumed)
    assert 'id="damaged"' not in Path(build_report(str(out_dir))).read_text()


def test_a_deleted_parquet_and_a_truncated_tar_are_redone_by_the_cli(
    ray_session, write_prompts, tmp_path: Path, model_cache: str, caplog, capsys
) -> None:
    out_dir = tmp_path / "out"
    spec = _spec(str(_prompts(write_prompts)), str(out_dir), model_cache)
    before = _first_run(spec)
    (out_dir / "00000.parquet").unlink()
    tar = out_dir / "00002.tar"
    tar.write_bytes(tar.read_bytes()[:1024])
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({  # JSON is YAML
        "input": {"uri": spec.input.uri}, "output": {"uri": str(out_dir), "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1},
    }))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="pipelines.resume"):
        assert main(["run", str(job)]) == 0
    captured = capsys.readouterr()
    assert "pixelmill: 12 rows in, 4 skipped as done, 8 images out" in captured.out
    assert str(out_dir / "00000.parquet") not in captured.err  # no longer the bare "pixelmill: <path>"
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "shard 00000 is damaged (00000.parquet is missing)" in warnings
    assert "shard 00002 is damaged (00002.tar has 1024 bytes" in warnings
    run = read_output(str(out_dir))["run"]
    summary = SimpleNamespace(**{k: run[k] for k in ("balanced", "equation", "input_rows", "skipped", "images",
                                                     "damaged_shards", "shards")})
    _check_resumed(spec, before, [0, 2], summary)


def test_a_damaged_shard_on_s3_is_redone_on_resume(ray_session, s3, write_prompts, model_cache: str, caplog) -> None:
    s3.put(str(_prompts(write_prompts)), "pixelmill/dmg/in/prompts.jsonl")
    spec = _spec("s3://pixelmill/dmg/in/prompts.jsonl", "s3://pixelmill/dmg/out", model_cache)
    before = _first_run(spec)
    s3.rm("pixelmill/dmg/out/00001.tar")
    s3.pipe("pixelmill/dmg/out/00002.parquet", b"PAR1 truncated")
    with caplog.at_level(logging.WARNING, logger="pipelines.resume"):
        resumed = run_job(spec)
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "shard 00001 is damaged (00001.tar is missing)" in warnings
    assert "shard 00002 is damaged (00002.parquet has 14 bytes" in warnings
    _check_resumed(spec, before, [1, 2], resumed)


def test_append_removes_a_damaged_shard_and_adds_a_whole_batch(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    out_dir = tmp_path / "out"
    spec = _spec(str(_prompts(write_prompts)), str(out_dir), model_cache)
    _first_run(spec)
    (out_dir / "00001.tar").unlink()
    appended = run_job(spec, mode="append")
    assert appended.balanced and (appended.skipped, appended.images) == (0, 12), appended.equation
    assert appended.damaged_shards == {"00001": "00001.tar is missing"}
    out = read_output(str(out_dir))
    assert sorted(out["stats"]) == [f"{shard_name(s)}_stats.json" for s in (0, 2, 3, 4, 5)]
    assert len(out["samples"]) == 20  # 8 from the first batch's whole shards, 12 from the append
