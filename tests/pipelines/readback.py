"""Read a pixelmill output the way its consumers do: ``webdataset`` for tars, ``pyarrow.dataset`` for Parquet."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow.dataset as pads
import webdataset as wds
from PIL import Image

from pipelines.storage import filesystem, join


def _register_s3_scheme() -> None:
    """Let ``webdataset`` open ``s3://`` URLs through fsspec (its scheme table has no s3 entry)."""
    import importlib

    # ``webdataset.gopen`` is shadowed by the function of that name; import the module itself.
    gopen_module = importlib.import_module("webdataset.gopen")

    def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
        fs, path = filesystem(url)
        return fs.open(path, mode)

    gopen_module.gopen_schemes.setdefault("s3", open_s3)


def read_output(uri: str) -> dict[str, Any]:
    """Return samples from every tar, all Parquet rows, the stats files and ``_run.json``."""
    _register_s3_scheme()
    fs, root = filesystem(uri)
    prefix = "s3://" if uri.startswith("s3://") else ""
    tars = sorted(fs.glob(join(fs, root, "*.tar")))
    samples = []
    if tars:
        for sample in wds.WebDataset([prefix + t for t in tars], shardshuffle=False, empty_check=False):
            image_key = next(k for k in ("png", "jpg", "webp") if k in sample)
            samples.append(
                {
                    "key": sample["__key__"],
                    "url": sample["__url__"],
                    "image": Image.open(io.BytesIO(sample[image_key])),
                    "image_bytes": sample[image_key],
                    "json": json.loads(sample["json"]),
                    "txt": sample["txt"].decode(),
                }
            )
    parquet_files = sorted(fs.glob(join(fs, root, "*.parquet")))
    table = pads.dataset(parquet_files, format="parquet", filesystem=fs).to_table() if parquet_files else None
    stats = {p.rsplit("/", 1)[-1]: json.loads(fs.cat_file(p)) for p in sorted(fs.glob(join(fs, root, "*_stats.json")))}
    run = json.loads(fs.cat_file(join(fs, root, "_run.json"))) if fs.exists(join(fs, root, "_run.json")) else None
    return {
        "tars": tars,
        "samples": samples,
        "rows": table.to_pylist() if table is not None else [],
        "stats": stats,
        "run": run,
        "all_files": sorted(fs.find(root)),
    }
