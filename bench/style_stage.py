"""Style stage throughput (ONNX backend) at a given resolution, side by side for both network kinds.

Usage: python bench/style_stage.py [--size 64] [--rows 64]
Prints images/s of the stage (built-in style network vs. style-image network) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from actors.generate import IMAGE_COLUMN
from actors.style import StyleStage
from pipelines.spec import StageSpec, StyleSpec


def _batch(rows: int, size: int, style: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = np.empty(rows, dtype=object)
    for i in range(rows):
        images[i] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {
        "status": np.array(["ok"] * rows, dtype=object),
        "stage": np.array([""] * rows, dtype=object),
        "error": np.array([""] * rows, dtype=object),
        "style": np.array([style] * rows, dtype=object),
        IMAGE_COLUMN: images,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--json", default="bench/results/style_stage.json")
    args = parser.parse_args()
    stage = StyleStage(style=StyleSpec(), stage=StageSpec())
    with tempfile.TemporaryDirectory() as folder:
        style_image = Path(folder) / "style.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(style_image)
        results = {}
        for label, style in (("builtin (multistyle26)", "style-04"), ("style image (arbitrary)", str(style_image))):
            stage(_batch(2, args.size, style))  # warm-up: sessions, caches
            start = time.perf_counter()
            stage(_batch(args.rows, args.size, style))
            seconds = time.perf_counter() - start
            results[label] = {
                "rows": args.rows, "seconds": round(seconds, 3), "images_per_s": round(args.rows / seconds, 1),
            }
    print(f"style stage, ONNX backend, {args.size}x{args.size}, {args.rows} rows, one actor:")
    for label, result in results.items():
        print(f"  {label:26s} {result['images_per_s']:8.1f} images/s  ({result['seconds']} s)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"size": args.size, **results}, indent=2))


if __name__ == "__main__":
    main()
