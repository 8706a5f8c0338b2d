"""The generate stage: text embeddings -> uint8 images, on its own actor pool."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from actors.encode import EMBED_PREFIX
from actors.loading import local_model_path, stage_device
from actors.rowerrors import mark_errors, run_isolating
from pipelines.faults import inject
from pipelines.spec import GenerateSpec, ModelSpec, StageSpec

__all__ = ["GenerateStage", "IMAGE_COLUMN"]

# The decoded image, ``uint8 [H, W, 3]``, from here to the image-encoding task.
IMAGE_COLUMN = "_pm_image"

logger = logging.getLogger(__name__)


class GenerateStage:
    """Callable class for ``map_batches``: draws images from the encode stage's embeddings.

    Loads the image half of the model with the backend the spec names
    (``actors.backends``: a diffusers pipeline without its text encoders, or a GAN
    generator), once per actor.  Rows are grouped by size, steps and guidance so each
    group is one batched call; every row draws its latents (or noise) from its own
    seed, so a row's image does not depend on the batch it lands in.

    Args:
        model: which model to load, and its fast paths (``model.performance``; a
            ``tiny_vae`` URI is resolved through the model store like ``model.uri``).
        stage: device, dtype and batch settings of this stage.
        generate: which backend draws (default: diffusers).
        storage_options: fsspec options for a model in object storage.
    """

    def __init__(
        self,
        *,
        model: ModelSpec,
        stage: StageSpec,
        generate: GenerateSpec | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        from actors.backends import GENERATE_BACKENDS, load_backend
        from actors.loading import local_model_folder
        from models.fastpaths import FastPaths

        backend = (generate or GenerateSpec()).backend
        performance = model.performance
        tiny_vae = performance.tiny_vae
        if tiny_vae is not None:
            tiny_vae = local_model_folder(tiny_vae, cache_dir=model.local_cache_dir(), storage_options=storage_options)
        self.generator = load_backend(
            backend,
            local_model_path(model, storage_options),
            device=stage_device(stage),
            dtype=performance.explicit_dtype(stage),
            fast_paths=FastPaths(**{**performance.model_dump(), "tiny_vae": tiny_vae}),
        )
        logger.info("generate stage (%s) fast paths: %s", backend, self.generator.fast_paths_applied)
        self.one_pass = GENERATE_BACKENDS[backend].one_pass
        self.model_uri = model.uri
        self.micro_batch = stage.micro_batch_size

    def _groups(self, batch: dict[str, np.ndarray]) -> dict[tuple[int, int, int, float], list[int]]:
        groups: dict[tuple[int, int, int, float], list[int]] = defaultdict(list)
        for i, status in enumerate(batch["status"]):
            if status == "ok":
                key = (int(batch["width"][i]), int(batch["height"][i]), int(batch["steps"][i]), float(batch["guidance"][i]))
                groups[key].append(i)
        return groups

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        size = len(batch["prompt"])
        embed_columns = [name for name in batch if name.startswith(EMBED_PREFIX)]
        images: dict[int, np.ndarray] = {}
        for (width, height, steps, guidance), rows in self._groups(batch).items():

            def compute(subset: list[int]) -> list[tuple[np.ndarray, tuple[str, str] | None]]:
                inject("stage:generate", prompts=[str(batch["prompt"][i]) for i in subset])
                embeds = {name[len(EMBED_PREFIX):]: batch[name][subset] for name in embed_columns}
                generated, problems = self.generator.generate_checked(
                    embeds,
                    seeds=[int(batch["seed"][i]) for i in subset],
                    width=width,
                    height=height,
                    steps=steps,
                    guidance=guidance,
                    micro_batch=self.micro_batch,
                )
                return [(generated[n], problems.get(n)) for n in range(len(subset))]

            results, errors = run_isolating(compute, rows)
            mark_errors(batch, errors, stage="generate")
            # Rows the checks caught: non-finite or blank images (errors), safety-checker hits (filtered).
            for status in ("error", "filtered"):
                caught = {i: problem[1] for i, (_, problem) in results.items() if problem and problem[0] == status}
                mark_errors(batch, caught, stage="generate", status=status)
            images.update({i: image for i, (image, problem) in results.items() if problem is None})
        for name in embed_columns:
            del batch[name]
        batch[IMAGE_COLUMN] = _image_column(images, batch)
        if self.one_pass:  # what ran: one forward pass, no guidance, whatever the row asked for
            batch["steps"] = np.ones(size, dtype=np.asarray(batch["steps"]).dtype)
            batch["guidance"] = np.ones(size, dtype=np.asarray(batch["guidance"]).dtype)
        info = self.generator.info
        batch["model"] = np.full(size, self.model_uri, dtype=object)
        batch["model_hash"] = np.full(size, info["model_hash"], dtype=object)
        batch["scheduler"] = np.full(size, info["scheduler"], dtype=object)
        batch["pipeline"] = np.full(size, info["pipeline"], dtype=object)
        batch["generate_s"] = np.full(size, (time.perf_counter() - start) / max(size, 1))
        return batch


def _image_column(images: dict[int, np.ndarray], batch: dict[str, np.ndarray]) -> np.ndarray:
    """Return one image per row; failed rows get an empty ``0x0x3`` array."""
    column = np.empty(len(batch["prompt"]), dtype=object)
    for i in range(len(column)):
        column[i] = images.get(i, np.zeros((0, 0, 3), dtype=np.uint8))
    return column
