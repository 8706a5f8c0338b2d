"""The dataset card: ``OUT/README.md`` with the features of the samples, for Hugging Face ``datasets``.

``datasets.load_dataset(OUT)`` reads a WebDataset output by guessing the features from the
first shard: a pass-through column that is null in every row of the first shard and text in
a later one fails (``Couldn't cast array of type string to null``). A card whose YAML front
matter declares ``dataset_info.features`` (from the shard Parquet's schema, mapped by the
sample-JSON rules of ``pipelines.schema.json_value``) and ``configs`` (the tars) makes the
loader use the declared features instead; the same card makes the output ready to publish
as a Hub dataset repository.

The card is pixelmill's only when it carries :data:`MARKER`; a ``README.md`` a user put in
the output folder is never overwritten.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import yaml

from pipelines import schema
from pipelines.layout import DATASET_CARD, OutputLayout
from pipelines.storage import write_once

__all__ = ["MARKER", "card_text", "sample_features", "write_card"]

MARKER = "<!-- written by pixelmill: rewritten after every run -->"
_NOT_IN_SAMPLES = schema.NOT_IN_SAMPLE_JSON
_SCALARS = {
    "bool": "bool", "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "halffloat": "float16", "float": "float32", "double": "float64",
}


def _body(kind: pa.DataType) -> dict[str, Any]:
    """The ``datasets`` YAML feature of one Arrow type, as ``json_value`` writes its values."""
    if pa.types.is_struct(kind):
        return {"struct": [_entry(kind.field(i).name, kind.field(i).type) for i in range(kind.num_fields)]}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = _body(kind.value_type)
        return {"list": inner.get("dtype", inner.get("struct", inner))}
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return {"struct": [{"name": "base64", "dtype": "string"}]}
    if pa.types.is_duration(kind):
        return {"dtype": "float64"}  # seconds
    # text, decimals (exact text), dates and times (ISO 8601) and all-null columns are text; a
    # map is declared as text too, though json_value writes it as an object: datasets cannot
    # declare an object of unknown keys (a known gap, as is NaN in a float column)
    if pa.types.is_map(kind) or str(kind) not in _SCALARS:
        return {"dtype": "string"}
    return {"dtype": _SCALARS[str(kind)]}


def _entry(name: str, kind: pa.DataType) -> dict[str, Any]:
    return {"name": name, **_body(kind)}


def sample_features(parquet_schema: pa.Schema, image_format: str) -> list[dict[str, Any]]:
    """Return the ``dataset_info.features`` list of the tar samples of an output.

    Args:
        parquet_schema: the schema of a shard Parquet (every row's metadata).
        image_format: the output's image extension (``png``, ``jpg``, ``webp``).
    """
    json_fields = [_entry(f.name, f.type) for f in parquet_schema if f.name not in _NOT_IN_SAMPLES]
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        {"name": "json", "struct": sorted(json_fields, key=lambda entry: entry["name"])},
        {"name": image_format, "dtype": "image"},
        {"name": "txt", "dtype": "string"},
    ]


def card_text(parquet_schema: pa.Schema, image_format: str, *, images: int) -> str:
    """Return the card: YAML front matter (features, the tars as the ``train`` split) and a short body."""
    front = {
        "dataset_info": {"features": sample_features(parquet_schema, image_format)},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "*.tar"}]}],
    }
    body = (
        f"{MARKER}\n\n# pixelmill output\n\n{images} images as WebDataset shards (`*.tar`: `<key>.{image_format}`,"
        " `<key>.json`, `<key>.txt`) with one Parquet per shard holding every row, failed rows included.\n"
        "Load it with `datasets.load_dataset(\"<this folder>\")`, `webdataset` or `pyarrow.dataset`.\n"
    )
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_card(layout: OutputLayout, *, image_format: str, images: int) -> bool:
    """Write ``README.md`` from the first committed shard's Parquet schema; return whether it did.

    Nothing is written when no shard is committed, or when a ``README.md`` without
    :data:`MARKER` (a user's) is there.
    """
    import pyarrow.parquet as pq

    parquet = layout.files("parquet")
    if not parquet:
        return False
    path = layout.path(DATASET_CARD)
    if layout.fs.exists(path) and MARKER not in layout.fs.cat_file(path).decode("utf-8", "replace"):
        return False
    with layout.fs.open(parquet[0], "rb") as handle:
        parquet_schema = pq.read_schema(handle)
    text = card_text(parquet_schema, image_format, images=images)
    with write_once(layout.fs, path, staging_dir=layout.staging_dir()) as f:
        f.write(text.encode("utf-8"))
    return True
