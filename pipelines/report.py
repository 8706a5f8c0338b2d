"""A self-contained HTML report of a pixelmill output: ``OUT/report.html``.

:func:`build_report` reads only what a finished run leaves (the committed
shards' stats files, their Parquet, the tars, ``_errors/`` and ``_run.json``),
on local disk or object storage, and writes one HTML file that needs no
network to be read: thumbnails are inline ``data:`` URIs, charts are inline
SVG drawn with matplotlib, styles are inline, and a Content-Security-Policy
forbids the browser to load anything else.

Memory stays bounded whatever the output's size: the Parquet files are read one
at a time, in batches, and only the columns the report needs (the prompt and
style columns only for shards that hold a sampled image); from the tars only
the sampled images are read (the tar's headers are walked and other members
are skipped); the error table stops after the first ``max_errors`` records.
What grows with the output is one float per image when it has scores (for the
histogram) and one small dict per shard.

Sections: the run header (from ``_run.json``: the accounting equation and
whether it balances), counts (images, errors by stage and by reason, filtered,
skipped), a contact sheet of a deterministic sample of images (``seed``),
per-stage throughput from the per-row ``*_s`` columns, shard write times from
the stats files, a histogram of ``clip_score`` (where the output has it), and
the first error records.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import random
import re
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import filesystem, is_local, join, write_once

__all__ = ["REPORT_NAME", "STAGE_SECONDS", "build_report", "report_main"]

REPORT_NAME = "report.html"
# Per-row seconds the stages write (batch time / rows in the batch), in pipeline order.
STAGE_SECONDS = ("encode_s", "generate_s", "style_s", "image_encode_s")
SCORE_COLUMN = "clip_score"
THUMBNAIL_PX = 128
MAX_ERRORS = 50
_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
_STATS_NAME = re.compile(r"(\d{5,})_stats\.json$")
_PROMPT_CHARS = 200
_BATCH_ROWS = 8192
_TAR_BLOCK_SIZE = 1 << 20
# Up to this many shards, the write-time chart has one bar per shard; above it, a histogram.
_BARS_PER_SHARD_LIMIT = 60
logger = logging.getLogger(__name__)


@dataclass
class StageTiming:
    """Seconds spent by one stage, summed over the rows that went through it."""

    column: str
    rows: int = 0
    seconds: float = 0.0

    @property
    def stage(self) -> str:
        return self.column.removesuffix("_s")

    @property
    def mean_s(self) -> float | None:
        return self.seconds / self.rows if self.rows else None

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.seconds > 0 else None


@dataclass
class Sample:
    """One image of the contact sheet."""

    shard: int
    key: str
    prompt: str = ""
    style: str | None = None
    score: float | None = None
    thumbnail: str | None = None  # a data: URI


@dataclass
class _Scan:
    """What one pass over the committed shards' Parquet gathers."""

    timings: dict[str, StageTiming] = field(default_factory=dict)
    scores: list[np.ndarray] = field(default_factory=list)
    samples: dict[str, Sample] = field(default_factory=dict)
    shards_with_scores: int = 0


# --------------------------------------------------------------------------- reading


def _committed_shards(fs: Any, root: str) -> dict[int, dict[str, Any]]:
    """Return the stats of every committed shard (a stats file exists), by shard number."""
    stats = {}
    for path in sorted(fs.glob(join(fs, root, "*_stats.json"))):
        match = _STATS_NAME.search(path)
        if match:
            stats[int(match.group(1))] = json.loads(fs.cat_file(path))
    return dict(sorted(stats.items()))


def _read_run(fs: Any, root: str) -> dict[str, Any] | None:
    path = join(fs, root, "_run.json")
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def _plan_sample(stats: dict[int, dict[str, Any]], sample_size: int, seed: int) -> dict[int, list[int]]:
    """Pick ``min(sample_size, images)`` images across all shards, deterministically from ``seed``.

    Returns, per shard, the sorted ordinals of the picked images among the
    shard's ``ok`` rows (the order of the tar and of the Parquet).
    """
    counts = [(shard, int(s.get("successes", 0))) for shard, s in stats.items()]
    total = sum(n for _, n in counts)
    picks = sorted(random.Random(seed).sample(range(total), min(max(sample_size, 0), total)))
    plan: dict[int, list[int]] = {}
    start, i = 0, 0
    for shard, n in counts:
        while i < len(picks) and picks[i] < start + n:
            plan.setdefault(shard, []).append(picks[i] - start)
            i += 1
        start += n
    return plan


def _finite(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = np.asarray(values.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
    return array[np.isfinite(array)]


def _scan_parquet(fs: Any, root: str, shards: Iterable[int], plan: dict[int, list[int]]) -> _Scan:
    """One pass over the shards' Parquet files, one file and one batch at a time, needed columns only."""
    scan = _Scan(timings={column: StageTiming(column) for column in STAGE_SECONDS})
    for shard in shards:
        path = join(fs, root, f"{shard:05d}.parquet")
        if not fs.exists(path):
            logger.warning("pixelmill report: %s is missing", path)
            continue
        wanted = plan.get(shard, [])
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            columns = [c for c in ("status", *STAGE_SECONDS, SCORE_COLUMN) if c in names]
            if wanted:
                columns += [c for c in ("key", "prompt", "style") if c in names]
            if SCORE_COLUMN in names:
                scan.shards_with_scores += 1
            if not columns:
                continue
            ok_seen = 0  # ok rows before this batch
            next_pick = 0
            for batch in parquet.iter_batches(columns=columns, batch_size=_BATCH_ROWS):
                table = pa.Table.from_batches([batch])
                for column in STAGE_SECONDS:
                    if column in names:
                        values = _finite(table.column(column))
                        scan.timings[column].rows += int(values.size)
                        scan.timings[column].seconds += float(values.sum())
                if "status" in names:
                    ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
                else:
                    ok = np.ones(table.num_rows, dtype=bool)
                if SCORE_COLUMN in names:
                    scores = _finite(table.column(SCORE_COLUMN).filter(pa.array(ok)))
                    if scores.size:
                        scan.scores.append(scores.astype(np.float32))
                ok_rows = np.flatnonzero(ok)
                while next_pick < len(wanted) and wanted[next_pick] < ok_seen + ok_rows.size:
                    row = int(ok_rows[wanted[next_pick] - ok_seen])
                    scan_sample = _sample_from_row(shard, table, row, names)
                    scan.samples[scan_sample.key] = scan_sample
                    next_pick += 1
                ok_seen += ok_rows.size
    return scan


def _sample_from_row(shard: int, table: pa.Table, row: int, names: set[str]) -> Sample:
    def value(column: str) -> Any:
        return table.column(column)[row].as_py() if column in names else None

    score = value(SCORE_COLUMN)
    return Sample(
        shard=shard,
        key=str(value("key")),
        prompt=str(value("prompt") or ""),
        style=value("style"),
        score=float(score) if score is not None and math.isfinite(score) else None,
    )


def _thumbnail(data: bytes, px: int = THUMBNAIL_PX) -> str:
    """Return a small JPEG of an encoded image as a ``data:`` URI."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (px * 2, px * 2))  # JPEG: decode at a reduced scale
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
        image.thumbnail((px, px))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=75, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _read_thumbnails(fs: Any, root: str, samples: dict[str, Sample]) -> None:
    """Fill in the thumbnails of the sampled images, reading only those members of each tar."""
    by_shard: dict[int, set[str]] = {}
    for sample in samples.values():
        by_shard.setdefault(sample.shard, set()).add(sample.key)
    for shard, keys in sorted(by_shard.items()):
        path = join(fs, root, f"{shard:05d}.tar")
        if not fs.exists(path):
            logger.warning("pixelmill report: %s is missing", path)
            continue
        options = {} if is_local(fs) else {"block_size": _TAR_BLOCK_SIZE}
        missing = set(keys)
        with fs.open(path, "rb", **options) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:  # random-access mode: headers only, skipped members are never read
                if not member.isfile():
                    continue
                # webdataset's convention: the key is the name up to the first dot of its last part.
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key not in missing or ext.lower() not in _IMAGE_EXTENSIONS:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                try:
                    samples[key].thumbnail = _thumbnail(handle.read())
                except Exception as error:  # noqa: BLE001 - one unreadable image must not stop the report
                    logger.warning("pixelmill report: cannot read %s in %s: %s", member.name, path, error)
                missing.discard(key)
                if not missing:
                    break


def _read_errors(fs: Any, root: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Return the first ``limit`` error records (shard order) and the number of records in ``_errors/``."""
    files = sorted(fs.glob(join(fs, root, "_errors", "*.parquet")))
    records: list[dict[str, Any]] = []
    total = 0
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            total += parquet.metadata.num_rows
            if len(records) >= limit:
                continue
            names = set(parquet.schema_arrow.names)
            columns = [c for c in ("key", "id", "stage", "error") if c in names]
            if not columns:
                continue
            for batch in parquet.iter_batches(columns=columns, batch_size=min(_BATCH_ROWS, max(limit, 1))):
                records.extend(batch.to_pylist()[: limit - len(records)])
                if len(records) >= limit:
                    break
    return records, total


# --------------------------------------------------------------------------- charts


def _svg(figure: Any, name: str) -> str:
    """Return a matplotlib figure as an inline ``<svg>`` element whose ids are unique to ``name``."""
    import matplotlib

    # Text stays text (no glyph definitions); a fixed salt makes the ids, and so the report, reproducible.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"pixelmill-{name}"}):
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and the DOCTYPE (which names a URL)
    # Several SVGs share one HTML document: keep every id and reference to it distinct.
    svg = re.sub(r'\bid="', f'id="{name}-', svg)
    svg = svg.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return svg


def _figure(width: float = 6.4, height: float = 2.6) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _throughput_chart(timings: list[StageTiming]) -> str | None:
    rated = [t for t in timings if t.rows_per_s is not None]
    if not rated:
        return None
    figure, axes = _figure(height=0.6 + 0.45 * len(rated))
    labels = [t.stage for t in rated]
    rates = [t.rows_per_s for t in rated]
    axes.barh(labels, rates, color="#4c72b0")
    axes.invert_yaxis()
    if max(rates) / min(rates) > 50:  # stages often differ by orders of magnitude
        axes.set_xscale("log")
    axes.set_xlabel("rows per second (one worker)")
    axes.set_title("Per-stage throughput")
    return _svg(figure, "throughput")


def _shard_time_chart(stats: dict[int, dict[str, Any]]) -> str | None:
    durations = [(shard, float(s["duration_s"])) for shard, s in stats.items() if s.get("duration_s") is not None]
    if not durations:
        return None
    figure, axes = _figure()
    if len(durations) <= _BARS_PER_SHARD_LIMIT:
        axes.bar([f"{shard:05d}" for shard, _ in durations], [d for _, d in durations], color="#55a868")
        axes.set_xlabel("shard")
        axes.tick_params(axis="x", labelrotation=90, labelsize=7)
        axes.set_ylabel("seconds")
    else:
        axes.hist([d for _, d in durations], bins=30, color="#55a868")
        axes.set_xlabel("seconds to write a shard")
        axes.set_ylabel("shards")
    axes.set_title("Shard write time")
    return _svg(figure, "shard-time")


def _score_chart(scores: np.ndarray) -> str | None:
    if not scores.size:
        return None
    figure, axes = _figure()
    axes.hist(scores, bins=min(40, max(5, int(math.sqrt(scores.size)))), color="#c44e52")
    axes.set_xlabel(SCORE_COLUMN)
    axes.set_ylabel("images")
    axes.set_title("Score histogram")
    return _svg(figure, "scores")


# --------------------------------------------------------------------------- page

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pixelmill report: {{ output }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } .ok { color: #1a7f37; font-weight: bold; } .bad { color: #c62828; font-weight: bold; }
.note { color: #666; } code { background: #f4f4f4; padding: 0 .2em; }
.sheet { display: flex; flex-wrap: wrap; gap: .6em; }
.sheet figure { margin: 0; width: {{ thumbnail_px }}px; font-size: .72em; }
.sheet img { display: block; max-width: {{ thumbnail_px }}px; max-height: {{ thumbnail_px }}px; border: 1px solid #ccc; }
.sheet .missing { width: {{ thumbnail_px }}px; height: {{ thumbnail_px }}px; background: #eee; display: flex;
                  align-items: center; justify-content: center; }
.sheet figcaption { overflow-wrap: anywhere; } .chart svg { max-width: 100%; height: auto; }
td.error { font-family: ui-monospace, monospace; font-size: .85em; overflow-wrap: anywhere; max-width: 50em; }
</style>
</head>
<body>
<h1>pixelmill report</h1>

<section id="run">
<h2>Run</h2>
<table>
<tr><th>output</th><td><code>{{ output }}</code></td></tr>
{% if run %}
<tr><th>run id</th><td id="run-id">{{ run.run_id }}</td></tr>
<tr><th>mode</th><td id="run-mode">{{ run.mode }}</td></tr>
<tr><th>started</th><td>{{ run.started }}</td></tr>
<tr><th>finished</th><td>{{ run.finished }}</td></tr>
<tr><th>wall time</th><td id="wall-s">{{ fmt(run.wall_s) }} s</td></tr>
<tr><th>images/s</th><td id="images-per-s">{{ fmt(run.images_per_s) }}</td></tr>
<tr><th>accounting</th><td><span id="equation">{{ run.equation }}</span>:
  {% if run.balanced %}<span class="ok" id="balanced">balanced</span>
  {% else %}<span class="bad" id="balanced">does not balance</span>{% endif %}</td></tr>
{% else %}
<tr><th>run</th><td class="bad">no _run.json: the run did not finish (the counts below come from the stats files)</td></tr>
{% endif %}
</table>
</section>

<section id="counts">
<h2>Counts</h2>
{% if run %}<p class="note">This run (from <code>_run.json</code>).</p>{% endif %}
<table>
<tr><th>input rows</th><td class="n" id="count-input-rows">{{ counts.input_rows }}</td></tr>
<tr><th>images</th><td class="n" id="count-images">{{ counts.images }}</td></tr>
<tr><th>errors</th><td class="n" id="count-errors">{{ counts.errors }}</td></tr>
<tr><th>filtered</th><td class="n" id="count-filtered">{{ counts.filtered }}</td></tr>
<tr><th>skipped as already done</th><td class="n" id="count-skipped">{{ counts.skipped }}</td></tr>
<tr><th>shards written</th><td class="n" id="count-shards">{{ counts.shards }}</td></tr>
</table>
<p>The whole output: <span id="output-shards">{{ totals.shards }}</span> committed shards holding
<span id="output-images">{{ totals.images }}</span> images, <span id="output-errors">{{ totals.errors }}</span> errors and
<span id="output-filtered">{{ totals.filtered }}</span> filtered rows.</p>
<h3>Errors by stage</h3>
{% if counts.errors_by_stage %}
<table><tr><th>stage</th><th>errors</th></tr>
{% for stage, n in counts.errors_by_stage %}<tr><td>{{ stage }}</td><td class="n">{{ n }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No errors.</p>{% endif %}
<h3>Errors by reason</h3>
{% if counts.errors_by_reason %}
<table><tr><th>reason</th><th>errors</th></tr>
{% for reason, n in counts.errors_by_reason %}<tr><td>{{ reason }}</td><td class="n">{{ n }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No errors.</p>{% endif %}
</section>

<section id="contact-sheet">
<h2>Contact sheet</h2>
<p class="note">{{ samples|length }} of {{ totals.images }} images, sampled across shards with seed {{ seed }}.</p>
<div class="sheet">
{% for s in samples %}<figure>
{% if s.thumbnail %}<img src="{{ s.thumbnail }}" alt="{{ s.prompt|truncate(80) }}">
{% else %}<div class="missing">not readable</div>{% endif %}
<figcaption><span title="{{ s.prompt }}">{{ s.prompt|truncate(prompt_chars) }}</span>
<br><span class="note">{{ s.key }}{% if s.style %} · style {{ s.style }}{% endif %}{% if s.score is not none %} · score {{ fmt(s.score) }}{% endif %}</span>
</figcaption></figure>
{% endfor %}
</div>
</section>

<section id="throughput">
<h2>Per-stage throughput</h2>
{% if timings %}
<p class="note">From the per-row seconds each stage records (a batch's time divided by its rows): the throughput of
one worker of the stage, over the whole output.</p>
<table><tr><th>stage</th><th>rows</th><th>total s</th><th>mean s/row</th><th>rows/s</th></tr>
{% for t in timings %}<tr><td>{{ t.stage }}</td><td class="n">{{ t.rows }}</td><td class="n">{{ fmt(t.seconds) }}</td>
<td class="n">{{ fmt(t.mean_s) }}</td><td class="n">{{ fmt(t.rows_per_s) }}</td></tr>
{% endfor %}</table>
{% if throughput_svg %}<div class="chart">{{ throughput_svg }}</div>{% endif %}
{% else %}<p class="note">No per-stage seconds in this output.</p>{% endif %}
</section>

<section id="shard-write-time">
<h2>Shard write time</h2>
{% if write.shards %}
<table>
<tr><th>shards</th><td class="n">{{ write.shards }}</td></tr>
<tr><th>mean s</th><td class="n">{{ fmt(write.mean) }}</td></tr>
<tr><th>median s</th><td class="n">{{ fmt(write.median) }}</td></tr>
<tr><th>slowest</th><td class="n">{{ fmt(write.max) }} s (shard {{ write.slowest }})</td></tr>
<tr><th>total s</th><td class="n">{{ fmt(write.total) }}</td></tr>
</table>
{% if shard_time_svg %}<div class="chart">{{ shard_time_svg }}</div>{% endif %}
{% else %}<p class="note">No shard stats with a duration.</p>{% endif %}
</section>

<section id="scores">
<h2>Scores</h2>
{% if score.count %}
<p>{{ score.count }} scored images: mean {{ fmt(score.mean) }}, min {{ fmt(score.min) }}, max {{ fmt(score.max) }}.</p>
<div class="chart">{{ score_svg }}</div>
{% else %}<p class="note" id="no-scores">No scores in this output (no <code>{{ score_column }}</code> values).</p>{% endif %}
</section>

<section id="errors">
<h2>Error records</h2>
{% if errors %}
<p class="note">The first {{ errors|length }} of {{ error_total }} records in <code>_errors/</code>.</p>
<table><tr><th>key</th><th>id</th><th>stage</th><th>error</th></tr>
{% for e in errors %}<tr><td>{{ e.key }}</td><td>{{ e.id }}</td><td>{{ e.stage }}</td><td class="error">{{ e.error }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">No error records in <code>_errors/</code>.</p>{% endif %}
</section>
</body>
</html>
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _counts(run: dict[str, Any] | None, stats: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The run's counts from ``_run.json``, else the same totals from the stats files."""
    if run:
        by_stage = dict(run.get("errors_by_stage") or {})
        by_reason = dict(run.get("errors_by_reason") or {})
        counts = {key: run.get(key, 0) for key in ("input_rows", "images", "errors", "filtered", "skipped")}
        counts["shards"] = len(run.get("shards") or [])
    else:
        by_stage, by_reason = {}, {}
        for s in stats.values():
            for reason, n in (s.get("failures_by_reason") or {}).items():
                by_reason[reason] = by_reason.get(reason, 0) + n
                stage = reason.split(":", 1)[0]
                by_stage[stage] = by_stage.get(stage, 0) + n
        counts = {
            "input_rows": sum(s.get("count", 0) for s in stats.values()),
            "images": sum(s.get("successes", 0) for s in stats.values()),
            "errors": sum(s.get("failures", 0) for s in stats.values()),
            "filtered": sum(s.get("filtered", 0) for s in stats.values()),
            "skipped": 0,
            "shards": len(stats),
        }
    counts["errors_by_stage"] = sorted(by_stage.items(), key=lambda item: (-item[1], item[0]))
    counts["errors_by_reason"] = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
    return counts


def _write_times(stats: dict[int, dict[str, Any]]) -> dict[str, Any]:
    durations = {shard: float(s["duration_s"]) for shard, s in stats.items() if s.get("duration_s") is not None}
    if not durations:
        return {"shards": 0}
    values = np.array(list(durations.values()))
    slowest = max(durations, key=durations.__getitem__)
    return {
        "shards": len(values),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "slowest": f"{slowest:05d}",
        "total": float(values.sum()),
    }


def _render(**context: Any) -> str:
    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False)
    return environment.from_string(_TEMPLATE).render(fmt=_fmt, **context)


def render_report(
    output_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    sample_size: int = 48,
    seed: int = 0,
    max_errors: int = MAX_ERRORS,
) -> str:
    """Return the report of an output as HTML text (see :func:`build_report`)."""
    from markupsafe import Markup

    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()  # listings cached by this process may predate the run's writes
    if not fs.exists(root) or not fs.isdir(root):
        raise FileNotFoundError(f"no pixelmill output at {output_uri}")
    stats = _committed_shards(fs, root)
    run = _read_run(fs, root)
    if run is None and not stats:
        raise FileNotFoundError(f"{output_uri} holds no _run.json and no committed shard")
    plan = _plan_sample(stats, sample_size, seed)
    scan = _scan_parquet(fs, root, stats, plan)
    _read_thumbnails(fs, root, scan.samples)
    errors, error_total = _read_errors(fs, root, max_errors)

    timings = [scan.timings[c] for c in STAGE_SECONDS if scan.timings[c].rows]
    scores = np.concatenate(scan.scores) if scan.scores else np.zeros(0, dtype=np.float32)
    score = {"count": int(scores.size)}
    if scores.size:
        score.update(mean=float(scores.mean()), min=float(scores.min()), max=float(scores.max()))
    samples = sorted(scan.samples.values(), key=lambda s: (s.shard, s.key))
    totals = {
        "shards": len(stats),
        "images": sum(s.get("successes", 0) for s in stats.values()),
        "errors": sum(s.get("failures", 0) for s in stats.values()),
        "filtered": sum(s.get("filtered", 0) for s in stats.values()),
    }

    def markup(svg: str | None) -> Markup | None:
        return Markup(svg) if svg else None  # noqa: S704 - SVG that matplotlib wrote (its text XML-escaped)

    return _render(
        output=output_uri,
        run=run,
        counts=_counts(run, stats),
        totals=totals,
        samples=samples,
        seed=seed,
        thumbnail_px=THUMBNAIL_PX,
        prompt_chars=_PROMPT_CHARS,
        timings=timings,
        throughput_svg=markup(_throughput_chart(timings)),
        write=_write_times(stats),
        shard_time_svg=markup(_shard_time_chart(stats)),
        score=score,
        score_svg=markup(_score_chart(scores)),
        score_column=SCORE_COLUMN,
        errors=errors,
        error_total=error_total,
    )


def build_report(
    output_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    sample_size: int = 48,
    seed: int = 0,
    max_errors: int = MAX_ERRORS,
) -> str:
    """Write ``report.html`` into a pixelmill output and return its URI.

    Args:
        output_uri: the output folder (local path or ``s3://...``) of a run.
        storage_options: fsspec options for ``output_uri`` (as in the job spec).
        sample_size: images on the contact sheet (fewer when the output has fewer).
        seed: picks the contact sheet's sample; the same seed gives the same report.
        max_errors: error records listed.

    Raises:
        FileNotFoundError: ``output_uri`` is not a pixelmill output.
    """
    from pipelines.sink import TMP_DIR

    html = render_report(output_uri, storage_options, sample_size=sample_size, seed=seed, max_errors=max_errors)
    fs, root = filesystem(output_uri, storage_options)
    staging = join(fs, root, TMP_DIR)
    path = join(fs, root, REPORT_NAME)
    with write_once(fs, path, staging_dir=staging) as f:
        f.write(html.encode("utf-8"))
    # Local disk stages in <root>/_tmp; a running job's temporaries live in _tmp/<run id>, so an empty _tmp is ours.
    if is_local(fs) and fs.exists(staging) and not fs.ls(staging, detail=False):
        fs.rmdir(staging)
    if "://" in output_uri:
        return output_uri.rstrip("/") + "/" + REPORT_NAME
    return path


def report_main(output_uri: str, *, sample_size: int = 48, seed: int = 0) -> int:
    """``pixelmill report OUT``: write ``OUT/report.html``; return the exit code (0, or 2 when OUT is no output)."""
    try:
        uri = build_report(output_uri, sample_size=sample_size, seed=seed)
    except (FileNotFoundError, PermissionError) as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the user needs one clear line and an exit code
        print(f"pixelmill: the report failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"pixelmill: report written to {uri}")
    return 0
