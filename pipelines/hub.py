"""Hugging Face Hub model ids as model URIs: ``org/name``, ``hf://org/name``, either with ``@revision``.

A Hub id is resolved through ``huggingface_hub`` into a local snapshot folder, once per
node: first the user's Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``) is asked without
network, then the model cache (``model.cache_dir/hub``); only when neither holds it is it
downloaded, into the model cache, under a file lock so the actors of a node download once.
A bare ``org/name`` that is an existing local path stays a local path.

Without network (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached) a model that no cache
holds is a :class:`HubUnavailable` whose one line shows the command that pre-downloads it
into a folder (``hf download``, the CLI that ``huggingface_hub`` ships), to name in
``model.uri`` instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pipelines.storage import MODEL_MARKERS, exclusive_lock

__all__ = ["HUB_SCHEME", "HubModel", "HubUnavailable", "hub_commit", "hub_folder", "hub_model"]

HUB_SCHEME = "hf://"
# org/name[@revision]: Hub repo names are letters, digits, '-', '_', '.'; a revision is a branch, tag or commit.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# Files a pipeline never loads: other frameworks' weights and half-precision variants.  Of a
# diffusers repo only model_index.json and the component folders are fetched, which leaves out
# the single-file checkpoints at its root (SD-Turbo's 5 GB sd_turbo.safetensors, FLUX's 23 GB).
_IGNORED = ["*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.ckpt", "*.gguf", "*fp16*"]
_DIFFUSERS_FILES = ["model_index.json", "*/*"]


class HubUnavailable(OSError):
    """A Hub model that no cache holds and that cannot be downloaded (no network, unknown repo)."""


@dataclass(frozen=True)
class HubModel:
    """A model on the Hugging Face Hub: its repo id and, if pinned, a revision."""

    repo_id: str
    revision: str | None = None

    def download_hint(self) -> str:
        """Return the one command that pre-downloads this model into a folder."""
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{revision} --local-dir /models/{self.repo_id.split('/')[1]}"


def hub_model(uri: str) -> HubModel | None:
    """Return the Hub model that ``uri`` names, or None for any other URI.

    ``hf://org/name[@rev]`` always names the Hub; a bare ``org/name[@rev]`` does unless it
    is an existing local path.
    """
    bare = uri.removeprefix(HUB_SCHEME)
    if bare == uri and ("://" in uri or os.path.exists(os.path.expanduser(uri))):
        return None
    match = _HUB_ID.match(bare)
    if match is None:
        return None
    return HubModel(match["repo"], match["revision"])


def _cached(model: HubModel, cache_dir: str) -> str | None:
    """The snapshot folder of ``model`` in the user's Hugging Face cache or the model cache, without network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for cache in (None, os.path.join(cache_dir, "hub")):  # None: huggingface_hub's own cache
        try:
            folder = snapshot_download(model.repo_id, revision=model.revision, cache_dir=cache, local_files_only=True)
        except (LocalEntryNotFoundError, ValueError, OSError):
            continue
        if any(os.path.isfile(os.path.join(folder, marker)) for marker in MODEL_MARKERS):
            return folder
    return None


def _unavailable(model: HubModel, uri: str, reason: str) -> HubUnavailable:
    return HubUnavailable(
        f"{uri} is not in the Hugging Face cache and {reason}; where there is network, run "
        f"`{model.download_hint()}` (or copy that folder to a bucket) and set the URI to that folder"
    )


_OFFLINE = "there is no network (HF_HUB_OFFLINE is set)"


def _is_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_commit(model: HubModel, uri: str, *, cache_dir: str) -> str:
    """Check from the driver that ``model`` can be loaded; return the commit it resolves to.

    A cached snapshot is used without network (its folder name is the commit); otherwise
    the Hub is asked once, with a short timeout.

    Raises:
        HubUnavailable: no cache holds it and there is no network, or the repo, revision or
            model marker is missing on the Hub.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cached = _cached(model, cache_dir)
    if cached is not None:
        return os.path.basename(cached)
    if _is_offline():
        raise _unavailable(model, uri, _OFFLINE)
    try:
        info = HfApi().model_info(model.repo_id, revision=model.revision, timeout=10)
    except OfflineModeIsEnabled:
        raise _unavailable(model, uri, _OFFLINE) from None
    except HfHubHTTPError as error:
        first = str(error).strip().split("\n", 1)[0]
        raise HubUnavailable(f"{uri}: the Hugging Face Hub refused it: {first}") from None
    except Exception as error:  # noqa: BLE001 - any transport error means the Hub cannot be reached
        raise _unavailable(model, uri, f"the Hub cannot be reached ({type(error).__name__})") from None
    names = {sibling.rfilename for sibling in info.siblings or ()}
    if not names & set(MODEL_MARKERS):
        raise HubUnavailable(f"{uri} is not a model folder: no {' or '.join(MODEL_MARKERS)} in the Hub repo")
    return str(info.sha)


def hub_folder(model: HubModel, uri: str, *, cache_dir: str) -> str:
    """Return a local snapshot folder of ``model``, downloading it into ``cache_dir/hub`` once per node.

    Raises:
        HubUnavailable: no cache holds it and it cannot be downloaded.
    """
    cached = _cached(model, cache_dir)
    if cached is not None:  # cache hit: no network access at all
        return cached
    if _is_offline():
        raise _unavailable(model, uri, _OFFLINE)
    hub_cache = os.path.join(cache_dir, "hub")
    with exclusive_lock(os.path.join(hub_cache, ".locks", model.repo_id.replace("/", "--") + ".lock")):
        cached = _cached(model, cache_dir)  # another actor finished while we waited
        if cached is not None:
            return cached
        from huggingface_hub import HfApi, snapshot_download

        try:
            files = HfApi().list_repo_files(model.repo_id, revision=model.revision)
            allowed = _DIFFUSERS_FILES if "model_index.json" in files else None
            return snapshot_download(model.repo_id, revision=model.revision, cache_dir=hub_cache,
                                     allow_patterns=allowed, ignore_patterns=_IGNORED)
        except Exception as error:  # noqa: BLE001 - reported as the one line a user acts on
            raise _unavailable(model, uri, f"the download failed ({type(error).__name__}: {error})") from error
