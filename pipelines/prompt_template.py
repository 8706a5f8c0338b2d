"""Prompt templates: ``prompt_template`` / ``negative_prompt_template`` build a row's prompt from its columns.

A template is ``str.format`` text with plain ``{name}`` fields only (``{{`` and ``}}`` are
literal braces). Each field names an input column; the filled text is the row's ``prompt``
(or ``negative_prompt``), whatever a prompt column holds (the template wins).

- At spec load (:func:`parse`): bad syntax, a positional field (``{}``, ``{0}``), an
  attribute or index (``{a.b}``, ``{a[0]}``), a conversion or format spec (``{a!r}``,
  ``{a:>8}``) is a spec error naming the key.
- Before any work (:func:`check_columns`): a field naming a column the input lacks stops the
  job, naming the column and the template key.
- Per row (:func:`fill`): a null or empty/whitespace-only value makes that row an error
  record (stage ``input``) whose reason names the column; other values are rendered as
  text (:func:`render`), never through ``str.format``, so braces in values stay as written.

This module is light (no Ray): the spec imports it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["Template", "check_columns", "parse", "render"]

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A parsed template: ``pieces`` of ``(literal text, field name or None)``, and the spec key it came from."""

    key: str
    pieces: tuple[tuple[str, str | None], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The column names the template reads, in first-use order, each once."""
        return tuple(dict.fromkeys(name for _, name in self.pieces if name is not None))

    def fill(self, values: Mapping[str, Any]) -> str:
        """Return the template filled with ``values`` (column name -> the row's value).

        Raises:
            ValueError: a field's value is missing, null, NaN or empty text (the reason names the
                column and the template key), or is not text that UTF-8 can hold.
        """
        parts = []
        for literal, name in self.pieces:
            parts.append(literal)
            if name is not None:
                parts.append(_value_text(values.get(name), name, self.key))
        return "".join(parts)


def parse(text: str, key: str) -> Template:
    """Parse a template; ``key`` is the spec key named in errors (``prompt_template``).

    Returns:
        The :class:`Template`.

    Raises:
        ValueError: bad ``str.format`` syntax, no field at all, or a field that is not a plain
            ``{name}`` (positional, attribute, index, conversion, format spec).
    """
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as error:
        raise ValueError(f"{key}: not a valid template ({error}); write literal braces as {{{{ and }}}}") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name.strip() or name.isdigit():
            raise ValueError(f"{key}: positional field {shown} is not allowed; name a column, as in {{product}}")
        if any(char in name for char in ".[]"):
            raise ValueError(f"{key}: field {shown} has an attribute or index; only plain {{column}} fields "
                             "are allowed")
        if conversion or spec:
            raise ValueError(f"{key}: field {shown} has a conversion or format spec; only plain {{column}} fields "
                             "are allowed")
        pieces.append((literal, name))
    template = Template(key, tuple(pieces))
    if not template.fields:
        raise ValueError(f"{key}: the template names no column; use {{column}} fields, as in {{product}}")
    return template


def check_columns(templates: Iterable[Template], names: Iterable[str], *, source: str) -> None:
    """Raise ``ValueError`` when a template names a column the input lacks.

    Args:
        templates: the job's templates.
        names: the input's column names.
        source: the input, as the message names it (its URI, or ``input.grid``).
    """
    present = set(names)
    for template in templates:
        missing = [name for name in template.fields if name not in present]
        if missing:
            raise ValueError(
                f"{template.key}: column {missing[0]!r} is not in the input {source} "
                f"(columns: {sorted(present)}); fix the template or the input"
            )


def render(value: Any) -> str | None:
    """Return a value as template text, or None when it counts as missing.

    Text stays as is; ``None``, NaN and empty/whitespace-only text are missing; booleans are
    ``true``/``false`` and numbers as JSON writes them (an integer ``3`` is ``3``, a float
    ``3.0`` is ``3.0``), as the readers render JSON Lines values read as text; dates are ISO
    8601; bytes are UTF-8 text; lists and mappings their JSON text.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")  # undecodable bytes fail the UTF-8 check
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _value_text(value: Any, name: str, key: str) -> str:
    text = render(value)
    if text is None:
        raise ValueError(f"{key}: column {name!r} is empty in this row")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key}: column {name!r} is not valid Unicode text in this row") from None
    return text
