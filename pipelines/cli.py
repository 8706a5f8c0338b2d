"""The ``pixelmill`` command: ``validate`` and ``run`` a job spec; ``retry-errors`` and ``report`` of an output.

Exit codes (for schedulers):
    0  the run finished, balanced, at or above ``--min-success-rate``;
    1  the run finished but fell below ``--min-success-rate`` or did not
       balance (everything it could do is written), or it failed mid-run;
    2  nothing was done: bad spec, missing input, unreachable output;
    3  the watchdog stopped a run that made no progress (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pipelines.spec import SpecError, load_spec

__all__ = ["main"]

EXIT_OK, EXIT_RUN_FAILED, EXIT_NOTHING_DONE, EXIT_STALLED = 0, 1, 2, 3


def _add_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument("--input", dest="input_uri", help="override input.uri")
    command.add_argument("--limit", type=int, help="process only the first N input rows")
    command.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override any spec key, e.g. --set stages.generate.batch_size=16 (repeatable)",
    )


def _add_min_success_rate(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--min-success-rate", type=float, default=0.99, metavar="RATE",
        help="exit 1 (after writing everything) when images / (images + errors) falls below this (default 0.99)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelmill", description="Turn prompt tables into image datasets on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("validate", "check a job spec and exit"), ("run", "run a job spec")):
        command = commands.add_parser(name, help=text)
        command.add_argument("spec", help="path to the job YAML")
        command.add_argument("--output", dest="output_uri", help="override output.uri")
        _add_overrides(command)
    run = commands.choices["run"]
    run.add_argument(
        "--mode", choices=("resume", "overwrite", "append"), default="resume",
        help="resume: finish what the output lacks (default); overwrite: clear it first; "
        "append: add a new batch after the existing shards",
    )
    _add_min_success_rate(run)
    retry = commands.add_parser("retry-errors", help="process the rows of an output's errors table again")
    retry.add_argument("output_uri", metavar="OUT", help="the output of an earlier run")
    retry.add_argument("--spec", help="job YAML to use (default: the spec recorded in OUT/_run.json)")
    _add_overrides(retry)
    _add_min_success_rate(retry)
    report = commands.add_parser("report", help="write OUT/report.html, a self-contained report of the output")
    report.add_argument("output_uri", metavar="OUT", help="the output of a run")
    return parser


def _recorded_spec(output_uri: str) -> dict[str, Any]:
    """Return the spec recorded in ``OUT/_run.json``, without its redacted values."""
    from pipelines.storage import filesystem, join

    fs, root = filesystem(output_uri)
    path = join(fs, root, "_run.json")
    if not fs.exists(path):
        raise SpecError(f"{output_uri} has no _run.json; pass the job spec with --spec")
    raw = json.loads(fs.cat_file(path))["spec"]

    def without_redacted(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: without_redacted(v) for k, v in node.items() if v != "***"}
        return node

    return without_redacted(raw)


def _load(args: argparse.Namespace):
    if args.command == "retry-errors":
        raw = None if args.spec else _recorded_spec(args.output_uri)
        return load_spec(
            args.spec, raw=raw, sets=args.sets, input_uri=args.input_uri, output_uri=args.output_uri, limit=args.limit
        )
    return load_spec(args.spec, sets=args.sets, input_uri=args.input_uri, output_uri=args.output_uri, limit=args.limit)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pixelmill`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        from pipelines.report import report_main

        return report_main(args.output_uri)
    try:
        spec = _load(args)
    except (SpecError, OSError) as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if args.command == "validate":
        print(f"pixelmill: {args.spec} is valid (input {spec.input.uri} -> output {spec.output.uri})")
        return EXIT_OK

    from pipelines.runner import PreflightError, RunStalled, first_line, retry_errors, root_cause, run_job

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = retry_errors(spec) if args.command == "retry-errors" else run_job(spec, mode=args.mode)
    except PreflightError as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    except RunStalled as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_STALLED
    except Exception as error:  # noqa: BLE001 - the scheduler needs an exit code and one clear line
        cause = root_cause(error)
        print(f"pixelmill: the run failed: {type(cause).__name__}: {first_line(cause)}", file=sys.stderr)
        return EXIT_RUN_FAILED
    print(summary.line())
    print(f"pixelmill: {summary.equation}")
    if not summary.balanced:
        print("pixelmill: the run does not balance; see _run.json", file=sys.stderr)
        return EXIT_RUN_FAILED
    if summary.success_rate < args.min_success_rate:
        print(
            f"pixelmill: success rate {summary.success_rate:.3f} is below --min-success-rate "
            f"{args.min_success_rate}; the failed rows are in {summary.errors_table} "
            "(fix the cause, then `pixelmill retry-errors OUT`)",
            file=sys.stderr,
        )
        for reason, count in sorted(summary.errors_by_reason.items(), key=lambda item: -item[1])[:5]:
            print(f"pixelmill:   {count} x {reason}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
