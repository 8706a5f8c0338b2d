"""``input.grid``: the input table as the cartesian product of columns' value lists.

``grid: {product: [mug, lamp], background: [marble, oak]}`` is the table of 4 rows
``(mug, marble), (mug, oak), (lamp, marble), (lamp, oak)``: keys in the order written, the
last key varying fastest (``itertools.product``). Each value becomes an ordinary
pass-through column, so templates, ``images_per_prompt``, seeds, duplicates, resume and
``retry-errors`` work as for a file.

Row ids are built from the values (:func:`grid_id`): ``product=mug/background=marble``.
Every key and value is percent-escaped except ASCII letters, digits and ``-_.``, so ``=``,
``/``, ``%`` and ``~`` never occur unescaped and two rows never share an id; an id longer
than :data:`MAX_ID_CHARS` is cut to a readable prefix plus ``~`` and 16 hex digits of the
SHA-256 of the whole id (only shortened ids hold a bare ``~``). Ids are stable: the same
values give the same id in every run.

This module is light (no Ray): the spec validates with it; ``pipelines.sources`` builds the
Ray dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import quote

__all__ = ["GRID_SOURCE", "MAX_GRID_ROWS", "MAX_ID_CHARS", "Scalar", "check_grid", "grid_id", "grid_rows", "size"]

Scalar = str | int | float | bool
MAX_GRID_ROWS = 1_000_000
MAX_ID_CHARS = 120
GRID_SOURCE = "input.grid"  # the ``source`` of every grid row (``source_row``: its place in the product)
_PREFIX_CHARS = MAX_ID_CHARS - 17


def _text(value: Scalar) -> str:
    """A value as written in ids: text as is, numbers and booleans as JSON writes them."""
    return value if isinstance(value, str) else json.dumps(value)


def size(grid: Mapping[str, Sequence[Scalar]]) -> int:
    """Return the number of rows of the grid's product."""
    return math.prod(len(values) for values in grid.values())


def check_grid(grid: Mapping[str, Sequence[Scalar]], *, reserved: frozenset[str] = frozenset()) -> None:
    """Raise ``ValueError`` (naming ``input.grid.<key>``) for a grid that cannot be a table.

    Args:
        reserved: column names a grid key may not take (pixelmill's own).

    No keys, an empty list, a value that is not a scalar (or is NaN/infinite), two values of one
    key with the same text (``1`` and ``"1"``: they would share an id), a reserved key, or more
    than :data:`MAX_GRID_ROWS` rows.
    """
    if not grid:
        raise ValueError("input.grid: name at least one column with a list of values")
    for key, values in grid.items():
        if key in reserved:
            raise ValueError(f"input.grid.{key}: {key!r} is a column pixelmill writes itself; name it otherwise")
        if not values:
            raise ValueError(f"input.grid.{key}: the list of values is empty")
        texts: set[str] = set()
        for value in values:
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"input.grid.{key}: {value!r} is not a scalar (text, number or boolean)")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"input.grid.{key}: {value!r} is not a finite number")
            if _text(value) in texts:
                raise ValueError(f"input.grid.{key}: the value {_text(value)!r} is listed twice")
            texts.add(_text(value))
    rows = size(grid)
    if rows > MAX_GRID_ROWS:
        raise ValueError(f"input.grid: the product has {rows:,} rows, above the cap of {MAX_GRID_ROWS:,}")


def _escaped(text: str) -> str:
    return quote(text, safe="-_.").replace("~", "%7E")  # quote keeps ``~``: it marks shortened ids here


def grid_id(row: Mapping[str, Scalar]) -> str:
    """Return the id of a grid row (``key=value`` pairs joined by ``/``, escaped; see the module docstring)."""
    text = "/".join(f"{_escaped(key)}={_escaped(_text(value))}" for key, value in row.items())
    if len(text) <= MAX_ID_CHARS:
        return text
    return f"{text[:_PREFIX_CHARS]}~{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def grid_rows(grid: Mapping[str, Sequence[Scalar]], *, id_column: str) -> Iterator[dict[str, Scalar]]:
    """Yield the grid's rows in product order: each key's value, and the row's id under ``id_column``."""
    keys = list(grid)
    for combination in itertools.product(*(grid[key] for key in keys)):
        row = dict(zip(keys, combination))
        yield {id_column: grid_id(row), **row}
