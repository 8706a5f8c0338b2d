"""Images/s of pixelmill's own generate pool on one GPU, without Ray, against the bare fast-path loop.

Usage (repo root; CUDA torch + diffusers + transformers + pyarrow; no Ray, no model hub):
    python bench/gpu_stage.py [--rows 2048] [--batch 16] [--configs vae:jpg,tiny:jpg,tiny:jpg:task,vae:png]
                              [--bench-json $OUT/gpu_bench.json] [--budget-s 240]
    python bench/gpu_stage.py --smoke      # CPU, tiny model, 64x64, 16 rows: checks the script runs

The SD-Turbo-sized random-weight pipeline of ``bench/gpu_sd_turbo.py`` is saved with
``save_pretrained`` (in its weights dtype) and loaded back by the stages' own loading code
(``ModelSpec(uri=<folder>)``).  The pool is the one a run's plan builds for the generate stage
(``pipelines.pools.placed_stages``: a ``FusedStage`` of ``EncodeStage`` + ``GenerateStage``, and
image encoding inside it with ``placement.encode_images: last_stage``), fed the rows the plan
makes (``prepare_rows`` -> ``fan_out`` -> ``pack`` on a pyarrow table, then Ray's numpy batches
of ``stages.generate.batch_size`` rows).  512x512, 1 step, guidance 0.

Each config ``VAE:FORMAT[:PLACEMENT]`` runs ``--rows`` rows after one warm-up batch:

    VAE        vae: the pipeline's VAE (the bench's variant b); tiny: a tiny VAE decoder (variant c)
    FORMAT     jpg or png (what ``output.image_format`` sets)
    PLACEMENT  last_stage (default here: image encoding in the GPU actor) or task (the run's
               default: encoding in CPU tasks beside it, here a pool of ``--encode-threads`` threads)

The bare figure is the bench's loop (``gpu_sd_turbo.fast_run``: text encoding, the pipeline,
uint8 on the host) at the same batch, measured in this process on the builder's pipeline;
``--bench-json`` adds the figure of a ``gpu_sd_turbo.py`` run (its sweep at the same batch).
Per-GPU efficiency = stage images/s / bare images/s.  The stage's busy seconds come from its
``<stage>_s`` columns (batch seconds / rows, summed over rows).
Writes JSON to ``--out`` (default ``$OUT/gpu_stage.json`` when ``$OUT`` is set, else
``bench/results/``) after every config, and prints a table.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # --budget-s counts from here, the heavy imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import Future, ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, package not installed

from actors.generate import GenerateStage  # noqa: E402
from bench.gpu_sd_turbo import build_pipeline, fast_run, prompts, save_tiny_vae  # noqa: E402
from models.fastpaths import FastPaths, apply_fast_paths, weights_dtype  # noqa: E402
from pipelines import schema  # noqa: E402
from pipelines.fanout import fan_out, fans_out, variations_of  # noqa: E402
from pipelines.images import ImageEncodeStage, encode_images  # noqa: E402
from pipelines.passthrough import pack  # noqa: E402
from pipelines.pools import image_encoding_kwargs, placed_stages, prepare_kwargs  # noqa: E402
from pipelines.rows import prepare_rows  # noqa: E402
from pipelines.spec import JobSpec, load_spec  # noqa: E402

TIMED_STAGES = (schema.ENCODE, schema.GENERATE, schema.IMAGE_ENCODE)


def job_spec(model_dir: str, *, tiny_vae: str | None, batch: int, size: int, image_format: str,
             encode_images_at: str, gpu: bool) -> JobSpec:
    """The job a GPU user would run on this model: generate batches of ``batch`` rows, one forward pass each."""
    stage = {"batch_size": batch, "micro_batch_size": batch, "num_gpus": 1 if gpu else 0}
    return load_spec(raw={
        "input": {"uri": "unused.parquet"},
        "output": {"uri": "unused-out", "image_format": image_format, "report": False},
        "model": {"uri": model_dir, "performance": {"tiny_vae": tiny_vae}},
        "defaults": {"width": size, "height": size, "steps": 1, "guidance": 0.0},
        "stages": {"encode": {"batch_size": batch, "micro_batch_size": batch}, "generate": stage},
        "placement": {"encode_images": encode_images_at},
        "score": None,
    })


def generate_pool(spec: JobSpec) -> Any:
    """The generate pool's callable, built as a Ray actor builds it (``pipelines.pools.placed_stages``)."""
    pool_class, kwargs, _resources = placed_stages(spec)[-1]
    return pool_class(**kwargs)


def plan_rows(spec: JobSpec, count: int) -> pa.Table:
    """``count`` rows as they reach the model pools: read columns -> canonical rows -> fan-out -> packed."""
    table = pa.table({
        "id": [f"row-{i:06d}" for i in range(count)],
        "prompt": prompts(count),
        schema.SOURCE: ["bench://gpu_stage"] * count,
        schema.SOURCE_ROW: list(range(count)),
    })
    rows = prepare_rows(table, **prepare_kwargs(spec))
    rows = fan_out(rows, enabled=fans_out(spec, table.column_names), variations=variations_of(spec))
    return pack(rows, keep=())  # keep: a style stage's columns (plan.style_columns); this job has none


def numpy_batches(rows: pa.Table, batch: int) -> list[dict[str, np.ndarray]]:
    """Slices of ``batch`` rows as ``map_batches`` hands them to an actor: a dict of numpy columns."""
    return [
        {name: part.column(name).to_numpy() for name in part.column_names}
        for part in (rows.slice(lo, batch) for lo in range(0, rows.num_rows, batch))
    ]


def run_pool(pool: Any, batches: list[dict[str, np.ndarray]], *, encode_kwargs: dict[str, Any] | None,
             threads: int, cap_s: float) -> dict[str, Any]:
    """Run the pool on every batch after the first (a warm-up), timed; encoding in threads when ``encode_kwargs``.

    Stops early (``capped``) once ``cap_s`` seconds have passed, so a slow config keeps inside the budget.

    Returns:
        rows, wall seconds, images/s, busy seconds per stage (``<stage>_s`` summed over rows) and status counts.
    """
    pool(dict(batches[0]))  # warm-up: first kernels, allocator, cuDNN choices
    done: list[dict[str, np.ndarray]] = []
    with ThreadPoolExecutor(max(1, threads)) as encoders:
        futures: list[Future] = []
        begin = time.perf_counter()
        for batch in batches[1:]:
            if time.perf_counter() - begin > cap_s:
                break
            out = pool(dict(batch))
            if encode_kwargs is None:
                done.append(out)
            else:  # what Ray's CPU tasks do beside the actor (placement.encode_images: task)
                futures.append(encoders.submit(encode_images, out, **encode_kwargs))
        done += [future.result() for future in futures]
        wall = time.perf_counter() - begin
    rows = sum(len(batch[schema.STATUS]) for batch in done)
    busy = {stage.name: float(sum(np.sum(batch[stage.seconds]) for batch in done if stage.seconds in batch))
            for stage in TIMED_STAGES}
    statuses: dict[str, int] = {}
    for batch in done:
        for status in batch[schema.STATUS]:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    offered = sum(len(batch[schema.STATUS]) for batch in batches[1:])
    return {"rows": rows, "capped": rows < offered, "wall_s": round(wall, 3), "images_per_s": rows / wall,
            "busy_s": {name: round(value, 3) for name, value in busy.items()},
            "busy_fraction": {name: round(value / wall, 4) for name, value in busy.items()}, "statuses": statuses}


def bare_rate(pipe: Any, fast: FastPaths, *, batch: int, size: int, device: torch.device, min_s: float) -> float:
    """Images/s of the bench's fast-path loop (``gpu_sd_turbo.fast_run``) at ``batch``, after two warm-up batches."""
    apply_fast_paths(pipe, fast, device)
    run = fast_run(pipe, batch, size=size, device=device, pinned=fast.pinned_transfer)
    with torch.no_grad():
        run()
        run()
        count, begin = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - begin < min_s:
            run()
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return count * batch / (time.perf_counter() - begin)


def bench_figure(path: str | None, variant: str, batch: int) -> float | None:
    """The images/s a ``gpu_sd_turbo.py`` JSON recorded for ``variant`` (b or c) at ``batch``, if any."""
    if not path or not os.path.exists(path):
        return None
    sweeps = json.loads(Path(path).read_text()).get("sweeps", {})
    return sweeps.get(variant, {}).get(str(batch))


class Results:
    """The JSON being built, saved after every config; a watchdog saves it and exits when the budget runs out."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.data: dict[str, Any] = {
            "smoke": args.smoke, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "size": args.size, "steps": 1, "guidance": 0.0, "batch": args.batch,
            "rows": args.rows, "bare": {}, "configs": {}, "skipped": {}, "finished": False,
        }
        self.lock = threading.Lock()

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - STARTED)

    def save(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.perf_counter() - STARTED, 1)
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.data, indent=2, default=str))

    def out_of_time(self) -> None:
        self.data["skipped"]["watchdog"] = f"stopped at {time.perf_counter() - STARTED:.0f}s"
        self.save()
        print_table(self.data)
        print(f"out of time; partial JSON: {self.args.out}", flush=True)
        os._exit(3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every config; return the results (also written to ``--out``)."""
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --smoke for the CPU check")
    if args.smoke:
        torch.set_num_threads(1)
    results = Results(args, device)
    watchdog = threading.Timer(args.budget_s + args.grace_s, results.out_of_time)
    watchdog.daemon = True
    watchdog.start()
    folder = Path(tempfile.mkdtemp(prefix="pm-gpu-stage-", dir=args.model_root))
    tiny = measure_bare(args, device, folder, results)
    pools: dict[str, Any] = {}
    for config in args.configs:
        if results.left() < args.config_reserve_s:
            results.data["skipped"][config] = f"{results.left():.0f}s of budget left"
            print(f"skipped {config}: {results.data['skipped'][config]}", flush=True)
            continue
        measured = run_config(args, config, model=str(folder / "model"), tiny=tiny, device=device, pools=pools)
        measured["efficiency"] = measured["images_per_s"] / results.data["bare"][measured["vae"]]["images_per_s"]
        from_json = results.data["bare"][measured["vae"]]["bench_json"]
        measured["efficiency_vs_bench_json"] = measured["images_per_s"] / from_json if from_json else None
        results.data["configs"][config] = measured
        results.save()
        print(f"{config:<22} {measured['images_per_s']:9.2f} img/s  efficiency {measured['efficiency']:.3f}  "
              f"busy {measured['busy_fraction']}", flush=True)
    results.data["finished"] = True
    results.save()
    watchdog.cancel()
    print_table(results.data)
    print(f"done in {time.perf_counter() - STARTED:.0f}s; JSON: {args.out}", flush=True)
    return results.data


def measure_bare(args: argparse.Namespace, device: torch.device, folder: Path, results: Results) -> str:
    """Build the pipeline, save it (and a tiny VAE) under ``folder``, time the bare loop of each VAE in the configs.

    Returns:
        the tiny VAE's folder.
    """
    pipe = build_pipeline(smoke=args.smoke, device=device)
    pipe.to(getattr(torch, weights_dtype(FastPaths(), device)))  # saved as the stage loads it: bf16 on CUDA
    pipe.save_pretrained(str(folder / "model"))
    tiny = save_tiny_vae(str(folder / "tiny"), smoke=args.smoke)
    print(f"built and saved the pipeline in {time.perf_counter() - STARTED:.1f}s", flush=True)
    for vae in dict.fromkeys(config.split(":")[0] for config in args.configs):
        fast, variant = (FastPaths(), "b") if vae == "vae" else (FastPaths(tiny_vae=tiny), "c")
        rate = bare_rate(pipe, fast, batch=args.batch, size=args.size, device=device, min_s=args.bare_s)
        results.data["bare"][vae] = {"variant": variant, "images_per_s": rate,
                                     "bench_json": bench_figure(args.bench_json, variant, args.batch)}
        print(f"bare ({variant}, {vae}) batch {args.batch}: {rate:.2f} img/s", flush=True)
    return tiny


def run_config(args: argparse.Namespace, config: str, *, model: str, tiny: str, device: torch.device,
               pools: dict[str, Any]) -> dict[str, Any]:
    """Run one ``VAE:FORMAT[:PLACEMENT]`` config on ``--rows`` rows; ``pools`` keeps the last pool loaded.

    Returns:
        :func:`run_pool`'s figures, with the config's parts and the generator's fp32 decode retries.
    """
    vae, image_format, *placement = config.split(":")
    encode_at = placement[0] if placement else "last_stage"
    spec = job_spec(model, tiny_vae=tiny if vae == "tiny" else None, batch=args.batch, size=args.size,
                    image_format=image_format, encode_images_at=encode_at, gpu=device.type == "cuda")
    key = f"{vae}:{encode_at}"
    if key not in pools:  # one load per (VAE, placement); the image format is only a step's argument
        pools.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        begin = time.perf_counter()
        pools[key] = generate_pool(spec)
        print(f"loaded the {key} pool in {time.perf_counter() - begin:.1f}s", flush=True)
    pool = pools[key]
    if encode_at == "last_stage":  # the step encode_images built, told this config's format
        encoder = pool.steps[-1]
        assert isinstance(encoder, ImageEncodeStage), pool.steps
        encoder.image_format = image_format
    batches = numpy_batches(plan_rows(spec, args.rows + args.batch), args.batch)
    measured = run_pool(pool, batches, threads=args.encode_threads, cap_s=args.config_cap_s,
                        encode_kwargs=image_encoding_kwargs(spec) if encode_at == "task" else None)
    generate = next(step for step in pool.steps if isinstance(step, GenerateStage))
    return {"vae": vae, "image_format": image_format, "encode_images": encode_at, **measured,
            # the diffusers backend's count of micro-batches decoded again in float32 (NaN/inf): 0 expected
            "fp32_decode_retries": getattr(generate.generator, "fp32_decode_retries", None)}


def print_table(data: dict[str, Any]) -> None:
    """Each config against its bare figure, and where the stage's busy time went."""
    print(f"\n{data['device']}, {data['size']}x{data['size']}, 1 step, guidance 0, batch {data['batch']}, "
          f"{data['rows']} rows; efficiency = stage / bare (same process)")
    print(f"{'config':<22}{'img/s':>9}{'bare':>9}{'eff.':>7}{'vs json':>9}"
          f"{'encode':>8}{'generate':>9}{'img enc':>8}  (busy fraction of wall)")
    for config, row in data["configs"].items():
        bare = data["bare"][config.split(":")[0]]["images_per_s"]
        vs_json = row["efficiency_vs_bench_json"]
        share = row["busy_fraction"]
        print(f"{config:<22}{row['images_per_s']:>9.2f}{bare:>9.2f}{row['efficiency']:>7.3f}"
              f"{'-' if vs_json is None else f'{vs_json:.3f}':>9}{share['encode']:>8.3f}{share['generate']:>9.3f}"
              f"{share['image_encode']:>8.3f}")
    for what, reason in data["skipped"].items():
        print(f"skipped {what}: {reason}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--smoke`` shrinks every size so the run takes seconds on CPU."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 64x64, 16 rows")
    parser.add_argument("--rows", type=int, default=2048, help="timed rows per config (after one warm-up batch)")
    parser.add_argument("--batch", type=int, default=16, help="stages.generate.batch_size (= micro_batch_size)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--configs", default="vae:jpg,tiny:jpg,tiny:jpg:task,vae:png",
                        help="comma-separated VAE:FORMAT[:PLACEMENT] (vae|tiny, jpg|png|webp, last_stage|task)")
    parser.add_argument("--encode-threads", type=int, default=8, help="image-encoding threads for :task configs")
    parser.add_argument("--bench-json", default=None, help="a gpu_sd_turbo.py JSON: its sweep at --batch too")
    parser.add_argument("--bare-s", type=float, default=8.0, help="timed seconds of each bare loop, at least")
    parser.add_argument("--budget-s", type=float, default=240.0, help="whole run, start to JSON")
    parser.add_argument("--grace-s", type=float, default=20.0, help="watchdog margin past the budget")
    parser.add_argument("--config-cap-s", type=float, default=60.0, help="a config's timed loop stops after this")
    parser.add_argument("--config-reserve-s", type=float, default=45.0, help="budget needed to start a config")
    parser.add_argument("--model-root", default=None, help="folder for the saved model (default: the temp dir)")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_stage.json or bench/results/)")
    args = parser.parse_args(argv)
    args.configs = [config for config in args.configs.split(",") if config]
    if args.smoke:
        # batch 2: a point of gpu_sd_turbo.py --smoke's sweep (1,2), so --bench-json finds its figure
        args.size, args.batch, args.rows, args.bare_s, args.config_reserve_s = 64, 2, 16, 0.0, 0.0
    if args.out is None:
        name = "gpu_stage_smoke.json" if args.smoke else "gpu_stage.json"
        args.out = os.path.join(os.environ.get("OUT") or os.path.join("bench", "results"), name)
    return args


if __name__ == "__main__":
    main()
