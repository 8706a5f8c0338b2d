"""Read a pixelmill output the way its consumers do: ``webdataset`` for tars, ``pyarrow.dataset`` for Parquet."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow.dataset as pads
import webdataset as wds
from PIL import Image

from pipelines.layout import OutputLayout
from pipelines.storage import filesystem


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
    layout = OutputLayout(uri)
    fs, root = layout.fs, layout.root
    fs.invalidate_cache()  # listings cached by this process may predate another process's writes
    prefix = "s3://" if uri.startswith("s3://") else ""
    tars = layout.files("tar")
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
    parquet_files = layout.files("parquet")
    table = pads.dataset(parquet_files, format="parquet", filesystem=fs).to_table() if parquet_files else None
    stats = {p.rsplit("/", 1)[-1]: layout.read_json(p) for p in layout.files("stats")}
    run = layout.last_run()
    error_files = layout.files("errors")
    errors = pads.dataset(error_files, format="parquet", filesystem=fs).to_table().to_pylist() if error_files else []
    return {
        "errors": errors,
        "tars": tars,
        "samples": samples,
        "rows": table.to_pylist() if table is not None else [],
        "stats": stats,
        "run": run,
        "all_files": sorted(fs.find(root)),
    }


def check_exactly_once(out: dict[str, Any], input_ids: list[str]) -> None:
    """Assert that every input id is exactly one image, error record or filtered record, and that
    every tar belongs to a committed shard (a stats file), as consumers of the output count them."""
    from collections import Counter

    seen = Counter(sample["json"]["id"] for sample in out["samples"])
    seen.update(row["id"] for row in out["errors"])
    seen.update(row["id"] for row in out["rows"] if row["status"] == "filtered")
    doubled = {i: n for i, n in seen.items() if n > 1}
    assert not doubled, f"rows written more than once: {doubled}"
    assert set(seen) == set(input_ids), (
        f"missing: {sorted(set(input_ids) - set(seen))[:10]}, unknown: {sorted(set(seen) - set(input_ids))[:10]}"
    )
    committed = {name.split("_")[0] for name in out["stats"]}
    if out["run"]:
        limit = out["run"]["spec"]["output"]["samples_per_shard"]
        assert all(stats["count"] <= limit for stats in out["stats"].values()), "a shard is over samples_per_shard"
    for tar in out["tars"]:
        assert tar.rsplit("/", 1)[-1].removesuffix(".tar") in committed, f"{tar} has no stats file"
