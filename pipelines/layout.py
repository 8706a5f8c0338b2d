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
                            exactly when its stats file exists
    _run.json               the latest run's record (summary, equation, spec)
    _runs/<run id>.json     one record per run
    _retry.json             a retry-errors run in progress
    _lease.json             the run that is writing now
    _tmp/<run id>/          local staging (renamed into place)
    _tmp/claims/00000.json  the run writing shard 00000 now (removed when it commits)
    report.html, README.md  the run report and the dataset card

``SHARD_FILES`` lists the per-shard files in commit order. A new per-shard file is one
entry there (and one writer in ``pipelines.sink``): cleanup, listing and the report
pick it up from here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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
    "ShardFile",
    "shard_name",
]

SHARD_DIGITS = 5
TMP_DIR = "_tmp"
ERRORS_DIR = "_errors"
RUNS_DIR = "_runs"
RUN_RECORD = "_run.json"
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
        """Return the stats of every committed shard, in shard order."""
        return [self.read_json(path) for path in self.files("stats")]

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
        """Return the files of shards that never committed (a run died between publish and commit)."""
        committed = set(self.committed_shards())
        leftovers = []
        for shard_file in SHARD_FILES[:-1]:
            leftovers += [path for shard, path in self._numbered(shard_file).items() if shard not in committed]
        return sorted(leftovers)

    def is_owned(self, path: str) -> bool:
        """Return whether ``path`` (a full path under the root) is a file pixelmill writes there.

        Owned: every per-shard file (``SHARD_FILES``), the run records, the retry manifest,
        the lease, the report and anything under ``_tmp/``. Anything else (a user's notes,
        an input file placed in the output) is not pixelmill's to delete.
        """
        relative = path[len(self.root) :].lstrip(self.fs.sep) if path.startswith(self.root) else path
        if relative in (RUN_RECORD, RETRY_MANIFEST, LEASE, REPORT):
            return True
        if relative.startswith(TMP_DIR + "/"):
            return True
        if relative.startswith(RUNS_DIR + "/") and relative.endswith(".json") and relative.count("/") == 1:
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
