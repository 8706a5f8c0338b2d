"""Make the README's picture of the demo: ``docs/demo.png`` from the shards in ``out/demo``.

Usage (after ``bash scripts/demo.sh``)::

    python scripts/demo_png.py [OUT] [--png docs/demo.png]

Reads the shards back with ``webdataset`` (as any consumer would) and lays the images
out in a grid, each enlarged (nearest neighbour, so the pixels stay the model's) with its
prompt written under it.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import textwrap

import webdataset as wds
from PIL import Image, ImageDraw, ImageFont

TILE = 192  # pixels per image in the picture
COLUMNS = 4
CAPTION_LINES = 4
LINE_HEIGHT = 13


def read_samples(out: str) -> list[tuple[str, Image.Image]]:
    """``(prompt, image)`` of every sample in the committed tars of ``out``, ordered by id."""
    tars = sorted(glob.glob(os.path.join(out, "*.tar")))
    samples = []
    for sample in wds.WebDataset(tars, shardshuffle=False).decode():
        meta = sample["json"]
        image_key = next(key for key in ("png", "jpg", "webp") if key in sample)
        image = sample[image_key]
        if not isinstance(image, Image.Image):
            image = Image.open(io.BytesIO(image))
        samples.append((meta["id"], meta["prompt"], image.convert("RGB")))
    return [(prompt, image) for _id, prompt, image in sorted(samples, key=lambda s: s[0])]


def grid(samples: list[tuple[str, Image.Image]]) -> Image.Image:
    """The images in rows of ``COLUMNS``, each with its wrapped prompt under it."""
    font = ImageFont.load_default()
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    rows = -(-len(samples) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * (TILE + 8) + 8, rows * cell_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, image) in enumerate(samples):
        x = 8 + (i % COLUMNS) * (TILE + 8)
        y = 8 + (i // COLUMNS) * cell_h
        sheet.paste(image.resize((TILE, TILE), Image.Resampling.NEAREST), (x, y))
        for line_no, line in enumerate(textwrap.wrap(prompt, 32)[:CAPTION_LINES]):
            draw.text((x, y + TILE + 2 + line_no * LINE_HEIGHT), line, fill="black", font=font)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="out/demo")
    parser.add_argument("--png", default="docs/demo.png")
    args = parser.parse_args()
    samples = read_samples(args.out)
    if not samples:
        raise SystemExit(f"no samples in {args.out}: run bash scripts/demo.sh first")
    os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
    grid(samples).save(args.png, optimize=True)
    print(f"{args.png}: {len(samples)} images")


if __name__ == "__main__":
    main()
