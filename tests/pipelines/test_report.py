"""The run report (``pipelines/report.py``) on real files: a small output written here in the sink's
layout (no Ray), on local disk and on the moto S3 server."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines.layout import OutputLayout, shard_name
from pipelines.report import build_report, report_main
from pipelines.runner import RunSummary
from pipelines.storage import filesystem, join

SCRIPT_PROMPT = "a cat <script>alert(1)</script> on a mat"
QUOTED_PROMPT = 'a "quoted" fox & a hound'
# (shard, image format, rows): each row is (id, prompt, status, stage, error)
SHARDS = [
    (0, "png", [
        ("r0", SCRIPT_PROMPT, "ok", None, None),
        ("r1", "a red circle", "ok", None, None),
        ("r2", "a green square", "error", "generate", "RuntimeError: boom <b>"),
        ("r3", QUOTED_PROMPT, "ok", None, None),
    ]),
    (1, "webp", [
        ("r4", "a purple star", "ok", None, None),
        ("r5", "a blank image", "filtered", "generate", "nsfw: blanked by the safety checker"),
        ("r6", "two orange circles", "ok", None, None),
        ("r7", "a white square", "ok", None, None),
    ]),
]
IMAGES = 6
SKIPPED = 3
SECTIONS = ("Run", "Counts", "Contact sheet", "Per-stage throughput", "Shard write time", "Scores", "Error records")


def _image(index: int, ext: str) -> bytes:
    image = Image.new("RGB", (256, 192), (40 * index % 256, 90, 200 - 20 * index))
    out = io.BytesIO()
    image.save(out, format={"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[ext])
    return out.getvalue()


def write_output(uri: str, *, scores: bool) -> dict[str, Any]:
    """Write two committed shards, an error record and ``_run.json`` as the sink and the runner do."""
    layout = OutputLayout(uri)
    fs, root = layout.fs, layout.root
    fs.makedirs(root, exist_ok=True)
    summary = RunSummary(run_id="20260101T000000-abcdef12", output=uri, mode="resume", skipped=SKIPPED)
    for shard, ext, rows in SHARDS:
        name = shard_name(shard)
        records = []
        for i, (row_id, prompt, status, stage, error) in enumerate(rows):
            ok = status == "ok"
            record = {
                "key": f"{name}{i:04d}", "shard": shard, "id": row_id, "prompt": prompt, "status": status,
                "stage": stage, "error": error, "style": "style-04" if i % 2 else None, "seed": 100 + i,
                "width": 256, "height": 192, "model": "builtin:tiny-sd", "image_format": ext,
                "sha256": "0" * 64 if ok else None,
                "encode_s": 0.01 * (i + 1), "generate_s": 0.5 if status != "error" else None,
                "image_encode_s": 0.002 if ok else None, "prompt_truncated": False,
            }
            if scores:
                record["clip_score"] = 20.0 + 3 * i + shard if ok else None
            records.append(record)
        table = pa.Table.from_pylist(records)
        with fs.open(layout.shard_file("tar", shard), "wb") as f, wds.TarWriter(f, encoder=False, mtime=0.0) as tar:
            for i, record in enumerate(records):
                if record["status"] == "ok":
                    tar.write({
                        "__key__": record["key"], ext: _image(i, ext),
                        "json": json.dumps(record, sort_keys=True).encode(), "txt": record["prompt"].encode(),
                    })
        with fs.open(layout.shard_file("parquet", shard), "wb") as f:
            pq.write_table(table, f)
        errors = [r for r in records if r["status"] == "error"]
        if errors:
            fs.makedirs(layout.errors_dir, exist_ok=True)
            with fs.open(layout.shard_file("errors", shard), "wb") as f:
                pq.write_table(pa.Table.from_pylist(errors, schema=table.schema), f)
        reasons: dict[str, int] = {}
        for r in errors:
            reason = f"{r['stage']}: {r['error'].split(':', 1)[0]}"
            reasons[reason] = reasons.get(reason, 0) + 1
        stats = {
            "shard": shard, "run_id": summary.run_id, "count": len(records),
            "successes": sum(r["status"] == "ok" for r in records),
            "failures": len(errors), "filtered": sum(r["status"] == "filtered" for r in records),
            "failures_by_reason": reasons, "start_time": "2026-01-01T00:00:01.000+00:00",
            "end_time": "2026-01-01T00:00:02.000+00:00", "duration_s": 0.25 + shard,
        }
        with fs.open(layout.shard_file("stats", shard), "wb") as f:
            f.write(json.dumps(stats, indent=2).encode())
        summary.rows += stats["count"]
        summary.images += stats["successes"]
        summary.errors += stats["failures"]
        summary.filtered += stats["filtered"]
        for reason, n in reasons.items():
            summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + n
            stage = reason.split(":", 1)[0]
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
        summary.shards.append(name)
    summary.input_rows = summary.rows + SKIPPED
    summary.balance()
    summary.wall_s, summary.images_per_s = 4.0, round(summary.images / 4.0, 3)
    summary.started, summary.finished = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:04+00:00"
    summary.spec = {"output": {"uri": uri, "samples_per_shard": 4}}
    run = asdict(summary)
    with fs.open(join(fs, root, "_run.json"), "wb") as f:
        f.write(json.dumps(run, indent=2).encode())
    return run


def _read(uri: str) -> str:
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    return fs.cat_file(path).decode("utf-8")


def check_report(html: str, run: dict[str, Any], *, thumbnails: int, scores: bool) -> None:
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in html, section
    # Self-contained: inline images and SVG charts; no URL but SVG namespace names, no scripts.
    assert html.count("data:image/") == thumbnails
    assert html.count("<svg") == (3 if scores else 2)
    without_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    assert 'src="http' not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or thumbnails < IMAGES
    assert "RuntimeError: boom &lt;b&gt;" in html  # error text is escaped too
    # Counts as in _run.json.
    for name, key in (("input-rows", "input_rows"), ("images", "images"), ("errors", "errors"),
                      ("filtered", "filtered"), ("skipped", "skipped")):
        shown = re.search(rf'id="count-{name}">(\d+)<', html)
        assert shown and int(shown.group(1)) == run[key], name
    assert int(re.search(r'id="count-shards">(\d+)<', html).group(1)) == len(run["shards"])
    assert run["equation"] in html and run["balanced"] and 'id="balanced">balanced<' in html
    assert run["run_id"] in html
    for reason, n in run["errors_by_reason"].items():
        assert f"<td>{reason}</td><td class=\"n\">{n}</td>" in html
    for stage in ("encode", "generate", "image_encode"):
        assert f"<td>{stage}</td>" in html
    assert "<td>style</td>" not in html  # no style_s column: no row for it
    assert "r2" in html  # the error record
    if scores:
        assert "scored images" in html and "No scores in this output" not in html
    else:
        assert "No scores in this output" in html


def test_report_local_with_scores(tmp_path):
    out = str(tmp_path / "out")
    run = write_output(out, scores=True)
    uri = build_report(out)
    assert uri == str(tmp_path / "out" / "report.html")
    html = _read(uri)
    check_report(html, run, thumbnails=IMAGES, scores=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a &#34;quoted&#34; fox &amp; a hound" in html
    assert "score 20" in html  # r0's score on the contact sheet
    assert not (tmp_path / "out" / "_tmp").exists()
    # Thumbnails are small re-encodings.
    for uri_data in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html):
        thumb = Image.open(io.BytesIO(base64.b64decode(uri_data)))
        assert max(thumb.size) <= 128


def test_report_local_without_scores_sampled(tmp_path):
    out = str(tmp_path / "out")
    run = write_output(out, scores=False)
    uri = build_report(out, sample_size=4, seed=3)
    html = _read(uri)
    check_report(html, run, thumbnails=4, scores=False)
    # Deterministic: the same seed gives the same report (thumbnails and charts included).
    assert _read(build_report(out, sample_size=4, seed=3)) == html
    assert html.count("data:image/") == 4


def test_report_s3(s3):
    out = "s3://pixelmill/runs/demo"
    run = write_output(out, scores=True)
    uri = build_report(out, sample_size=5)
    assert uri == "s3://pixelmill/runs/demo/report.html"
    assert s3.exists("pixelmill/runs/demo/report.html")
    check_report(_read(uri), run, thumbnails=5, scores=True)
    assert not s3.exists("pixelmill/runs/demo/_tmp")


def test_report_main(tmp_path, capsys):
    out = str(tmp_path / "out")
    write_output(out, scores=False)
    assert report_main(out) == 0
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.html").exists()
    assert report_main(str(tmp_path / "missing")) == 2
    assert "no pixelmill output" in capsys.readouterr().err


@pytest.mark.parametrize("sample_size", [0, 100])
def test_report_sample_bounds(tmp_path, sample_size):
    out = str(tmp_path / "out")
    write_output(out, scores=True)
    html = _read(build_report(out, sample_size=sample_size))
    assert html.count("data:image/") == min(sample_size, IMAGES)


def test_report_shows_every_run(tmp_path):
    """The report lists every run's record (``_runs/``), oldest first (issue 17, item 7)."""
    out = tmp_path / "out"
    run = write_output(str(out), scores=False)
    (out / "_runs").mkdir()
    first = {**run, "run_id": "20260101T000000-aaaa", "mode": "overwrite", "started": "2026-01-01T00:00:00+00:00",
             "images": 9}
    second = {**run, "run_id": "20260102T000000-bbbb", "mode": "resume", "started": "2026-01-02T00:00:00+00:00",
              "balanced": False}
    for record in (second, first):
        (out / "_runs" / f"{record['run_id']}.json").write_text(json.dumps(record))
    html = _read(build_report(str(out)))
    rows = re.findall(r'<tr class="history-run"><td>([^<]+)</td><td>([^<]+)</td>', html)
    assert rows == [("20260101T000000-aaaa", "overwrite"), ("20260102T000000-bbbb", "resume")]
    assert '<td class="n">9</td>' in html and '<span class="bad">no</span>' in html
    single = tmp_path / "single"
    write_output(str(single), scores=False)
    assert 'id="history"' not in _read(build_report(str(single)))
