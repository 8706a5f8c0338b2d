"""Every fault-tolerance setting of a run, in one place, with the edges it guards.

What Ray and Ray Data do by default, and what pixelmill sets on top:

* **Stage actors** (``map_batches`` with an actor pool): Ray Data creates them
  with ``max_restarts=-1`` and ``max_task_retries=-1``, so a dead actor process
  (killed, node lost) is restarted and its in-flight batches are resubmitted.
  pixelmill bounds the task retries (:data:`ACTOR_TASK_RETRIES`): a batch that
  kills its process every time would otherwise loop forever.
* **Python exceptions inside an actor** are *not* retried by Ray Data
  (``DataContext.actor_task_retry_on_errors`` is off, and pixelmill keeps it
  off: a model error is deterministic, retrying repeats it).  Instead the
  stages isolate the failing rows (``actors.rowerrors``) and write them as
  error records.  The one exception that must not stay in-process is a
  *sticky device error* (an illegal CUDA memory access, a device-side
  assert): the CUDA context is broken for good but the actor would live on,
  failing every later batch.  :func:`is_sticky_device_error` recognises it
  and the stage exits its process, so Ray restarts the actor on a fresh
  context and retries the batch.
* **GPU out of memory** is not sticky: the row-isolation splits the batch in
  halves (after freeing the cache) until the pieces fit.
* **Plain tasks** (read, row preparation, image encoding, the shard writes)
  run with Ray Data's ``max_retries=-1`` for system failures (worker or node
  death).  The shard write is idempotent (a retried task rewrites the same
  shard name from the same block), so a retry cannot double rows.
* ``DataContext.max_errored_blocks`` stays **0**: above 0 Ray Data drops whole
  blocks that raise, silently, which is exactly how rows get lost.
* **Object storage**: the first request (the preflight's probe of each bucket)
  is sent once with a short connect timeout (:func:`with_probe_settings`), so a
  wrong endpoint fails in seconds; after it, transient 5xx/throttling answers are retried by the
  client with backoff (:func:`with_storage_retries`, applied by
  ``pipelines.storage.filesystem`` to every access: inputs, outputs, model
  folders, tiny VAEs, AdaIN weights, style images), and Ray Data's own
  readers retry the error messages in :data:`RETRIED_IO_ERRORS`.
* A run that stops making progress (Ray Data can hang after many faults) is
  stopped by the runner's watchdog (``ray.stall_timeout_s``).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "ACTOR_TASK_RETRIES",
    "RETRIED_IO_ERRORS",
    "STICKY_DEVICE_ERROR_EXIT_CODE",
    "configure_data_context",
    "is_out_of_memory",
    "is_sticky_device_error",
    "stage_remote_args",
    "with_probe_settings",
    "with_storage_retries",
]

# Restarts of a stage actor are unbounded (a long run on preemptible nodes
# loses actors many times); retries of one batch are not.
ACTOR_TASK_RETRIES = 4
STICKY_DEVICE_ERROR_EXIT_CODE = 70

# Error messages (regexes) on which Ray Data's file readers retry, on top of its defaults.
RETRIED_IO_ERRORS = (
    r"SlowDown",
    r"ServiceUnavailable",
    r"InternalError",
    r"RequestTimeout",
    r"\b50[0-4]\b",
)

# Messages of CUDA errors after which the process's CUDA context is unusable.
_STICKY_DEVICE_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "misaligned address",
    "unspecified launch failure",
    "uncorrectable ECC error",
    "CUDA error: an illegal instruction",
    "CUBLAS_STATUS_EXECUTION_FAILED",
)

# s3fs/botocore client retries: botocore's "standard" mode retries 5xx,
# throttling (SlowDown, 503) and connection errors with exponential backoff and jitter.
_S3_RETRIES = {"max_attempts": 10, "mode": "standard"}
# The first request of a run (the preflight's probe of the input and output buckets) is sent
# once, with a short connect timeout: a refused connection or an unknown host is a wrong
# endpoint, not a transient fault, and ten attempts with backoff took 198 s to say nothing.
PROBE_CONNECT_TIMEOUT_S = 5
_S3_PROBE = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": PROBE_CONNECT_TIMEOUT_S}


def stage_remote_args() -> dict[str, Any]:
    """Return the Ray actor options for every stage's actor pool.

    Ray Data 2.60 takes them only as ``**ray_remote_args`` of ``map_batches``
    (deprecated for 2.64, with no named parameter for restarts yet).
    """
    return {"max_restarts": -1, "max_task_retries": ACTOR_TASK_RETRIES}


def configure_data_context(context: Any) -> None:
    """Set the Ray Data options a pixelmill run depends on (see the module docstring)."""
    context.max_errored_blocks = 0
    context.actor_task_retry_on_errors = False
    context.retried_io_errors = list(dict.fromkeys([*context.retried_io_errors, *RETRIED_IO_ERRORS]))


def is_sticky_device_error(error: BaseException) -> bool:
    """Return whether ``error`` leaves the CUDA context broken (the process must exit)."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(marker in text for marker in _STICKY_DEVICE_ERRORS)


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether ``error`` is a device out-of-memory error (split the batch and go on)."""
    name = type(error).__name__
    return name == "OutOfMemoryError" or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def with_storage_retries(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Return storage options with client-side retries for transient S3 errors added.

    Values the user set win; only missing keys are filled in.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return storage_options
    options = copy.deepcopy(storage_options)
    config = options.setdefault("config_kwargs", {})
    config.setdefault("retries", dict(_S3_RETRIES))
    return options


def with_probe_settings(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Return storage options for the preflight's probe: one attempt, a short connect timeout.

    These replace the user's retry and timeout settings: the probe must answer in seconds.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return storage_options
    options = copy.deepcopy(storage_options)
    options.setdefault("config_kwargs", {}).update(copy.deepcopy(_S3_PROBE))
    return options
