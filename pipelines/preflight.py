"""What is checked from the driver before any work: storage can be reached, every model URI loads.

Each check costs one or two cheap requests and raises with one line naming the spec key, the
URI and what is wrong; ``pipelines.runner`` runs them before Ray starts (a failure is a
``PreflightError``, exit 2) and ``pixelmill validate`` runs :func:`check_models`.

- **Storage** (:func:`ask`, :func:`check_reachable`, :func:`check_output_reachable`): the first
  request to a bucket is a HEAD sent once with a short connect timeout (``pipelines.storage.filesystem``
  with ``probe=True``), so a wrong endpoint fails in seconds, naming it; a 5xx or throttling
  answer is asked again with the run's retries. An output bucket that
  does not exist is an error: pixelmill creates no buckets (s3fs ``makedirs`` would), only
  folders on local disk; object stores need none inside a bucket.
- **Models** (:func:`check_models`): ``builtin:NAME`` is a known name; a Hub id
  (``pipelines.hub``) is cached or on the Hub; a folder (local or object storage) holds
  ``model_index.json`` or ``config.json``; AdaIN weights are files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pipelines.hub import hub_commit, hub_model
from pipelines.layout import OutputLayout
from pipelines.spec import JobSpec
from pipelines.storage import MODEL_MARKERS, filesystem, is_local, join

__all__ = ["ModelUnavailable", "StorageUnreachable", "ask", "check_models", "check_output_reachable",
           "check_reachable", "model_uris"]

T = TypeVar("T")


class StorageUnreachable(OSError):
    """A storage endpoint refused the connection or did not answer, or a bucket does not exist."""


class ModelUnavailable(OSError):
    """A model URI of the spec names nothing that can be loaded."""


def _is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` says the endpoint was not reached (refused, unknown host, timeout), by class name.

    Class names, not classes: botocore, aiohttp, gcsfs and adlfs each have their own.
    """
    return any("Connect" in cls.__name__ or "Timeout" in cls.__name__ for cls in type(error).__mro__)


def _endpoint(fs: Any, uri: str) -> str:
    """The endpoint a filesystem talks to (s3fs: the client's URL), else the URI's scheme."""
    url = getattr(getattr(getattr(fs, "s3", None), "meta", None), "endpoint_url", None)
    return str(url) if url else uri.split("://", 1)[0] + "://"


def ask(uri: str, storage_options: dict[str, Any], question: Callable[[Any, str], T], *, key: str) -> T:
    """Return ``question(fs, path)`` for ``uri``, asked first through the one-attempt probe client.

    A connection the endpoint refused (or a host that does not answer) is final at once; any
    other failure of the probe (a 503 SlowDown, a 500) is asked again through the run's
    retrying client, so throttling at start-up is retried as it is during the run.

    Raises:
        StorageUnreachable: the endpoint was not reached, named in the message.
        Exception: whatever ``question`` raised through the retrying client (``FileNotFoundError`` at once).
    """
    fs, path = filesystem(uri, storage_options, probe=True)
    try:
        return question(fs, path)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - sorted below: unreachable or worth a retry
        if _is_connection_error(error):
            raise StorageUnreachable(
                f"{key}: cannot connect to the storage endpoint {_endpoint(fs, uri)} for {uri}: "
                f"{type(error).__name__}: {error}"
            ) from error
    return question(*filesystem(uri, storage_options))


def check_reachable(uri: str, storage_options: dict[str, Any], *, key: str, bucket_must_exist: bool) -> None:
    """Probe the bucket of ``uri`` (one HEAD, :func:`ask`); local paths are not probed.

    Args:
        key: the spec key that holds ``uri``, for the message.
        bucket_must_exist: a missing bucket or a refused HEAD is an error (else the caller's
            own listing reports it).

    Raises:
        StorageUnreachable: the endpoint was not reached, or the bucket does not exist.
        OSError: any other refusal of the probe, when ``bucket_must_exist`` (for example no permission).
    """
    if uri.split("://", 1)[0] in ("file", "local") or "://" not in uri:
        return
    try:
        ask(uri, storage_options, lambda fs, path: fs.info(path.split("/", 1)[0]), key=key)
    except StorageUnreachable:
        raise
    except FileNotFoundError:
        if bucket_must_exist:
            bucket = filesystem(uri, storage_options, probe=True)[1].split("/", 1)[0]
            raise StorageUnreachable(
                f"{key}: the bucket {bucket!r} of {uri} does not exist (pixelmill creates no buckets: "
                "check the name, or create it first)"
            ) from None
    except Exception as error:  # noqa: BLE001 - any client error means the same to the user
        if bucket_must_exist:
            raise OSError(f"{key}: cannot reach {uri}: {type(error).__name__}: {error}") from error


def check_output_reachable(spec: JobSpec) -> None:
    """Raise when the output cannot be reached or written; create a local output folder.

    Raises:
        StorageUnreachable, OSError: as :func:`check_reachable`, or a local folder cannot be made.
    """
    layout = OutputLayout(spec.output.uri, spec.storage_options)
    if layout.is_local():
        try:
            layout.fs.makedirs(layout.root, exist_ok=True)
        except OSError as error:
            raise OSError(f"output.uri: cannot create {spec.output.uri}: {type(error).__name__}: {error}") from error
        return
    check_reachable(spec.output.uri, spec.storage_options, key="output.uri", bucket_must_exist=True)


def model_uris(spec: JobSpec) -> list[tuple[str, str, str | None]]:
    """Return ``(spec key, uri, cache_dir)`` for every model URI the job loads; ``cache_dir`` is None for a file."""
    model_cache = spec.model.local_cache_dir()
    found: list[tuple[str, str, str | None]] = [("model.uri", spec.model.uri, model_cache)]
    if spec.model.performance.tiny_vae is not None:
        found.append(("model.performance.tiny_vae", spec.model.performance.tiny_vae, model_cache))
    if spec.llm is not None:
        found.append(("llm.model.uri", spec.llm.model.uri, spec.llm.model.local_cache_dir()))
    if spec.score is not None:
        found.append(("score.model.uri", spec.score.model.uri, spec.score.model.local_cache_dir()))
    if spec.style is not None and spec.style.backend == "adain" and spec.style.adain is not None:
        adain = spec.style.adain
        found += [("style.adain.vgg", adain.vgg, None), ("style.adain.decoder", adain.decoder, None)]
    return found


def check_models(spec: JobSpec) -> None:
    """Check every model URI of ``spec`` from here, before any work.

    Raises:
        ModelUnavailable: the first URI that names nothing loadable, with its key and what is missing.
    """
    for key, uri, cache_dir in model_uris(spec):
        try:
            if cache_dir is None:
                _check_file(uri, spec.storage_options, key=key)
            else:
                _check_folder(uri, spec.storage_options, cache_dir=cache_dir, key=key)
        except StorageUnreachable:
            raise
        except Exception as error:  # noqa: BLE001 - one line with the key, whatever the client raised
            raise ModelUnavailable(f"{key}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n", 1)[0] or type(error).__name__


def _check_folder(uri: str, storage_options: dict[str, Any], *, cache_dir: str, key: str) -> None:
    """Raise ``FileNotFoundError``/``ValueError``/``OSError`` unless ``uri`` names a loadable model folder."""
    from models.builtin import check_builtin_name  # torch-free at import
    from models.store import BUILTIN_PREFIX, is_builtin

    if is_builtin(uri):
        check_builtin_name(uri[len(BUILTIN_PREFIX):])
        return
    hub = hub_model(uri)
    if hub is not None:
        hub_commit(hub, uri, cache_dir=cache_dir)
        return
    fs, root = filesystem(uri, storage_options, probe=True)
    if is_local(fs) and not fs.isdir(root):
        raise FileNotFoundError(f"{uri} does not exist (a model folder, a Hub id such as stabilityai/sd-turbo, "
                                "or builtin:NAME)")

    def has_marker(fs: Any, root: str) -> bool:
        return any(fs.exists(join(fs, root, marker)) for marker in MODEL_MARKERS)

    if not ask(uri, storage_options, has_marker, key=key):
        raise FileNotFoundError(f"{uri} is not a model folder: no {' or '.join(MODEL_MARKERS)} in it")


def _check_file(uri: str, storage_options: dict[str, Any], *, key: str) -> None:
    """Raise ``FileNotFoundError`` unless ``uri`` is a file."""
    if not ask(uri, storage_options, lambda fs, path: fs.isfile(path), key=key):
        raise FileNotFoundError(f"{uri}: no file there")
