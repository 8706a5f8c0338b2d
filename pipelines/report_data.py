"""Gathering a report's facts from an output: stats, run record, a sample, timings, scores, errors.

Reads only what a finished run leaves, through ``pipelines.layout``: the whole committed
shards' stats (from the run indexes, ``pipelines.history``, and the stats files no index
covers; a damaged shard, ``OutputLayout.check_shards``, is only named), the Parquet of at
most ``SCAN_SHARDS`` shards (the sampled images' shards first, then a seeded choice; one
file and one batch at a time, needed columns only), the sampled images' tar members
(headers walked, other members skipped) and the first ``max_errors`` error records. So a
report of an output with 100,000 shards reads a few hundred files, not every shard.
``pipelines.report`` renders what this returns.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import random
import tarfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.layout import OutputLayout, shard_name

__all__ = ["ReportData", "STAGE_SECONDS", "Sample", "StageTiming", "gather"]

STAGE_SECONDS = schema.STAGE_SECONDS  # per-row seconds of each stage, in pipeline order
SCORE_COLUMN = schema.CLIP_SCORE
THUMBNAIL_PX = 128
MAX_ERRORS = 50
# A sample's members other than its image (the sink writes <key>.<image format>, .json, .txt).
_NOT_IMAGE_EXTENSIONS = ("json", "txt")
_BATCH_ROWS = 8192
_TAR_BLOCK_SIZE = 1 << 20
SCAN_SHARDS = 256  # the most shards whose Parquet the timings and score histogram are read from
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


@dataclass
class ReportData:
    """Everything the report shows, gathered from one output."""

    run: dict[str, Any] | None
    stats: dict[int, dict[str, Any]]
    counts: dict[str, Any]
    totals: dict[str, int]
    samples: list[Sample]
    timings: list[StageTiming]
    scores: np.ndarray
    write: dict[str, Any]
    errors: list[dict[str, Any]]
    error_total: int
    damaged: dict[int, str] = field(default_factory=dict)  # shard -> what is wrong; left out of everything else
    history: list[dict[str, Any]] = field(default_factory=list)  # every run's record (``_runs/``), oldest first
    # The latest run's diversity figures (``_run.json``, ``pipelines.diversity``); None when it has none.
    diversity: dict[str, Any] | None = None
    scanned_shards: int = 0  # the shards the timings and scores were read from (all when at most SCAN_SHARDS)


def gather(layout: OutputLayout, *, sample_size: int, seed: int, max_errors: int = MAX_ERRORS) -> ReportData:
    """Return the facts of the output at ``layout`` (see the module docstring).

    Raises:
        FileNotFoundError: the root does not exist, or holds neither ``_run.json`` nor a committed shard.
    """
    layout.refresh()  # listings cached by this process may predate the run's writes
    if not layout.exists() or not layout.fs.isdir(layout.root):
        raise FileNotFoundError(f"no pixelmill output at {layout.uri}")
    check = layout.check_shards()
    stats = check.stats
    run = layout.last_run()
    if run is None and not stats and not check.damaged:
        raise FileNotFoundError(f"{layout.uri} holds no _run.json and no committed shard")
    plan = _plan_sample(stats, sample_size, seed)
    scanned = _scanned_shards(list(stats), plan, seed)
    scan = _scan_parquet(layout, scanned, plan)
    _read_thumbnails(layout, scan.samples)
    errors, error_total = _read_errors(layout, stats, max_errors)
    return ReportData(
        history=layout.run_records(),
        run=run,
        stats=stats,
        counts=_counts(run, stats),
        totals={
            "shards": len(stats),
            "images": sum(s.get("successes", 0) for s in stats.values()),
            "errors": sum(s.get("failures", 0) for s in stats.values()),
            "filtered": sum(s.get("filtered", 0) for s in stats.values()),
        },
        samples=sorted(scan.samples.values(), key=lambda s: (s.shard, s.key)),
        timings=[scan.timings[c] for c in STAGE_SECONDS if scan.timings[c].rows],
        scores=np.concatenate(scan.scores) if scan.scores else np.zeros(0, dtype=np.float32),
        write=_write_times(stats),
        errors=errors,
        error_total=error_total,
        damaged=check.damaged,
        diversity=(run or {}).get("diversity"),
        scanned_shards=len(scanned),
    )


def _scanned_shards(shards: list[int], plan: dict[int, list[int]], seed: int) -> list[int]:
    """Return the shards whose Parquet the report reads, ascending: all of them up to ``SCAN_SHARDS``,
    else the sampled images' shards and a choice seeded by ``seed`` from the others, ``SCAN_SHARDS`` in all."""
    if len(shards) <= SCAN_SHARDS:
        return shards
    others = [shard for shard in shards if shard not in plan]
    extra = random.Random(seed).sample(others, max(0, min(len(others), SCAN_SHARDS - len(plan))))
    return sorted([*plan, *extra])


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


def _scan_parquet(layout: OutputLayout, shards: list[int], plan: dict[int, list[int]]) -> _Scan:
    """One pass over the shards' Parquet files, one file and one batch at a time, needed columns only."""
    scan = _Scan(timings={column: StageTiming(column) for column in STAGE_SECONDS})
    for shard in shards:
        fs, path = layout.fs, layout.shard_file("parquet", shard)
        if not fs.exists(path):
            logger.warning("pixelmill report: %s is missing", path)
            continue
        wanted = plan.get(shard, [])
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            columns = [c for c in (schema.STATUS, *STAGE_SECONDS, SCORE_COLUMN) if c in names]
            if wanted:
                columns += [c for c in (schema.KEY, schema.PROMPT, schema.STYLE) if c in names]
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
                if schema.STATUS in names:
                    ok = table.column(schema.STATUS).to_numpy(zero_copy_only=False) == schema.Status.OK.value
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
        key=str(value(schema.KEY)),
        prompt=str(value(schema.PROMPT) or ""),
        style=value(schema.STYLE),
        score=float(score) if score is not None and math.isfinite(score) else None,
    )


def _thumbnail(data: bytes, px: int = THUMBNAIL_PX) -> str:
    """Return a small JPEG of an encoded image as a ``data:`` URI."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (px * 2, px * 2))  # JPEG: decode at a reduced scale
        image: Image.Image = opened
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
        image.thumbnail((px, px))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=75, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _read_thumbnails(layout: OutputLayout, samples: dict[str, Sample]) -> None:
    """Fill in the thumbnails of the sampled images, reading only those members of each tar."""
    by_shard: dict[int, set[str]] = {}
    for sample in samples.values():
        by_shard.setdefault(sample.shard, set()).add(sample.key)
    for shard, keys in sorted(by_shard.items()):
        fs, path = layout.fs, layout.shard_file("tar", shard)
        if not fs.exists(path):
            logger.warning("pixelmill report: %s is missing", path)
            continue
        options = {} if layout.is_local() else {"block_size": _TAR_BLOCK_SIZE}
        missing = set(keys)
        with fs.open(path, "rb", **options) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:  # random-access mode: headers only, skipped members are never read
                if not member.isfile():
                    continue
                # webdataset's convention: the key is the name up to the first dot of its last part.
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key not in missing or ext.lower() in _NOT_IMAGE_EXTENSIONS:
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


def _read_errors(
    layout: OutputLayout, stats: dict[int, dict[str, Any]], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Return the first ``limit`` error records (shard order) of the shards of ``stats`` and their number.

    The number is the stats' ``failures`` (each shard's ``_errors/`` file holds that many records);
    only the files needed for the first ``limit`` records are opened.
    """
    total = sum(int(s.get("failures", 0)) for s in stats.values())
    wanted = {layout.shard_file("errors", shard) for shard, s in stats.items() if s.get("failures")}
    fs, files = layout.fs, [path for path in layout.files("errors") if path in wanted] if wanted and limit else []
    records: list[dict[str, Any]] = []
    for path in files:
        if len(records) >= limit:
            break
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            columns = [c for c in (schema.KEY, schema.ID, schema.STAGE, schema.ERROR) if c in names]
            if not columns:
                continue
            for batch in parquet.iter_batches(columns=columns, batch_size=min(_BATCH_ROWS, max(limit, 1))):
                records.extend(batch.to_pylist()[: limit - len(records)])
                if len(records) >= limit:
                    break
    return records, total


def _counts(run: dict[str, Any] | None, stats: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The run's counts from ``_run.json``, else the same totals from the stats files."""
    if run:
        by_stage = dict(run.get("errors_by_stage") or {})
        by_reason = dict(run.get("errors_by_reason") or {})
        counts = {key: run.get(key, 0) for key in ("input_rows", "images", "errors", "filtered", "skipped", "deferred")}
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
            "deferred": 0,
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
        "slowest": shard_name(slowest),
        "total": float(values.sum()),
    }


