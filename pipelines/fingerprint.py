"""What a run was made from: its input listing and the settings that change its images.

Each run records both in its record (``_run.json``, ``_runs/<run id>.json``). A resume
compares them with the output's earlier runs before any work (:func:`check_resume`):

- **Settings.** :func:`settings_of` flattens the settings that change an image or decide
  its fate into dotted keys: the model and a hash of its files, the backend, the size,
  steps, guidance and negative-prompt defaults, the prompt templates, the job seed, the precision, the style
  settings, the score model and the ``min_score`` filter, the image format, the LLM stage's
  settings and model hash. A resume whose settings differ from the latest run's stops with the
  keys that differ, unless the user passes ``--allow-spec-change`` (the output then holds images of both; every run's
  record keeps its own settings). ``--mode append`` is a new batch and is not checked.
- **Input.** :func:`input_of` lists each input file with its size and its ETag (object
  stores) or modification time. When the rows have no id column their ids are positions
  (``<file>#<row>``, the name relative to the input root), so a file whose name an earlier
  run read with other content would re-number rows: a new row never drawn, another drawn
  twice. Such a resume stops and names the files (whatever folder or bucket they are in now).
  With an id column a changed input resumes as usual (new ids are drawn, done ids skipped).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from typing import Any

from pipelines.fanout import fans_out
from pipelines.layout import OutputLayout
from pipelines.sources import GRID_FORMAT
from pipelines.spec import JobSpec, ModelSpec

__all__ = ["ResumeRefused", "check_resume", "input_of", "model_hash", "settings_of"]

# Keys of a listing entry that say a file's content changed (s3fs/gcsfs/adlfs give an ETag,
# local disk an mtime); the size is always compared.
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified")


class ResumeRefused(ValueError):
    """A resume would mix two inputs or two specs in one output; nothing was done."""


def _version(info: dict[str, Any]) -> str | None:
    for key in _VERSION_KEYS:
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def _listing_digest(entries: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_of(listing: tuple, *, positional_ids: bool) -> dict[str, Any]:
    """Return the record of an input: its files with sizes and versions, and a digest.

    Args:
        listing: ``pipelines.sources.list_input_files``'s result.
        positional_ids: whether row ids are positions (no id column).

    Returns:
        ``{"files": [[name, size, version], ...], "sha256": 16 hex chars, "positional_ids": bool}``
        with names relative to the input root.
    """
    fs, files, root, fmt = listing
    if fmt == GRID_FORMAT:  # ids come from the values: a changed grid resumes like a changed id column
        grid = hashlib.sha256(json.dumps(fs, sort_keys=False).encode()).hexdigest()[:16]
        return {"files": [], "grid": grid, "sha256": grid, "positional_ids": False}
    details: dict[str, dict[str, Any]] = {}
    if len(files) > 1:  # one listing rather than one request per file
        found = fs.find(root, detail=True)
        details = {fs._strip_protocol(path): info for path, info in found.items()}
    entries = []
    for path in files:
        info = details.get(fs._strip_protocol(path)) or fs.info(path)
        name = posixpath.relpath(path, root) if root else path
        entries.append([name, int(info.get("size") or 0), _version(info)])
    return {"files": entries, "sha256": _listing_digest(entries), "positional_ids": positional_ids}


def model_hash(model: ModelSpec, storage_options: dict[str, Any] | None = None) -> str:
    """Return a short hash of a model's files, read from here without loading the model.

    A built-in model shipped in ``models/zoo`` and a local folder hash their files' names,
    sizes and config bytes (``models.store.model_fingerprint``); a code-built built-in is
    its name (its code is the model); a Hub id is the commit it resolves to; a folder in
    object storage hashes one listing of names, sizes and ETags. An unreadable location
    gives ``"unknown"`` (the run itself says why it cannot load it).
    """
    from models.builtin import SHIPPED_MODELS, ZOO_DIR
    from models.store import BUILTIN_PREFIX, is_builtin, model_fingerprint
    from pipelines.hub import hub_commit, hub_model
    from pipelines.storage import filesystem

    uri = model.uri
    try:
        if is_builtin(uri):
            name = uri[len(BUILTIN_PREFIX):]
            return model_fingerprint(posixpath.join(ZOO_DIR, name)) if name in SHIPPED_MODELS else name
        hub = hub_model(uri)
        if hub is not None:
            return hub_commit(hub, uri, cache_dir=model.local_cache_dir())[:16]
        fs, root = filesystem(uri, storage_options)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            return model_fingerprint(root)
        found = fs.find(root, detail=True)
        entries = sorted([posixpath.relpath(p, root), int(i.get("size") or 0), _version(i)] for p, i in found.items())
        return _listing_digest(entries)
    except (OSError, ValueError):
        return "unknown"


def settings_of(spec: JobSpec, input_names: Iterable[str] | None = None) -> dict[str, Any]:
    """Return the settings of ``spec`` that change its images or their fate, as dotted keys.

    Args:
        input_names: the input's columns, when known: an unmapped ``images_per_prompt`` column
            makes the job fan out (``pipelines.fanout.fans_out``), which changes its ids.
    """
    settings: dict[str, Any] = {
        "model.uri": spec.model.uri,
        "model.hash": model_hash(spec.model, spec.storage_options),
        "model.performance.dtype": spec.model.performance.dtype,
        "model.performance.tiny_vae": spec.model.performance.tiny_vae,
        "generate.backend": spec.generate.backend,
        "stages.encode.dtype": spec.stages.encode.dtype,
        "stages.generate.dtype": spec.stages.generate.dtype,
        "seed": spec.seed,
        "output.image_format": spec.output.image_format,
        "output.image_quality": spec.output.image_quality,
        **{f"defaults.{key}": value for key, value in spec.defaults.model_dump(mode="json").items()},
    }
    for key in ("prompt_template", "negative_prompt_template"):  # absent when unset, so earlier outputs resume
        if getattr(spec, key) is not None:
            settings[key] = getattr(spec, key)
    if fans_out(spec, input_names):  # sample ids <id>/<k>: a resume must not switch between the two id schemes
        settings["images_per_prompt.child_ids"] = True
    if spec.llm is not None:  # the LLM writes the prompts; absent without it, so earlier outputs still resume
        llm = spec.llm.model_dump(mode="json", exclude={"model"})
        settings.update({f"llm.{key}": value for key, value in llm.items()})
        settings["llm.model.uri"] = spec.llm.model.uri
        settings["llm.model.hash"] = model_hash(spec.llm.model, spec.storage_options)
        settings["stages.llm.dtype"] = spec.stages.llm.dtype
        settings["stages.llm.micro_batch_size"] = spec.stages.llm.micro_batch_size
    if spec.style is not None:
        style = spec.style.model_dump(mode="json", exclude={"cache_size"})
        settings.update({f"style.{key}": value for key, value in style.items()})
    else:
        settings["style"] = None
    if spec.score is not None:
        settings["score.model.uri"] = spec.score.model.uri
        settings["score.model.hash"] = model_hash(spec.score.model, spec.storage_options)
        settings["score.min_score"] = spec.score.min_score
        if spec.regenerates:  # the loop chooses the images; absent at 1, so earlier outputs still resume
            settings["score.max_attempts"] = spec.score.max_attempts
            settings["score.keep"] = spec.score.keep
    else:
        settings["score"] = None
    return settings


def _latest(layout: OutputLayout, key: str, *, input_uri: str | None = None) -> dict[str, Any] | None:
    """The newest run record holding ``key`` (and, if given, made from ``input_uri``).

    An empty record of ``key`` counts as none: a ``retry-errors`` run reads no input files.
    """
    for record in reversed(layout.run_records()):
        made_from = record.get("spec", {}).get("input", {}).get("uri")
        if record.get(key) and (input_uri is None or made_from == input_uri):
            return record
    return None


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(now))
    return [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in keys if before.get(key) != now.get(key)]


def _changed_files(layout: OutputLayout, now: list[list[Any]]) -> list[str]:
    """The files of ``now`` whose name an earlier run read with another size or version.

    Positional ids are ``<name>#<row>`` with the name relative to the input root, so what
    matters is the name, whatever folder or bucket it came from: each name is compared with
    the newest run that read a file of that name. A name no run read is new: its ids are too.
    """
    seen: dict[str, tuple[list[Any], Any]] = {}
    for record in reversed(layout.run_records()):
        for entry in (record.get("input") or {}).get("files", []):
            seen.setdefault(entry[0], (list(entry[1:]), record.get("run_id")))
    changes = []
    for name, *version in now:
        if name in seen and seen[name][0] != list(version):
            before, run_id = seen[name]
            changes.append(f"{name} changed since run {run_id} read it (size {before[0]} -> {version[0]})")
    return changes


def check_resume(
    layout: OutputLayout, *, input_uri: str, settings: dict[str, Any], input_record: dict[str, Any],
    allow_spec_change: bool = False,
) -> None:
    """Refuse a resume that would mix specs or renumber rows (see the module docstring).

    Args:
        layout: the output, with committed shards.
        input_uri: this run's ``input.uri``.
        settings: :func:`settings_of` this run's spec.
        input_record: :func:`input_of` this run's input.
        allow_spec_change: resume even when the settings differ.

    Raises:
        ResumeRefused: the settings differ (and not allowed), or the ids are positional and a
            file of the input differs from the file of that name an earlier run read.
    """
    earlier = _latest(layout, "settings")
    if earlier is not None and not allow_spec_change:
        changed = _differences(earlier["settings"], settings)
        if changed:
            raise ResumeRefused(
                f"the spec changed since run {earlier.get('run_id')} wrote this output: {'; '.join(changed)}. "
                "A resume keeps one spec per dataset: use --mode append to add a batch with the new settings, "
                "--mode overwrite to start again, or --allow-spec-change to resume with them anyway"
            )
    if not input_record["positional_ids"]:
        return
    changes = _changed_files(layout, input_record["files"])
    if changes:
        raise ResumeRefused(
            f"the input {input_uri} is not what earlier runs read: {'; '.join(changes[:5])}"
            f"{' ...' if len(changes) > 5 else ''}. Its rows have no id column, so their ids are their "
            "positions (<file>#<row>) and a resume would draw some rows twice and others never: set an id column "
            "(input.columns.id), or use --mode append (a new batch) or --mode overwrite"
        )
