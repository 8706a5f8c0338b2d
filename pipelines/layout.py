"""The output layout: the one owner of every file name under an output root.

Like Ray Data's ``FilenameProvider`` and img2dataset's writer contract, one Ray-free
object knows the root, the filesystem (built once), the name of every file pixelmill
writes there, which shards are committed, and how leftovers of dead runs are removed.
The sink, the runner, the report, the watchdog, the benchmarks and the tests' read-back
ask it; nobody else formats a shard number or knows a folder name.

The layout of an output root::

    00000.tar               WebDataset samples of the shard's ok rows
    00000.parquet           every row of the shard (images left out)
    _errors/00000.parquet   the shard's error records (only when it has any)
    00000_stats.json        the commit marker, written last: a shard is committed
                            exactly when its stats file exists; its ``files`` lists
                            each other file of the shard with its size in bytes
    _run.json               the latest run's record (summary, equation, spec)
    _runs/<run id>.json     one record per run
    _runs/<run id>.shards.parquet  the run's index: its committed shards' stats (``pipelines.history``)
    _runs/<run id>.keys.parquet    the resume keys of the run's rows, with their shard
    _diversity/<run id>.parquet  a run's near-duplicate pairs (``pipelines.diversity``)
    _retry.json             a retry-errors run in progress
    _lease.json             the run that is writing now
    _tmp/<run id>/          local staging (renamed into place)
    _tmp/claims/00000.json  the run writing shard 00000 now (removed when it commits)
    report.html, README.md  the run report and the dataset card

``SHARD_FILES`` lists the per-shard files in commit order. A new per-shard file is one
entry there (and one writer in ``pipelines.sink``): cleanup, listing and the report
pick it up from here.

A committed shard is *whole* when every file its stats file lists is there with the
size listed (``check_shards``, one listing of the root); otherwise it is *damaged* (a
file deleted or truncated by hand, a bucket lifecycle rule) and counts as not committed.

The run index (``_runs/<run id>.shards.parquet``, written by ``pipelines.history`` when a run
finishes) is a cache of stats files: ``check_shards`` takes a shard's stats from the newest
index that lists it only while its stats file is listed with the size and version (ETag,
modification time) the index recorded; any other committed shard's stats file is read.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa

from pipelines.storage import filesystem, is_local, join, write_once

__all__ = [
    "ERRORS_DIR",
    "SHARD_FILES",
    "STATS_FILE",
    "TMP_DIR",
    "OutputLayout",
    "ShardCheck",
    "ShardFile",
    "shard_name",
]

SHARD_DIGITS = 5
TMP_DIR = "_tmp"
ERRORS_DIR = "_errors"
RUNS_DIR = "_runs"
DIVERSITY_DIR = "_diversity"
RUN_RECORD = "_run.json"
INDEX_SUFFIX = ".shards.parquet"
INDEX_COLUMNS = ("shard", "stats", "stats_size", "stats_version")  # a run index's columns (``pipelines.history``)
KEYS_SUFFIX = ".keys.parquet"
RETRY_MANIFEST = "_retry.json"
LEASE = "_lease.json"
CLAIMS = "claims"
REPORT = "report.html"
DATASET_CARD = "README.md"


@dataclass(frozen=True)
class ShardFile:
    """One file of a shard: its kind and its name relative to the root.

    Attributes:
        kind: the file's role (``tar``, ``parquet``, ``errors``, ``stats``).
        pattern: the name with ``{shard}`` for the zero-padded shard number, ``/``-separated.
        optional: whether a committed shard may lack it (error records exist only with errors).
    """

    kind: str
    pattern: str
    optional: bool = False

    def name(self, shard: int) -> str:
        """Return this file's name for ``shard`` (relative to the root)."""
        return self.pattern.format(shard=shard_name(shard))

    def regex(self) -> re.Pattern[str]:
        """Return a pattern that matches this file's full path and captures the shard number."""
        before, after = (re.escape(part) for part in self.pattern.split("{shard}"))
        return re.compile(rf"(?:^|/){before}(\d{{{SHARD_DIGITS},}}){after}$")


# In commit order: the stats file is the commit marker and comes last.
SHARD_FILES: tuple[ShardFile, ...] = (
    ShardFile("tar", "{shard}.tar"),
    ShardFile("parquet", "{shard}.parquet"),
    ShardFile("errors", ERRORS_DIR + "/{shard}.parquet", optional=True),
    ShardFile("stats", "{shard}_stats.json"),
)
STATS_FILE = SHARD_FILES[-1]
_BY_KIND = {shard_file.kind: shard_file for shard_file in SHARD_FILES}


def shard_name(shard: int) -> str:
    """Return the zero-padded name of a shard (``00042``)."""
    return f"{shard:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class ShardCheck:
    """The committed shards of an output, checked against one listing (``OutputLayout.check_shards``).

    Attributes:
        stats: the stats of each whole shard, by shard number, ascending.
        damaged: what is wrong with each damaged shard (``00001.tar is missing``), by shard number.
    """

    stats: dict[int, dict[str, Any]]
    damaged: dict[int, str]
    covered: dict[int, str] = field(default_factory=dict)  # shard -> the run whose index vouched for its stats
    uncommitted: list[str] = field(default_factory=list)  # full paths of files of shards without a stats file

    @property
    def whole(self) -> list[int]:
        """The numbers of the whole shards, ascending."""
        return list(self.stats)


def shard_damage(shard: int, stats: dict[str, Any], sizes: dict[str, int]) -> str | None:
    """Return what is wrong with a committed shard, or None when it is whole.

    Args:
        shard: the shard number.
        stats: its stats file; ``files`` maps each other file (name relative to the root) to
            its size in bytes. Stats written before ``files`` existed list nothing: then the
            shard's required files must be there, at any size.
        sizes: the size of every file under the root, by name relative to the root.
    """
    listed = stats.get("files")
    if not isinstance(listed, dict):
        listed = {f.name(shard): None for f in SHARD_FILES[:-1] if not f.optional}
    # An optional file (``_errors/NNNNN.parquet``) is a copy of rows the shard's Parquet holds:
    # one deleted by hand is no damage (retry-errors reads the records from the shard Parquet).
    copies = {f.name(shard) for f in SHARD_FILES if f.optional}
    problems = []
    for name, size in sorted(listed.items()):
        if name in copies:
            continue
        if name not in sizes:
            problems.append(f"{name} is missing")
        elif size is not None and sizes[name] != size:
            problems.append(f"{name} has {sizes[name]} bytes, its stats file says {size}")
    return "; ".join(problems) or None


def file_version(info: dict[str, Any]) -> str | None:
    """Return what identifies one write of a listed file beyond its size (S3 ETag, GCS generation, mtime), or None."""
    for key in ("ETag", "generation", "mtime", "LastModified"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def uncommitted(names: Iterable[str]) -> list[str]:
    """Return the names (relative to the root) among ``names`` that are files of shards without a stats file, sorted."""
    names = list(names)
    pattern = STATS_FILE.regex()
    committed = {int(match.group(1)) for name in names if (match := pattern.fullmatch("/" + name))}
    leftovers = []
    for shard_file in SHARD_FILES[:-1]:
        regex = shard_file.regex()
        leftovers += [name for name in names if (m := regex.fullmatch("/" + name)) and int(m.group(1)) not in committed]
    return sorted(leftovers)


class OutputLayout:
    """Names, listing and cleanup of one output root.

    Args:
        uri: the output URI (local folder or any fsspec URL).
        storage_options: fsspec options for the URI (ignored for local paths).

    Attributes:
        fs, root: the filesystem and the root path in it, built once.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self.fs: fsspec.AbstractFileSystem
        self.fs, self.root = filesystem(uri, self.storage_options)

    def __reduce__(self) -> tuple[Any, ...]:
        # Travels to Ray workers as its arguments; each process builds its own filesystem.
        return (OutputLayout, (self.uri, self.storage_options))

    # -- names -------------------------------------------------------------------
    def path(self, *names: str) -> str:
        """Return the full path of ``names`` under the root."""
        return join(self.fs, self.root, *names)

    def shard_file(self, kind: str, shard: int) -> str:
        """Return the full path of a shard's file of ``kind`` (see ``SHARD_FILES``).

        Raises:
            KeyError: no per-shard file of that kind.
        """
        return self.path(_BY_KIND[kind].name(shard))

    def shard_files(self, shard: int) -> list[str]:
        """Return the full paths of every file of a shard, in commit order."""
        return [self.path(shard_file.name(shard)) for shard_file in SHARD_FILES]

    def staging_dir(self, run_id: str | None = None) -> str:
        """Return the local staging folder of a run (``_tmp/<run id>``), or ``_tmp`` itself."""
        return self.path(TMP_DIR, run_id) if run_id else self.path(TMP_DIR)

    def run_record(self, run_id: str | None = None) -> str:
        """Return ``_runs/<run id>.json``, or ``_run.json`` (the latest run) without a run id."""
        return self.path(RUNS_DIR, f"{run_id}.json") if run_id else self.path(RUN_RECORD)

    def run_index(self, run_id: str) -> str:
        """Return a run's index of its committed shards' stats (``_runs/<run id>.shards.parquet``)."""
        return self.path(RUNS_DIR, f"{run_id}{INDEX_SUFFIX}")

    def run_keys(self, run_id: str) -> str:
        """Return the resume keys of a run's committed rows (``_runs/<run id>.keys.parquet``)."""
        return self.path(RUNS_DIR, f"{run_id}{KEYS_SUFFIX}")

    def diversity_table(self, run_id: str) -> str:
        """Return a run's near-duplicate pairs table (``_diversity/<run id>.parquet``)."""
        return self.path(DIVERSITY_DIR, f"{run_id}.parquet")

    @property
    def errors_dir(self) -> str:
        """The errors table's folder (``_errors``)."""
        return self.path(ERRORS_DIR)

    @property
    def retry_manifest(self) -> str:
        """The manifest of a retry-errors run in progress (``_retry.json``)."""
        return self.path(RETRY_MANIFEST)

    @property
    def lease(self) -> str:
        """The lease of the run writing the output now (``_lease.json``, ``pipelines.lease``)."""
        return self.path(LEASE)

    def claim_file(self, shard: int) -> str:
        """Return a shard number's claim (``_tmp/claims/NNNNN.json``): the run writing that shard now."""
        return self.path(TMP_DIR, CLAIMS, f"{shard_name(shard)}.json")

    @property
    def report(self) -> str:
        """The run report (``report.html``)."""
        return self.path(REPORT)

    def relative(self, path: str) -> str:
        """Return a full path under the root as a name relative to it (``_errors/00001.parquet``)."""
        return path[len(self.root) :].lstrip(self.fs.sep) if path.startswith(self.root) else path

    def display(self, *names: str) -> str:
        """Return a path under the root as the user wrote the URI (``s3://b/out/_errors``)."""
        return join(self.fs, self.uri, *names)

    # -- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget cached listings (s3fs caches per process; another process may have written)."""
        self.fs.invalidate_cache(self.root)

    def exists(self) -> bool:
        """Return whether the root exists (an object-store prefix nothing was written to does not)."""
        return bool(self.fs.exists(self.root))

    def _glob(self, shard_file: ShardFile) -> list[str]:
        found = self.fs.glob(self.path(shard_file.pattern.format(shard="*")))
        pattern = shard_file.regex()
        return sorted(path for path in found if pattern.search(path))

    def _numbered(self, shard_file: ShardFile) -> dict[int, str]:
        pattern = shard_file.regex()
        return {int(match.group(1)): path for path in self._glob(shard_file) if (match := pattern.search(path))}

    def committed_shards(self) -> list[int]:
        """Return the numbers of the committed shards (those with a stats file), ascending."""
        self.refresh()
        if not self.exists():
            return []
        return sorted(self._numbered(STATS_FILE))

    def check_shards(self) -> ShardCheck:
        """Return the committed shards split into whole and damaged ones, from one listing of the root.

        Each shard's stats come from the run index that covers it (see the module docstring),
        else from its stats file; the uncovered stats files are read in one call (concurrent
        requests on an object store). A shard whose stats file cannot be read or parsed is
        damaged too.
        """
        self.refresh()
        if not self.exists():
            return ShardCheck(stats={}, damaged={})
        listing = {self.relative(path): info for path, info in self.fs.find(self.root, detail=True).items()}
        sizes = {name: int(info.get("size") or 0) for name, info in listing.items()}
        pattern = STATS_FILE.regex()
        shards = sorted(int(match.group(1)) for name in sizes if (match := pattern.fullmatch("/" + name)))
        indexed = self._indexed_stats(listing)
        stats: dict[int, dict[str, Any]] = {}
        covered: dict[int, str] = {}
        unread = []
        for shard in shards:
            entry, name = indexed.get(shard), STATS_FILE.name(shard)
            if entry is not None and entry[2] == sizes[name] and entry[3] in (None, file_version(listing[name])):
                stats[shard], covered[shard] = json.loads(entry[1]), entry[0]
            else:
                unread.append(shard)
        paths = [self.shard_file("stats", shard) for shard in unread]
        contents = self.fs.cat(paths, on_error="return") if paths else {}  # fsspec refuses an empty list
        for shard in unread:
            content = contents.get(self.shard_file("stats", shard))
            try:
                parsed = json.loads(content) if isinstance(content, bytes) else None
            except ValueError:
                parsed = None
            stats[shard] = parsed if isinstance(parsed, dict) else {}
        damaged: dict[int, str] = {}
        for shard in shards:
            if not stats[shard]:
                damaged[shard] = f"{STATS_FILE.name(shard)} cannot be read"
            elif (damage := shard_damage(shard, stats[shard], sizes)) is not None:
                damaged[shard] = damage
        whole = {shard: stats[shard] for shard in shards if shard not in damaged}
        return ShardCheck(stats=whole, damaged=damaged,
                          covered={shard: run for shard, run in covered.items() if shard in whole},
                          uncommitted=[self.path(name) for name in uncommitted(sizes)])

    def _indexed_stats(self, listing: dict[str, Any]) -> dict[int, tuple[str, str, int, str | None]]:
        """Return ``shard -> (run id, stats JSON, stats file size, version)`` from the listed run indexes.

        One read per run (in one call); a later run's entry (by run id, which starts with its
        start time) replaces an earlier one's. A run counts only with both its index and keys
        files listed; an index that cannot be read is skipped (its shards' stats files are read).
        """
        import pyarrow.parquet as pq

        runs = sorted(name[len(RUNS_DIR) + 1 : -len(INDEX_SUFFIX)] for name in listing
                      if name.startswith(RUNS_DIR + "/") and name.endswith(INDEX_SUFFIX) and name.count("/") == 1)
        runs = [run for run in runs if f"{RUNS_DIR}/{run}{KEYS_SUFFIX}" in listing]
        paths = [self.run_index(run) for run in runs]
        contents = self.fs.cat(paths, on_error="return") if paths else {}
        indexed: dict[int, tuple[str, str, int, str | None]] = {}
        for run, path in zip(runs, paths):
            content = contents.get(path)
            try:
                table = pq.read_table(io.BytesIO(content)) if isinstance(content, bytes) else None
            except (OSError, ValueError, pa.ArrowException):
                table = None
            if table is None:
                continue
            for shard, text, size, version in zip(*(table.column(name).to_pylist() for name in INDEX_COLUMNS)):
                indexed[int(shard)] = (run, text, int(size), version)
        return indexed

    def files(self, kind: str) -> list[str]:
        """Return the full paths of every existing per-shard file of ``kind``, in shard order."""
        numbered = self._numbered(_BY_KIND[kind])
        return [numbered[shard] for shard in sorted(numbered)]

    def read_json(self, path: str) -> dict[str, Any]:
        """Return the JSON object stored at a full ``path`` under the root."""
        return json.loads(self.fs.cat_file(path))

    def shard_schema(self, shard: int) -> pa.Schema:
        """Return the Arrow schema of a committed shard's Parquet (read from its footer)."""
        import pyarrow.parquet as pq

        with self.fs.open(self.shard_file("parquet", shard), "rb") as handle:
            return pq.read_schema(handle)

    def read_stats(self, shard: int) -> dict[str, Any]:
        """Return a committed shard's stats (``count``, ``successes``, ``failures``, ``filtered``, ...)."""
        return self.read_json(self.shard_file("stats", shard))

    def all_stats(self) -> list[dict[str, Any]]:
        """Return the stats of every whole committed shard, in shard order (``check_shards``: the run indexes)."""
        return list(self.check_shards().stats.values())

    def last_run(self) -> dict[str, Any] | None:
        """Return ``_run.json`` (the latest run's record), or None when there is none."""
        path = self.run_record()
        return self.read_json(path) if self.fs.exists(path) else None

    def run_records(self) -> list[dict[str, Any]]:
        """Return every run's record (``_runs/*.json``), oldest first (by start time, then run id)."""
        folder = self.path(RUNS_DIR)
        if not self.fs.exists(folder):
            return []
        records = [self.read_json(path) for path in self.fs.glob(self.path(RUNS_DIR, "*.json"))]
        return sorted(records, key=lambda record: (str(record.get("started", "")), str(record.get("run_id", ""))))

    # -- writing and cleanup ----------------------------------------------------------
    def write_json(self, path: str, payload: dict[str, Any]) -> None:
        """Write ``payload`` as JSON at a full ``path`` under the root, atomically."""
        parent = path.rsplit(self.fs.sep, 1)[0]
        if parent != self.root:
            self.fs.makedirs(parent, exist_ok=True)
        with write_once(self.fs, path, staging_dir=self.staging_dir()) as f:
            f.write(json.dumps(payload, indent=2, default=str).encode())

    def uncommitted_files(self) -> list[str]:
        """Return the files of shards that never committed (a run died between publish and commit), one listing."""
        self.refresh()
        if not self.exists():
            return []
        return [self.path(name) for name in uncommitted(self.relative(path) for path in self.fs.find(self.root))]

    def remove_shard(self, shard: int) -> None:
        """Remove a shard's files: its stats file first, so a crash midway leaves only uncommitted files."""
        for path in reversed(self.shard_files(shard)):
            if self.fs.exists(path):
                self.fs.rm(path)

    def is_owned(self, path: str) -> bool:
        """Return whether ``path`` (a full path under the root) is a file pixelmill writes there.

        Owned: every per-shard file (``SHARD_FILES``), the run records and indexes, the near-duplicate
        tables (``_diversity/*.parquet``), the retry manifest, the lease, the report and
        anything under ``_tmp/``. Anything else (a user's notes,
        an input file placed in the output) is not pixelmill's to delete.
        """
        relative = self.relative(path)
        if relative in (RUN_RECORD, RETRY_MANIFEST, LEASE, REPORT):
            return True
        if relative.startswith(TMP_DIR + "/"):
            return True
        for folder, suffix in ((RUNS_DIR, ".json"), (RUNS_DIR, ".parquet"), (DIVERSITY_DIR, ".parquet")):
            if relative.startswith(folder + "/") and relative.endswith(suffix) and relative.count("/") == 1:
                return True
        return any(shard_file.regex().fullmatch("/" + relative) for shard_file in SHARD_FILES)

    def remove_tmp(self) -> None:
        """Delete ``_tmp/`` (this run's finished temporaries, or a dead run's leftovers)."""
        tmp = self.staging_dir()
        if self.fs.exists(tmp):
            self.fs.rm(tmp, recursive=True)

    def is_local(self) -> bool:
        """Return whether the output is on the local disk (where a rename is atomic)."""
        return is_local(self.fs)
