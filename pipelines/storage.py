"""Storage access: every path is a URL resolved through fsspec, with the job's options.

Every byte pixelmill reads or writes goes through :func:`filesystem`, so the
client retries of :func:`pipelines.resilience.with_storage_retries` cover all of
it: prompt tables, output shards, and the files the stages load.  Stages never
open a remote URI themselves; they ask this module for a local copy:

- :func:`sync_folder`: a model folder (diffusers pipeline, tiny VAE, CLIP
  model), copied once per node into ``cache_dir/remote/<sha256(uri)[:16]>``;
- :func:`sync_file`: one file (AdaIN weights), copied once per node into
  ``cache_dir/files/<sha256(uri)[:16]>/<name>``;
- :func:`read_bytes`: the bytes of a small object (a style image).

Local paths and ``file://`` URIs are used in place.  A copy is built under a file
lock in a temporary sibling folder and renamed into place (:func:`publish_once`),
so concurrent actors on a node download once and never see half a copy.

This is also the one place that knows about credentials: AWS variables are passed
to Ray workers by the runtime environment, and secret-looking option values are
redacted before anything is logged or written.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, cast

import fsspec
from fsspec.core import url_to_fs

from pipelines.resilience import with_probe_settings, with_storage_retries

__all__ = [
    "DEFAULT_CACHE_DIR",
    "MODEL_MARKERS",
    "WriteConflict",
    "create_new",
    "delete_tagged",
    "exclusive_lock",
    "filesystem",
    "is_local",
    "join",
    "publish_once",
    "read_bytes",
    "read_tagged",
    "redact",
    "replace_tagged",
    "storage_env_vars",
    "sync_file",
    "sync_folder",
    "write_once",
]

# Standard variables that boto/s3fs read; forwarded to every Ray worker.
STORAGE_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    # The Hugging Face Hub (model URIs such as stabilityai/sd-turbo): token, offline mode, mirror.
    # Not its cache paths (HF_HOME, HF_HUB_CACHE): a local Ray's workers inherit them from the
    # driver, and a cluster's nodes have their own disks.
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
)
# A key naming a secret: these words anywhere in it, but not ``tokens`` (``llm.max_new_tokens`` is a count).
_SECRET_KEY = re.compile(r"secret|token(?!s)|password|key|credential")

# A model folder is complete when it holds a diffusers pipeline index or a transformers config.
MODEL_MARKERS = ("model_index.json", "config.json")
# Node-local cache root for single files when the caller names none (``~`` expanded on the node).
DEFAULT_CACHE_DIR = "~/.cache/pixelmill"


def filesystem(
    uri: str, storage_options: dict[str, Any] | None = None, *, probe: bool = False
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a URI, using the job's storage options.

    Args:
        probe: a client for the preflight's first request (one attempt, short connect
            timeout, ``pipelines.resilience.with_probe_settings``) instead of the run's retries.
    """
    options = dict(storage_options or {})
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    # Options are written for object storage; a local path must not receive them.
    if protocol in ("file", "local"):
        options = {}
    options = with_probe_settings(uri, options) if probe else with_storage_retries(uri, options)
    fs, path = url_to_fs(os.path.expanduser(uri), **options)
    return fs, path


def join(fs: fsspec.AbstractFileSystem, base: str, *names: str) -> str:
    """Join path parts with the filesystem's separator."""
    parts = [base.rstrip(fs.sep)] + [name.strip(fs.sep) for name in names]
    return fs.sep.join(parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Return whether ``fs`` is the local disk (where a rename is atomic)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


@contextmanager
def write_once(fs: fsspec.AbstractFileSystem, path: str, *, staging_dir: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    A plain ``fs.open(path, "wb")`` uploads whatever was written when an
    exception leaves the ``with`` block, leaving a truncated object.  Here:

    * object stores: the bytes are held in memory and uploaded after the block with
      ``fs.pipe_file`` (s3fs: one PUT, which is atomic, up to 100 MiB; above that a
      multipart upload whose parts go up concurrently, invisible until completed and
      aborted on error), or, for files over :data:`IN_MEMORY_LIMIT`, streamed as an
      ``autocommit=False`` multipart upload that is completed after the block and
      aborted on any exception;
    * local disk: the bytes go to a file in ``staging_dir`` (same filesystem as
      the destination) that is renamed into place, an atomic step.  fsspec's
      own local ``autocommit=False`` stages in the system temp folder, from
      which a move across filesystems is a non-atomic copy.
    """
    if is_local(fs):
        fs.makedirs(staging_dir, exist_ok=True)
        staged = join(fs, staging_dir, f"{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with fs.open(staged, "wb") as f:
                yield f
            os.replace(staged, path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
        return
    writer = _ObjectWriter(fs, path)
    try:
        # a RawIOBase is a binary file object, but typeshed does not derive it from IO[bytes]
        yield cast(IO[bytes], writer)
    except BaseException:
        writer.discard()
        raise
    writer.commit()


# --- conditional writes: the lease (pipelines.lease) and the shard claims (pipelines.sink) ----------


class WriteConflict(OSError):
    """A conditional write found its path in another state than the caller expected."""


def _tag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return hasattr(fs, "call_s3")  # s3fs: PutObject takes If-None-Match / If-Match


def read_tagged(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, str] | None:
    """Return ``(content, tag)`` of a small file, or None when there is none.

    The tag names this version of the file for :func:`replace_tagged`: its ETag on S3
    (read with ``If-Match`` on it, so content and tag belong together), the MD5 of its
    content elsewhere.
    """
    try:
        if _is_s3(fs):
            return _read_s3(fs, path)
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return data, _tag(data)


def _read_s3(fs: Any, path: str, attempts: int = 5) -> tuple[bytes, str]:
    from s3fs.utils import FileExpired

    for attempt in range(attempts):
        fs.invalidate_cache(path)
        try:
            with fs.open(path, "rb") as f:  # s3fs reads with If-Match on the ETag its HEAD saw
                return f.read(), str(f.details["ETag"]).strip('"')
        except FileExpired:  # replaced between the HEAD and the GET: read the new version
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def create_new(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, staging_dir: str) -> str:
    """Write ``data`` at ``path`` only if nothing is there (atomic); return the new version's tag.

    Local disk: staged in ``staging_dir`` and hard-linked to ``path`` (``link`` fails when
    the name exists, and the file is complete before it has its name).  S3: one PUT with
    ``If-None-Match: *``.  Other object stores: a check, then a write (not atomic).

    Raises:
        WriteConflict: ``path`` exists (a lost response retried by the client counts as ours
            when the content there is ``data``).
    """
    if is_local(fs):
        with _staged(fs, path, data, staging_dir) as staged:
            try:
                os.link(staged, path)
            except FileExistsError:
                raise WriteConflict(f"{path} exists") from None
        return _tag(data)
    if _is_s3(fs):
        return _put_s3(fs, path, data, IfNoneMatch="*")
    if fs.exists(path):
        raise WriteConflict(f"{path} exists")
    fs.pipe_file(path, data)
    return _tag(data)


def replace_tagged(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, tag: str, staging_dir: str) -> str:
    """Replace the file at ``path`` with ``data`` only if its version is still ``tag``; return the new tag.

    Local disk: compare and ``os.replace`` under an exclusive ``flock`` on the parent folder
    (every local replace takes it; a create cannot slip in because the name exists).  S3: one
    PUT with ``If-Match: <ETag>``.  Other object stores: a check, then a write (not atomic).

    Raises:
        WriteConflict: ``path`` is gone or holds another version.
    """
    if _is_s3(fs):
        return _put_s3(fs, path, data, IfMatch=f'"{tag}"')
    if is_local(fs):
        with _folder_lock(os.path.dirname(path)):
            _check_tag(fs, path, tag)
            with _staged(fs, path, data, staging_dir) as staged:
                os.replace(staged, path)
        return _tag(data)
    _check_tag(fs, path, tag)
    fs.pipe_file(path, data)
    return _tag(data)


def delete_tagged(fs: fsspec.AbstractFileSystem, path: str, *, tag: str) -> None:
    """Delete the file at ``path`` if its version is still ``tag`` (local disk: atomic under the folder lock).

    Raises:
        WriteConflict: ``path`` is gone or holds another version.
    """
    if is_local(fs):
        with _folder_lock(os.path.dirname(path)):
            _check_tag(fs, path, tag)
            os.remove(path)
        return
    _check_tag(fs, path, tag)  # S3's conditional DeleteObject is not everywhere; the window is one request
    fs.rm(path)


def _check_tag(fs: fsspec.AbstractFileSystem, path: str, tag: str) -> None:
    found = read_tagged(fs, path)
    if found is None or found[1] != tag:
        raise WriteConflict(f"{path} changed (expected version {tag})")


def _put_s3(fs: Any, path: str, data: bytes, **condition: str) -> str:
    bucket, key, _ = fs.split_path(path)
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as error:
        # s3fs keeps botocore's error as the cause: 412 PreconditionFailed, or 409
        # ConditionalRequestConflict (another conditional write to the key was in flight)
        code = getattr(error.__cause__, "response", {}).get("Error", {}).get("Code")
        if isinstance(error, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            found = read_tagged(fs, path)
            if found is not None and found[0] == data:  # our own PUT, whose response was lost and retried
                return found[1]
            raise WriteConflict(f"{path}: {error}") from None
        raise
    finally:
        fs.invalidate_cache(path)
    return str(response["ETag"]).strip('"')


@contextmanager
def _staged(fs: fsspec.AbstractFileSystem, path: str, data: bytes, staging_dir: str) -> Iterator[str]:
    """Yield a complete local copy of ``data`` in ``staging_dir``, removed after the block."""
    fs.makedirs(staging_dir, exist_ok=True)
    staged = join(fs, staging_dir, f"{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with open(staged, "wb") as f:
            f.write(data)
        yield staged
    finally:
        if os.path.exists(staged):
            os.remove(staged)


@contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a local folder itself (no lock file to leave behind)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing the descriptor drops the lock


# Files up to this size are built in memory and uploaded in one call after they are
# complete; bigger ones switch to a streamed multipart upload.  Measured by
# ``bench.sink``: streaming a 50 MiB shard while its tar is built (parts sent one after
# another, interleaved with the tar's CPU work) took 1.8 s against 0.65 s for building it in
# memory and uploading it in one call.  A write task already holds its shard's rows in
# memory, so the buffer at most doubles that; past this limit memory wins over speed.
IN_MEMORY_LIMIT = 256 * 2**20


class _ObjectWriter(io.RawIOBase):
    """A write-only file for object storage that is published by ``commit`` and nothing else.

    It holds the bytes in memory until they pass :data:`IN_MEMORY_LIMIT`; ``commit`` then
    uploads them with ``pipe_file``.  Past the limit it streams them as an fsspec
    ``autocommit=False`` multipart upload, which S3 does not show until it completes.
    ``discard`` aborts that upload (or just drops the buffer).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.buffer: io.BytesIO | None = io.BytesIO()
        self.upload: Any = None
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.buffer is not None and self.buffer.tell() + len(view) > IN_MEMORY_LIMIT:
            self.upload = self.fs.open(self.path, "wb", autocommit=False)
            self.upload.write(self.buffer.getbuffer())
            self.buffer = None
        (self.upload if self.buffer is None else self.buffer).write(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        if self.upload is not None and not self.upload.closed:
            self.upload.flush()  # sends a part once s3fs holds a block's worth

    def commit(self) -> None:
        if self.buffer is not None:
            self.fs.pipe_file(self.path, self.buffer.getvalue())
        else:
            self.upload.close()
            self.upload.commit()
        super().close()

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.discard()
            self.upload.closed = True  # else its finalizer's close() would upload the discarded buffer
        self.buffer = None
        super().close()


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of storage options with secret-looking values replaced by ``***``."""
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            clean[key] = redact(value)
        elif _SECRET_KEY.search(key.lower()):
            clean[key] = "***"
        else:
            clean[key] = value
    return clean


def storage_env_vars() -> dict[str, str]:
    """Return the storage variables set in this process, to forward to Ray workers."""
    return {name: os.environ[name] for name in STORAGE_ENV_VARS if name in os.environ}


# --- local copies of remote files: models, tiny VAEs, AdaIN weights, style images --------------


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Return the whole content of the file at ``uri`` (local or remote).

    Raises:
        FileNotFoundError: nothing at ``uri``.
        IsADirectoryError: ``uri`` is a directory, a prefix or a bucket root, not a file.
    """
    fs, path = filesystem(uri, storage_options)
    try:
        return fs.cat_file(path)
    except Exception as error:  # a directory fails differently per filesystem (S3's bucket root: a bad key)
        if _is_directory(fs, path):
            raise IsADirectoryError(f"{uri} is a directory/prefix, not a file") from None
        if isinstance(error, IsADirectoryError):
            raise IsADirectoryError(f"{uri} is a directory/prefix, not a file") from None
        raise


def _is_directory(fs: Any, path: str) -> bool:
    """Whether ``path`` is a directory/prefix (asked only after a read failed; never raises)."""
    try:
        return bool(fs.isdir(path))
    except Exception:  # noqa: BLE001 - the read's own error is the one to report
        return False


def sync_folder(
    uri: str,
    *,
    cache_dir: str,
    storage_options: dict[str, Any] | None = None,
    markers: tuple[str, ...] = MODEL_MARKERS,
) -> str:
    """Return a local folder with the content of the folder at ``uri``.

    A local path or ``file://`` URI is returned in place; any other fsspec URL is copied
    into ``cache_dir/remote/<sha256(uri)[:16]>`` once per node (later calls, from any
    process, reuse the copy without touching the network).  A folder counts as
    complete when it holds one of ``markers``.

    Raises:
        FileNotFoundError: the location holds none of ``markers``.
    """
    missing = f"no {' or '.join(markers)}"
    fs, root = filesystem(uri, storage_options)
    if is_local(fs):
        if not _has_marker(root, markers):
            raise FileNotFoundError(f"model {uri!r} is not a model folder: {missing} in {root!r}")
        return root
    target = os.path.join(cache_dir, "remote", _uri_key(uri))
    if _has_marker(target, markers):  # cache hit: no network access at all
        return target
    root = root.rstrip("/")
    if not any(fs.exists(f"{root}/{marker}") for marker in markers):
        raise FileNotFoundError(f"model {uri!r} is not a model folder: {missing} under it")

    def fill(folder: str) -> None:
        # A trailing slash on the source copies its content into ``folder``, not a subfolder.
        fs.get(f"{root}/", f"{folder}/", recursive=True)

    return publish_once(target, fill, complete=lambda folder: _has_marker(folder, markers))


def sync_file(uri: str, *, cache_dir: str | None = None, storage_options: dict[str, Any] | None = None) -> str:
    """Return a local path holding the file at ``uri``.

    A local path or ``file://`` URI is returned in place; any other fsspec URL is copied
    once per node into ``cache_dir/files/<sha256(uri)[:16]>/<file name>`` (``cache_dir``
    defaults to :data:`DEFAULT_CACHE_DIR`).

    Raises:
        FileNotFoundError: nothing at ``uri``.
    """
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no file at {uri!r}")
        return path
    name = posixpath.basename(path.rstrip("/")) or "file"
    target = os.path.join(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR), "files", _uri_key(uri))
    local = os.path.join(target, name)
    if os.path.isfile(local):  # cache hit: no network access at all
        return local
    if not fs.isfile(path):
        raise FileNotFoundError(f"no file at {uri!r}")
    publish_once(target, lambda folder: fs.get_file(path, os.path.join(folder, name)),
                 complete=lambda folder: os.path.isfile(os.path.join(folder, name)))
    return local


def _uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _has_marker(folder: str, markers: tuple[str, ...]) -> bool:
    return any(os.path.isfile(os.path.join(folder, marker)) for marker in markers)


@contextmanager
def exclusive_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    ``flock`` locks are per open file description, so they serialise both separate
    processes (several actors on one node) and threads that open the file separately.
    """
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_once(target: str, fill: Callable[[str], None], *, complete: Callable[[str], bool]) -> str:
    """Return the local folder ``target``, creating it first with ``fill(tmp_dir)`` unless ``complete(target)``.

    ``fill`` writes the content into an empty temporary sibling of ``target``, which is
    then renamed onto ``target`` (atomic on one filesystem), so readers never see a
    half-written folder.  An exclusive lock on ``target + ".lock"`` makes concurrent
    callers wait for the first one instead of doing the work again.

    Raises:
        RuntimeError: ``fill`` returned but the folder is not ``complete``.
    """
    if complete(target):  # fast path: no lock once the folder exists
        return target
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    with exclusive_lock(target + ".lock"):
        if complete(target):  # another process finished while we waited
            return target
        tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
        try:
            fill(tmp)
            if not complete(tmp):
                raise RuntimeError(f"the copy for {target!r} is incomplete")
            if os.path.isdir(target):  # leftover of a crash, without its marker
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
