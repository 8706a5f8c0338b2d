"""Storage access: every path is a URL resolved through fsspec, with the job's options.

This is the one place that knows about credentials: AWS variables are passed to
Ray workers by the runtime environment, and secret-looking option values are
redacted before anything is logged or written.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from pipelines.resilience import with_storage_retries

__all__ = ["filesystem", "is_local", "join", "redact", "storage_env_vars", "write_once"]

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
)
_SECRET_WORDS = ("secret", "token", "password", "key", "credential")


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a URI, using the job's storage options."""
    options = dict(storage_options or {})
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    # Options are written for object storage; a local path must not receive them.
    if protocol in ("file", "local"):
        options = {}
    options = with_storage_retries(uri, options)
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
        yield writer
    except BaseException:
        writer.discard()
        raise
    writer.commit()


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
        elif any(word in key.lower() for word in _SECRET_WORDS):
            clean[key] = "***"
        else:
            clean[key] = value
    return clean


def storage_env_vars() -> dict[str, str]:
    """Return the storage variables set in this process, to forward to Ray workers."""
    return {name: os.environ[name] for name in STORAGE_ENV_VARS if name in os.environ}
