"""A self-contained HTML report of a pixelmill output: ``OUT/report.html``.

``pipelines.report_data.gather`` reads only what a finished run leaves (the committed
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

Sections: a banner naming each damaged shard (a file its stats file lists is missing
or of another size; its rows are left out of the report, and the next resume redoes
them), the run header (from ``_run.json``: the accounting equation and whether it
balances), the run's cost per stage and its budget (``_run.json``'s ``cost``, ``budget``),
counts (images, errors by stage and by reason, filtered, skipped), a contact sheet of a
deterministic sample of images (``seed``), per-stage throughput from the per-row ``*_s``
columns, shard write times from the stats files, a histogram of ``clip_score`` (where the
output has it), the latest run's diversity figures (``pipelines.diversity``, from
``_run.json``), and the first error records.
"""

from __future__ import annotations

import io
import math
import re
import sys
from importlib import resources
from typing import Any

import numpy as np

from pipelines.layout import REPORT, OutputLayout, shard_name
from pipelines.report_data import MAX_ERRORS, SCORE_COLUMN, THUMBNAIL_PX, StageTiming, gather
from pipelines.storage import write_once

__all__ = ["build_report", "render_report", "report_main"]

_PROMPT_CHARS = 200
# Up to this many shards, the write-time chart has one bar per shard; above it, a histogram.
_BARS_PER_SHARD_LIMIT = 60


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
    rated = [(t.stage, rate) for t in timings if (rate := t.rows_per_s) is not None]
    if not rated:
        return None
    figure, axes = _figure(height=0.6 + 0.45 * len(rated))
    labels = [stage for stage, _ in rated]
    rates = [rate for _, rate in rated]
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
        # numeric positions with the names as tick labels: names like "00000" as categories make
        # matplotlib log "Using categorical units ..." for every chart
        positions = list(range(len(durations)))
        axes.bar(positions, [d for _, d in durations], color="#55a868")
        axes.set_xticks(positions, [shard_name(shard) for shard, _ in durations])
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


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _fmt_score(value: float | None) -> str:
    """Return a score with two decimals (``87.00`` beside ``93.27``): one format for every score shown."""
    if value is None:
        return "–"
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def _render(**context: Any) -> str:
    from jinja2 import Environment, StrictUndefined

    template = resources.files("pipelines").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False)
    return environment.from_string(template).render(fmt=_fmt, fmt_score=_fmt_score, **context)


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

    data = gather(OutputLayout(output_uri, storage_options), sample_size=sample_size, seed=seed, max_errors=max_errors)
    score: dict[str, Any] = {"count": int(data.scores.size)}
    if data.scores.size:
        score.update(mean=float(data.scores.mean()), min=float(data.scores.min()), max=float(data.scores.max()))

    def markup(svg: str | None) -> Markup | None:
        return Markup(svg) if svg else None  # noqa: S704 - SVG that matplotlib wrote (its text XML-escaped)

    return _render(
        output=output_uri,
        run=data.run,
        history=data.history,
        counts=data.counts,
        totals=data.totals,
        samples=data.samples,
        seed=seed,
        thumbnail_px=THUMBNAIL_PX,
        prompt_chars=_PROMPT_CHARS,
        timings=data.timings,
        throughput_svg=markup(_throughput_chart(data.timings)),
        write=data.write,
        shard_time_svg=markup(_shard_time_chart(data.stats)),
        score=score,
        score_svg=markup(_score_chart(data.scores)),
        score_column=SCORE_COLUMN,
        errors=data.errors,
        error_total=data.error_total,
        damaged=[(shard_name(shard), damage) for shard, damage in data.damaged.items()],
        diversity=data.diversity,
        scanned_shards=data.scanned_shards,
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
    html = render_report(output_uri, storage_options, sample_size=sample_size, seed=seed, max_errors=max_errors)
    layout = OutputLayout(output_uri, storage_options)
    staging = layout.staging_dir()
    with write_once(layout.fs, layout.report, staging_dir=staging) as f:
        f.write(html.encode("utf-8"))
    # Local disk stages in <root>/_tmp; a running job's temporaries live in _tmp/<run id>, so an empty _tmp is ours.
    if layout.is_local() and layout.fs.exists(staging) and not layout.fs.ls(staging, detail=False):
        layout.fs.rmdir(staging)
    if "://" in output_uri:
        return output_uri.rstrip("/") + "/" + REPORT
    return layout.report


def report_main(output_uri: str, *, sample_size: int = 48, seed: int = 0) -> int:
    """``pixelmill report OUT``: write ``OUT/report.html`` and return the exit code.

    Returns:
        0; 1 when the report failed, or was written but the output has damaged shards (each
        named on stderr); 2 when OUT is no output.
    """
    try:
        uri = build_report(output_uri, sample_size=sample_size, seed=seed)
    except (FileNotFoundError, PermissionError) as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the user needs one clear line and an exit code
        print(f"pixelmill: the report failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"pixelmill: report written to {uri}")
    damaged = OutputLayout(output_uri).check_shards().damaged
    for shard, damage in damaged.items():
        print(f"pixelmill: DAMAGED shard {shard_name(shard)}: {damage}", file=sys.stderr)
    if damaged:
        print(f"pixelmill: the output is damaged: {len(damaged)} shard(s) left out of the report; "
              "run the job again (resume) to redo their rows", file=sys.stderr)
        return 1
    return 0
