"""Storage access: every path is a URL resolved through fsspec, with the job's options.

This is the one place that knows about credentials: AWS variables are passed to
Ray workers by the runtime environment, and secret-looking option values are
redacted before anything is logged or written.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

__all__ = ["filesystem", "join", "redact", "storage_env_vars"]

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
    fs, path = url_to_fs(os.path.expanduser(uri), **options)
    return fs, path


def join(fs: fsspec.AbstractFileSystem, base: str, *names: str) -> str:
    """Join path parts with the filesystem's separator."""
    parts = [base.rstrip(fs.sep)] + [name.strip(fs.sep) for name in names]
    return fs.sep.join(parts)


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
