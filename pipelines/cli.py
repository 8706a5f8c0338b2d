"""The ``pixelmill`` command: ``validate`` and ``run`` a job spec."""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.spec import SpecError, load_spec

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelmill", description="Turn prompt tables into image datasets on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("validate", "check a job spec and exit"), ("run", "run a job spec")):
        command = commands.add_parser(name, help=text)
        command.add_argument("spec", help="path to the job YAML")
        command.add_argument("--input", dest="input_uri", help="override input.uri")
        command.add_argument("--output", dest="output_uri", help="override output.uri")
        command.add_argument("--limit", type=int, help="process only the first N input rows")
        command.add_argument(
            "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
            help="override any spec key, e.g. --set stages.generate.batch_size=16 (repeatable)",
        )
    run = commands.choices["run"]
    run.add_argument(
        "--mode", choices=("resume", "overwrite", "append"), default="resume",
        help="resume: finish what the output lacks (default); overwrite: clear it first; "
        "append: add a new batch after the existing shards",
    )
    run.add_argument(
        "--min-success-rate", type=float, default=0.99, metavar="RATE",
        help="exit 1 (after writing everything) when images / rows processed falls below this (default 0.99)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pixelmill`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(
            args.spec, sets=args.sets, input_uri=args.input_uri, output_uri=args.output_uri, limit=args.limit
        )
    except SpecError as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"pixelmill: {args.spec} is valid (input {spec.input.uri} -> output {spec.output.uri})")
        return 0

    from pipelines.runner import run_job

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run_job(spec, mode=args.mode)
    except (FileNotFoundError, ValueError) as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return 1
    print(summary.line())
    if summary.rows and summary.images / summary.rows < args.min_success_rate:
        print(
            f"pixelmill: success rate {summary.images / summary.rows:.3f} is below --min-success-rate "
            f"{args.min_success_rate}; error rows are in the shards' Parquet (status=error)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
