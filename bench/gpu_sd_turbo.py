"""Images/s of an SD-Turbo-sized pipeline on one GPU: bare diffusers vs. pixelmill's fast paths.

Usage (repo root, a venv with CUDA torch + diffusers + transformers; no Ray, no model hub):
    python bench/gpu_sd_turbo.py [--out gpu_bench.json] [--budget-s 420] [--compile-mode default]
    python bench/gpu_sd_turbo.py --smoke      # CPU, tiny sizes, one iteration: checks the script runs
    python bench/gpu_sd_turbo.py --quick      # GPU, ~2 min: batches 8,16,32, no compile (bench/gpu_all.sh)

The pipeline is built here with SD-Turbo's architecture (SD 2.1 UNet, SD VAE, an
OpenCLIP-H-sized CLIP text encoder, the project's code-built tokenizer) and random
weights: timings do not depend on weight values. Each variant generates 512x512 images
from prompts (text encoding included) in 1 step at guidance 0:

    a  the bare diffusers loop: float32, batch 1, output_type="np", uint8 on the host
    b  models.fastpaths defaults (bf16, SDPA, channels_last, uint8 on the GPU, pinned copy),
       at the best batch of a sweep
    c  b + a tiny VAE decoder (AutoencoderTiny, taesd config) loaded by models.fastpaths
    d  c + torch.compile of the UNet and the VAE decoder

Model FLOP utilisation = images/s x FLOPs per image (counted once with
``torch.utils.flop_counter.FlopCounterMode``, per component) / ``--peak-tflops``.
Every variant runs warm-up iterations, then a timed loop closed by ``torch.cuda.synchronize()``.
The run keeps inside ``--budget-s``: sweeps stop and compile is skipped when time runs
short (printed and recorded under ``skipped``), and a watchdog writes what was measured
and exits if anything (a long compile) runs past the budget plus a margin.
Prints a table and writes JSON to ``--out`` (default ``$OUT/gpu_bench.json`` when ``$OUT``
is set, else ``bench/results/gpu_sd_turbo.json``), rewritten after every variant.
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
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypedDict, cast  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, package not installed

from models.fastpaths import FastPaths, apply_fast_paths, to_host_uint8, weights_dtype  # noqa: E402
from models.tiny_tokenizer import build_clip_tokenizer  # noqa: E402

# SD 2.1 / SD-Turbo UNet (865M parameters).
UNET_SD21 = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
# The SD VAE (84M parameters; the decoder is most of the pipeline's FLOPs at 512x512).
VAE_SD = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


class TextTower(TypedDict):
    """The ``CLIPTextConfig`` keyword arguments that set the text tower's size."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    projection_dim: int


class Timing(TypedDict):
    """One timed point: ``batch`` images per call, ``batches`` calls in ``seconds``."""

    batch: int
    batches: int
    seconds: float
    images_per_s: float


# OpenCLIP ViT-H/14's text tower, as SD 2.x / SD-Turbo ship it (23 of its 24 layers).
TEXT_OPENCLIP_H: TextTower = {
    "hidden_size": 1024,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "projection_dim": 1024,
}
# madebyollin/taesd (AutoencoderTiny's defaults, written out).
TAESD = {
    "encoder_block_out_channels": (64, 64, 64, 64),
    "decoder_block_out_channels": (64, 64, 64, 64),
    "num_encoder_blocks": (1, 3, 3, 3),
    "num_decoder_blocks": (3, 3, 3, 1),
    "latent_channels": 4,
    "upsampling_scaling_factor": 2,
}

# --smoke: same block types, tiny widths, 64x64 images (VAE factor 2, latent 32x32).
SMOKE_UNET = {
    **UNET_SD21,
    "sample_size": 32,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
}
SMOKE_VAE = {
    **VAE_SD,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 64,
}
SMOKE_TEXT: TextTower = {**TEXT_OPENCLIP_H, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "projection_dim": 32}
SMOKE_TAESD = {**TAESD, "encoder_block_out_channels": (16, 16), "decoder_block_out_channels": (16, 16),
               "num_encoder_blocks": (1, 1), "num_decoder_blocks": (1, 1)}

WORDS = "a red cat on blue beach photo of mountain at sunset with big old castle under stars".split()


def build_pipeline(*, smoke: bool, device: torch.device):
    """SD-Turbo's architecture with random weights, created on ``device`` in float32."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_clip_tokenizer(folder)
    text = SMOKE_TEXT if smoke else TEXT_OPENCLIP_H
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text,
    )
    torch.manual_seed(0)
    with device:  # parameters are created (and randomly initialised) on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(**(SMOKE_UNET if smoke else UNET_SD21))
        vae = AutoencoderKL(**(SMOKE_VAE if smoke else VAE_SD))
        text_encoder = CLIPTextModel(text_config)
    scheduler = EulerDiscreteScheduler(  # SD-Turbo's: trailing timesteps work from one step up
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    # Any: mypy does not see DiffusionPipeline's methods (``.to``, ``set_progress_bar_config``).
    pipe = cast(Any, StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def save_tiny_vae(folder: str, *, smoke: bool) -> str:
    """Save a random AutoencoderTiny (taesd layout) for ``apply_fast_paths`` to load."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    tiny = cast(Any, AutoencoderTiny(**(SMOKE_TAESD if smoke else TAESD)))  # mypy misses ModelMixin.save_pretrained
    tiny.save_pretrained(folder)
    return folder


@torch.no_grad()
def count_flops(pipe, tiny_folder: str, *, size: int, device: torch.device) -> dict[str, float]:
    """FLOPs of one image per component (text encoder, UNet step, VAE decode, tiny VAE decode)."""
    from diffusers import AutoencoderTiny
    from torch.utils.flop_counter import FlopCounterMode

    def flops(run: Callable[[], Any]) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        return float(counter.get_total_flops())

    dtype = pipe.unet.dtype
    latent = torch.randn(1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor, device=device, dtype=dtype)
    ids = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long, device=device)
    hidden = torch.randn(1, ids.shape[1], pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    tiny = AutoencoderTiny.from_pretrained(tiny_folder).to(device=device, dtype=dtype)
    counted = {
        "text_encoder": flops(lambda: pipe.text_encoder(ids)),
        "unet_step": flops(lambda: pipe.unet(latent, 999, encoder_hidden_states=hidden)),
        "vae_decode": flops(lambda: pipe.vae.decode(latent)),
        "tiny_vae_decode": flops(lambda: tiny.decode(latent)),
    }
    counted["per_image_vae"] = counted["text_encoder"] + counted["unet_step"] + counted["vae_decode"]
    counted["per_image_tiny_vae"] = counted["text_encoder"] + counted["unet_step"] + counted["tiny_vae_decode"]
    return counted


class Bench:
    """Runs the variants under one time budget and keeps the results (JSON-ready)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.start = STARTED
        self.size = 64 if args.smoke else args.size
        self.results: dict[str, Any] = {
            "smoke": args.smoke,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "size": self.size,
            "steps": 1,
            "guidance": 0.0,
            "peak_tflops": args.peak_tflops,
            "compile_mode": args.compile_mode,
            "flops": {},
            "variants": {},
            "sweeps": {},
            "skipped": {},
            "finished": False,
        }
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def skip(self, what: str, reason: str) -> None:
        print(f"skipped {what}: {reason}", flush=True)
        self.results["skipped"][what] = reason
        self.save()

    def save(self) -> None:
        with self.lock:
            self.results["elapsed_s"] = round(self.elapsed(), 1)
            out = Path(self.args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(self.results, indent=2, default=str))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, run: Callable[[], Any], *, batch: int, cap_s: float) -> Timing:
        """Warm up, then time ``run`` (one batch) for at least ``--iters`` and ``--min-s``, at most ``cap_s``."""
        for _ in range(self.args.warmup):
            run()
        self.sync()
        count, begin = 0, time.perf_counter()
        while True:
            run()
            count += 1
            spent = time.perf_counter() - begin
            if (count >= self.args.iters and spent >= self.args.min_s) or spent >= cap_s:
                break
        self.sync()
        spent = time.perf_counter() - begin
        return {"batch": batch, "batches": count, "seconds": round(spent, 4), "images_per_s": count * batch / spent}

    def record(self, key: str, label: str, timing: Timing, *, flops: float, applied: Any) -> None:
        mfu = timing["images_per_s"] * flops / (self.args.peak_tflops * 1e12)
        self.results["variants"][key] = {
            "label": label, **timing, "mfu": mfu, "flops_per_image": flops, "applied": applied,
        }
        print(f"{key}  {label:<44} batch {timing['batch']:>3}  {timing['images_per_s']:>9.2f} img/s  "
              f"MFU {100 * mfu:6.2f}%", flush=True)
        self.save()

    def sweep(self, key: str, make_run: Callable[[int], Callable[[], Any]], *, reserve_s: float) -> Timing | None:
        """Time each batch size of ``--batches`` while more than ``reserve_s`` of budget is left.

        Returns:
            the fastest point's timing, or None when none ran.
        """
        best: Timing | None = None
        points: dict[str, float] = {}
        for batch in self.args.batches:
            if self.left() < reserve_s:
                self.skip(f"{key}:batch{batch}", f"{self.left():.0f}s of budget left, sweep stops")
                break
            try:
                timing = self.measure(make_run(batch), batch=batch, cap_s=self.args.cap_s)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                self.skip(f"{key}:batch{batch}", "out of GPU memory, sweep stops")
                break
            points[str(batch)] = round(timing["images_per_s"], 3)
            print(f"   {key} sweep: batch {batch:>3}  {timing['images_per_s']:9.2f} img/s", flush=True)
            if best is None or timing["images_per_s"] > best["images_per_s"]:
                best = timing
        self.results["sweeps"][key] = points
        return best


def prompts(count: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) for i in range(count)]


def fast_run(pipe, batch: int, *, size: int, device: torch.device, pinned: bool) -> Callable[[], np.ndarray]:
    """One batch as the project's generate path does it: per-row generators, uint8 made on the device."""
    texts = prompts(batch)

    def run() -> np.ndarray:
        generators = [torch.Generator(device).manual_seed(i) for i in range(batch)]
        images = pipe(prompt=texts, num_inference_steps=1, guidance_scale=0.0, width=size, height=size,
                      generator=generators, output_type="pt").images
        return to_host_uint8(images.permute(0, 2, 3, 1), pinned=pinned)

    return run


def bare_run(pipe, *, size: int) -> Callable[[], np.ndarray]:
    """The diffusers tutorial loop: one prompt at a time, float images to the host, uint8 there."""
    text = prompts(1)[0]

    def run() -> np.ndarray:
        image = pipe(prompt=text, num_inference_steps=1, guidance_scale=0.0, width=size, height=size,
                     output_type="np").images
        return (image * 255).round().astype(np.uint8)

    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --smoke for the CPU check")
    bench = Bench(args, device)
    watchdog = threading.Timer(args.budget_s + args.grace_s, _out_of_time, args=(bench,))
    watchdog.daemon = True
    watchdog.start()
    size = bench.size
    pipe = build_pipeline(smoke=args.smoke, device=device)
    tiny_folder = save_tiny_vae(tempfile.mkdtemp(prefix="pm-taesd-"), smoke=args.smoke)
    print(f"built pipeline in {bench.elapsed():.1f}s on {bench.results['device']}", flush=True)
    bench.results["flops"] = flops = count_flops(pipe, tiny_folder, size=size, device=device)
    print("GFLOPs per image: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()), flush=True)
    # (a) bare diffusers, float32, batch 1
    with torch.no_grad():
        timing = bench.measure(bare_run(pipe, size=size), batch=1, cap_s=args.cap_s)
    bench.record("a", "diffusers fp32, batch 1", timing, flops=flops["per_image_vae"], applied=None)
    # (b) the project's fast paths (dtype from weights_dtype, as ImageGenerator loads), best batch
    # On CPU (--smoke) the CUDA-only paths are forced on, so their code runs; dtype stays float32.
    on_cpu = device.type != "cuda"
    fast = FastPaths()
    dtype = weights_dtype(fast, device)
    if pipe.unet.dtype != getattr(torch, dtype):
        pipe.to(getattr(torch, dtype))
    applied = apply_fast_paths(pipe, fast, device, cuda_paths_on_cpu=on_cpu)
    run_for = lambda batch: fast_run(pipe, batch, size=size, device=device, pinned=fast.pinned_transfer)  # noqa: E731
    best = bench.sweep("b", run_for, reserve_s=args.compile_reserve_s + args.tiny_reserve_s)
    if best is not None:
        bench.record("b", f"{dtype} + SDPA + channels_last (best batch)", best, flops=flops["per_image_vae"],
                     applied=applied)
    # (c) + tiny VAE decoder, loaded through models.fastpaths
    fast = FastPaths(tiny_vae=tiny_folder)
    applied = apply_fast_paths(pipe, fast, device, cuda_paths_on_cpu=on_cpu)
    best = bench.sweep("c", run_for, reserve_s=args.compile_reserve_s)
    if best is not None:
        bench.record("c", "b + tiny VAE decoder (best batch)", best, flops=flops["per_image_tiny_vae"], applied=applied)
    # (d) + torch.compile at (c)'s best batch: compiling takes most of this variant's time
    if best is None:
        bench.skip("d", "no batch size of (c) ran")
    elif args.smoke and not args.smoke_compile:
        bench.skip("d", "compile is not run in --smoke (add --smoke-compile to try it on CPU)")
    elif args.quick:
        bench.skip("d", "compile is not run in --quick")
    elif bench.left() < args.compile_reserve_s:
        bench.skip("d", f"{bench.left():.0f}s of budget left, "
                        f"compile needs --compile-reserve-s {args.compile_reserve_s:.0f}")
    else:
        fast = FastPaths(tiny_vae=tiny_folder, compile=True, compile_mode=args.compile_mode)
        applied = apply_fast_paths(pipe, fast, device, cuda_paths_on_cpu=on_cpu)
        run = fast_run(pipe, best["batch"], size=size, device=device, pinned=fast.pinned_transfer)
        begin = time.perf_counter()
        run()  # the compile
        applied["compile_s"] = round(time.perf_counter() - begin, 1)
        print(f"   compiled ({args.compile_mode}) in {applied['compile_s']}s", flush=True)
        timing = bench.measure(run, batch=best["batch"], cap_s=args.cap_s)
        bench.record("d", f"c + torch.compile ({args.compile_mode})", timing, flops=flops["per_image_tiny_vae"],
                     applied=applied)
    bench.results["finished"] = True
    bench.save()
    watchdog.cancel()
    print_table(bench.results)
    print(f"done in {bench.elapsed():.0f}s; JSON: {args.out}", flush=True)
    return bench.results


def print_table(results: dict[str, Any]) -> None:
    """The variants side by side, then what was skipped."""
    print(f"\n{results['device']}, {results['size']}x{results['size']}, 1 step, guidance 0; "
          f"MFU against {results['peak_tflops']:.0f} TFLOP/s")
    print(f"{'':3}{'variant':<46}{'batch':>6}{'img/s':>10}{'ms/img':>9}{'TFLOP/img':>11}{'MFU':>8}")
    for key, row in results["variants"].items():
        print(f"{key:<3}{row['label']:<46}{row['batch']:>6}{row['images_per_s']:>10.2f}"
              f"{1000 / row['images_per_s']:>9.2f}{row['flops_per_image'] / 1e12:>11.3f}{100 * row['mfu']:>7.2f}%")
    for what, reason in results["skipped"].items():
        print(f"skipped {what}: {reason}")


def _out_of_time(bench: Bench) -> None:
    """Watchdog: the budget is spent (a compile ran long); keep what was measured and stop."""
    bench.results["skipped"]["watchdog"] = f"stopped at {bench.elapsed():.0f}s, past --budget-s + --grace-s"
    bench.save()
    print_table(bench.results)
    print(f"out of time after {bench.elapsed():.0f}s; partial JSON: {bench.args.out}", flush=True)
    os._exit(3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, 64x64, one iteration")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke: run (d) too (slow on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="GPU, short: batches 8,16,32, no (d), --budget-s 125 unless given (bench/gpu_all.sh)")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_bench.json or bench/results/)")
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--batches", default="1,4,8,16,32", help="batch sizes swept for (b) and (c)")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="(d)'s torch.compile mode; max-autotune modes may not compile within the budget")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak for MFU (H200 here: 790)")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run, start to JSON (420; --quick 125)")
    parser.add_argument("--grace-s", type=float, default=30.0, help="watchdog margin past the budget")
    parser.add_argument("--compile-reserve-s", type=float, default=200.0, help="budget needed to start (d)")
    parser.add_argument("--tiny-reserve-s", type=float, default=60.0, help="budget (b)'s sweep leaves for (c)")
    parser.add_argument("--cap-s", type=float, default=15.0, help="timed loop cap per point")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed batches per point, at least")
    parser.add_argument("--min-s", type=float, default=2.0, help="timed seconds per point, at least")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.budget_s is None:
        args.budget_s = 125.0 if args.quick else 420.0
    if args.quick:  # (d) is skipped, so (b) leaves only (c)'s share
        args.compile_reserve_s, args.tiny_reserve_s = 0.0, 35.0
        if args.batches == [1, 4, 8, 16, 32]:
            args.batches = [8, 16, 32]
    if args.smoke:
        args.size, args.warmup, args.iters, args.min_s = 64, 1, 1, 0.0
        args.tiny_reserve_s, args.compile_reserve_s = 0.0, 0.0
        if args.batches == [1, 4, 8, 16, 32]:
            args.batches = [1, 2]
    if args.out is None:
        folder = os.environ.get("OUT")
        name = "gpu_bench_smoke.json" if args.smoke else "gpu_bench.json"
        args.out = os.path.join(folder, name) if folder else os.path.join("bench", "results", name)
    return args


if __name__ == "__main__":
    main()
