"""The ``pixelmill`` command: ``validate`` and ``run`` a job spec; ``retry-errors`` and ``report`` of an output;
``submit``/``status``/``logs``/``stop`` a job on a Ray cluster; ``cluster render`` its Kubernetes manifests.

Exit codes (for schedulers):
    0  the run finished, balanced, at or above ``--min-success-rate``;
    1  the run finished but fell below ``--min-success-rate`` or did not
       balance (everything it could do is written), or it failed mid-run;
    2  nothing was done: bad spec, missing input or model, unreachable storage, missing output bucket;
    3  the watchdog stopped a run that made no progress (rerun to resume);
    4  the run's ``budget`` was spent: what it began is committed, the rest was deferred
       (balanced; rerun, with a larger budget or none, to resume).
``submit --wait`` exits with the cluster run's code; the job commands exit 2
when the job server cannot be reached or refuses the request (token).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.spec import SpecError, load_spec

__all__ = ["main"]

EXIT_OK, EXIT_RUN_FAILED, EXIT_NOTHING_DONE, EXIT_STALLED, EXIT_BUDGET = 0, 1, 2, 3, 4


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


def _add_address(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--address", metavar="URL",
        help="the Ray job server (dashboard), e.g. http://head:8265 "
        "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )


def _add_job_commands(commands: Any) -> None:
    submit = commands.add_parser("submit", help="submit a job spec to a Ray cluster (Ray Job Submission API)")
    submit.add_argument("spec", help="path to the job YAML")
    submit.add_argument("--output", dest="output_uri", help="override output.uri")
    _add_overrides(submit)
    _add_address(submit)
    submit.add_argument("--mode", choices=("resume", "overwrite", "append"), default="resume", help="as for run")
    _add_min_success_rate(submit)
    submit.add_argument(
        "--env-var", dest="env_vars", action="append", default=[], metavar="NAME",
        help="forward this variable's value from here to the job, by name (repeatable; "
        "the AWS_* storage variables and HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT are always forwarded when set)",
    )
    submit.add_argument("--submission-id", help="a chosen job id (a second submission with it is refused)")
    submit.add_argument("--wait", action="store_true", help="follow the logs and exit with the run's exit code")
    for name, text in (("status", "show a submitted job's status"), ("logs", "print a job's logs"),
                       ("stop", "stop a submitted job")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id", metavar="JOB_ID", help="the id printed by submit")
        _add_address(command)
    commands.choices["logs"].add_argument("--follow", action="store_true", help="stream until the job ends")
    cluster = commands.add_parser("cluster", help="Kubernetes manifests for a job spec")
    render = cluster.add_subparsers(dest="cluster_command", required=True).add_parser(
        "render", help="write the KubeRay RayCluster/RayJob (and with --schedule a CronJob) for a spec"
    )
    render.add_argument("spec", help="path to the job YAML")
    render.add_argument("--output", dest="output_uri", help="override output.uri")
    _add_overrides(render)
    render.add_argument("--schedule", metavar="CRON", help='also write a nightly CronJob, e.g. "0 2 * * *" (UTC)')
    render.add_argument("--image", help="the pixelmill image built from cluster/Dockerfile")
    render.add_argument("--gpus-per-pod", type=int, help="GPUs of one GPU worker pod (default: the largest stage's)")
    render.add_argument("--out", default="out/cluster", metavar="DIR", help="where to write (default out/cluster)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelmill", description="Turn prompt tables into image datasets on Ray.",
        epilog="exit codes: 0 done; 1 failed, unbalanced or below --min-success-rate; 2 nothing done; "
        "3 stalled (rerun to resume); 4 budget spent, the rest deferred (rerun to resume)",
    )
    parser.add_argument("--version", action="version", version=f"pixelmill {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("validate", "check a job spec and its model URIs and exit"), ("run", "run a job spec")):
        command = commands.add_parser(name, help=text)
        command.add_argument("spec", nargs="?", help="path to the job YAML (optional with --input and --output: "
                             "every other setting at its default)")
        command.add_argument("--output", dest="output_uri", help="override output.uri")
        _add_overrides(command)
    run = commands.choices["run"]
    run.add_argument("--ray-progress", action="store_true",
                     help="also show Ray Data's own per-operator progress bars (same as --set ray.progress_bars=true)")
    run.add_argument(
        "--mode", choices=("resume", "overwrite", "append"), default="resume",
        help="resume: finish what the output lacks (default); overwrite: clear it first; "
        "append: add a new batch after the existing shards",
    )
    run.add_argument(
        "--allow-spec-change", action="store_true",
        help="resume even though the settings that change images differ from the output's latest run "
        "(the output then mixes both; each run's record keeps its own settings)",
    )
    run.add_argument(
        "--force", action="store_true",
        help="with --mode overwrite: go on even though the output holds files pixelmill did not write "
        "(they are left in place; pixelmill never deletes a file it did not write)",
    )
    _add_min_success_rate(run)
    retry = commands.add_parser("retry-errors", help="process the rows of an output's errors table again")
    retry.add_argument("output_uri", metavar="OUT", help="the output of an earlier run")
    retry.add_argument("--spec", help="job YAML to use (default: the spec recorded in OUT/_run.json)")
    _add_overrides(retry)
    _add_min_success_rate(retry)
    report = commands.add_parser("report", help="write OUT/report.html, a self-contained report of the output")
    report.add_argument("output_uri", metavar="OUT", help="the output of a run")
    _add_job_commands(commands)
    return parser


def _version() -> str:
    """Return the installed pixelmill version (package metadata), or ``unknown`` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pixelmill")
    except PackageNotFoundError:
        return "unknown"


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
    sets = [*args.sets, *(["ray.progress_bars=true"] if getattr(args, "ray_progress", False) else [])]
    raw = None
    if args.spec is None:  # no YAML: flags alone, as img2dataset runs
        if not (args.input_uri and args.output_uri):
            raise SpecError(f"{args.command} needs a job YAML, or --input and --output (then every other "
                            "setting is its default)")
        raw = {}
    return load_spec(args.spec, raw=raw, sets=sets, input_uri=args.input_uri, output_uri=args.output_uri,
                     limit=args.limit)


def _submit(args: argparse.Namespace, spec: Any) -> int:
    """``pixelmill submit``: print the job id (alone on stdout); with ``--wait`` follow it to the end."""
    from pipelines import jobs

    address = args.address or jobs.default_address()
    if "://" not in spec.output.uri or spec.output.uri.startswith("file://"):
        print(f"pixelmill: output {spec.output.uri} is a path on the cluster's nodes; "
              "use object storage (s3://...) on a multi-node cluster", file=sys.stderr)
    job_id = None
    try:
        env_vars, missing = jobs.forwarded_env(args.env_vars)
        for name in missing:
            print(f"pixelmill: --env-var {name} is not set here; not forwarded", file=sys.stderr)
        if env_vars:  # names only: values never reach the terminal or a log
            print(f"pixelmill: forwarding {', '.join(sorted(env_vars))} to the job", file=sys.stderr)
        job_id = jobs.submit_job(
            spec, address=address, env_vars=env_vars, mode=args.mode,
            min_success_rate=args.min_success_rate, submission_id=args.submission_id,
        )
        print(job_id, flush=True)
        print(f"pixelmill: submitted to {address}; `pixelmill logs {job_id} --follow` streams it", file=sys.stderr)
        if not args.wait:
            return EXIT_OK
        state = jobs.follow_logs(job_id, address=address)
    except jobs.JobsError as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE if job_id is None else EXIT_RUN_FAILED
    print(f"pixelmill: {state.line()}", file=sys.stderr)
    return jobs.exit_code(state)


def _job_command(args: argparse.Namespace) -> int:
    """``pixelmill status|logs|stop JOB_ID``."""
    from pipelines import jobs

    address = args.address or jobs.default_address()
    try:
        if args.command == "status":
            print(jobs.job_state(args.job_id, address=address).line())
        elif args.command == "logs" and args.follow:
            jobs.follow_logs(args.job_id, address=address)
        elif args.command == "logs":
            sys.stdout.write(jobs.job_logs(args.job_id, address=address))
        else:
            stopped = jobs.stop_job(args.job_id, address=address)
            print(f"pixelmill: {'stop requested for' if stopped else 'not running:'} {args.job_id}")
    except jobs.JobsError as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    return EXIT_OK


def _render(args: argparse.Namespace, spec: Any) -> int:
    """``pixelmill cluster render``: write the manifests and name them."""
    from pipelines.manifests import render_files
    from pipelines.storage import redact

    if redact(spec.storage_options) != spec.storage_options:
        print("pixelmill: storage_options holds secret-looking values, which the manifests carry in a ConfigMap; "
              "put credentials in the pixelmill-storage Secret instead", file=sys.stderr)
    for path in render_files(
        spec, name=Path(args.spec).stem, out_dir=Path(args.out), image=args.image,
        schedule=args.schedule, gpus_per_pod=args.gpus_per_pod,
    ):
        print(f"pixelmill: wrote {path}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pixelmill`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        from pipelines.report import report_main

        return report_main(args.output_uri)
    if args.command in ("status", "logs", "stop"):
        return _job_command(args)
    try:
        spec = _load(args)
    except (SpecError, OSError) as error:
        print(f"pixelmill: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    if args.command == "validate":
        from pipelines.preflight import check_models

        try:
            check_models(spec)
        except OSError as error:
            print(f"pixelmill: {error}", file=sys.stderr)
            return EXIT_NOTHING_DONE
        source = args.spec or "the job from --input/--output"
        print(f"pixelmill: {source} is valid (input {spec.input.name} -> output {spec.output.uri})")
        return EXIT_OK
    if args.command == "submit":
        return _submit(args, spec)
    if args.command == "cluster":
        return _render(args, spec)

    from pipelines.diversity import summary_lines
    from pipelines.retry import retry_errors
    from pipelines.runner import PreflightError, RunStalled, first_line, root_cause, run_job

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "retry-errors":
            summary = retry_errors(spec)
        else:
            summary = run_job(spec, mode=args.mode, allow_spec_change=args.allow_spec_change, force=args.force)
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
    if summary.cost:
        from pipelines.cost import cost_line

        print(cost_line(summary.cost))
    for line in summary_lines(summary.diversity):
        print(line)
    for warning in summary.warnings:
        print(f"pixelmill: warning: {warning}", file=sys.stderr)
    if not summary.balanced:
        print("pixelmill: the run does not balance; see _run.json", file=sys.stderr)
        return EXIT_RUN_FAILED
    if summary.budget_spent:
        print(f"pixelmill: the budget is spent; {summary.deferred} rows were deferred: rerun (with a larger "
              f"budget, or none) to resume {summary.output}", file=sys.stderr)
        return EXIT_BUDGET
    if summary.success_rate < args.min_success_rate:
        print(
            f"pixelmill: success rate {summary.success_rate:.3f} is below --min-success-rate "
            f"{args.min_success_rate}; the failed rows are in {summary.errors_table} "
            f"(fix the cause, then `pixelmill retry-errors {summary.output}`)",
            file=sys.stderr,
        )
        for line in summary.reason_lines():
            print(f"pixelmill:   {line}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
