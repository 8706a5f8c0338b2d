"""The training-only parts of the one-pass generators (``models.gan`` holds what a run loads).

- ``Discriminator``: judges (image, text) pairs; spectral norm everywhere (Miyato et al.
  2018) and a projection term for the text condition (Miyato & Koyama 2018);
- ``discriminator_step``: one matching-aware hinge step, with ``perturbed_scene`` for the
  one-attribute-off captions it calls fake;
- ``ema_update``, ``recalibrate_batch_norm``, ``log_step``, ``MONITOR_SEED``: the generator's
  weight average, its batch-norm statistics after training, progress lines and captions;
- ``text_statistics``: the whitening statistics the generator's ``TextWhitening`` is saved with;
- ``text_tower_from_clip``: the frozen text tower copied out of a trained ``CLIPModel``;
- ``save_gan_folder``: writes the folder ``models.gan.load_generator`` and
  ``models.texttower`` read back (``model_index.json``, tokenizer, text encoder, generator).

``training.train_gan`` (shapes-gan) and ``training.distil`` (shapes-turbo) train with them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.gan import GAN_CLASS_NAME, GENERATOR_FOLDER, Generator, TextWhitening
from training import world

__all__ = [
    "MONITOR_SEED",
    "Discriminator",
    "discriminator_step",
    "ema_update",
    "log_step",
    "perturbed_scene",
    "recalibrate_batch_norm",
    "save_gan_folder",
    "text_statistics",
    "text_tower_from_clip",
]


@torch.no_grad()
def text_statistics(text_embeds: torch.Tensor, *, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ZCA whitening matrix of unit-normalised embeddings (scaled as ``TextWhitening`` scales them).

    Directions with variance below ``eps`` are damped rather than blown up.
    """
    unit = F.normalize(text_embeds.double(), dim=-1) * text_embeds.shape[-1] ** 0.5
    mean = unit.mean(dim=0)
    values, vectors = torch.linalg.eigh(torch.cov((unit - mean).T))
    matrix = vectors @ torch.diag((values.clamp(min=0) + eps).rsqrt()) @ vectors.T
    return mean.float(), matrix.float()



class Discriminator(nn.Module):
    """(image, text embedding) -> one logit per pair; spectral norm everywhere, projection for the text.

    ``features`` is the image half phi(x); ``score(phi, text)`` adds the unconditional
    logit and ``<embed(text), phi>`` (the projection term), so a real image is scored
    against its own and a mismatched caption from one pass through the convolutions.
    The convolutions see two coordinate channels: where a shape is is half of a caption.
    """

    def __init__(
        self, text_dim: int = 64, channels: tuple[int, ...] = (16, 32, 64, 128), feature_dim: int = 256
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3 + 2
        for width in channels:
            layers += [spectral_norm(nn.Conv2d(previous, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            previous = width
        self.convs = nn.Sequential(*layers)
        side = 64 // 2 ** len(channels)
        self.flatten_to = spectral_norm(nn.Linear(previous * side * side, feature_dim))
        self.unconditional = spectral_norm(nn.Linear(feature_dim, 1))
        self.embed = spectral_norm(nn.Linear(text_dim, feature_dim, bias=False))
        self.text = TextWhitening(text_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        ys = torch.linspace(-1, 1, height, device=images.device).view(1, 1, height, 1)
        xs = torch.linspace(-1, 1, width, device=images.device).view(1, 1, 1, width)
        ys, xs = ys.expand(batch, 1, height, width), xs.expand(batch, 1, height, width)
        hidden = self.convs(torch.cat([images, xs, ys], dim=1))
        return F.leaky_relu(self.flatten_to(hidden.flatten(1)), 0.2)

    def score(self, features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        projection = (self.embed(self.text(text_embeds)) * features).sum(dim=1)
        return self.unconditional(features).squeeze(1) + projection

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(images), text_embeds)



def discriminator_step(
    discriminator: Discriminator, optimiser: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
    text: torch.Tensor, wrong: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One step of the matching-aware discriminator (Reed et al. 2016) with the hinge loss.

    (real image, own caption) is real; (generated image, own caption) and (real image, wrong
    caption) are fake: ``relu(1 - D(x, t)) + 0.5 [relu(1 + D(G, t)) + relu(1 + D(x, t'))]``.
    ``fake`` is detached here; ``text`` and ``wrong`` are pooled embeddings ``[B, text_dim]``.

    Returns:
        The three hinge terms (``real``, ``fake``, ``wrong``), after the optimiser's step.
    """
    real_features = discriminator.features(real)
    losses = {
        "real": F.relu(1 - discriminator.score(real_features, text)).mean(),
        "fake": F.relu(1 + discriminator(fake.detach(), text)).mean(),
        "wrong": F.relu(1 + discriminator.score(real_features, wrong)).mean(),
    }
    optimiser.zero_grad(set_to_none=True)
    (losses["real"] + 0.5 * (losses["fake"] + losses["wrong"])).backward()
    optimiser.step()
    return losses


# Progress captions: test-split scenes of another seed than the evaluation's (seed 1)
MONITOR_SEED = 2


def perturbed_scene(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """``scene`` with one attribute changed, a valid training-split scene (drawn again until it is)."""
    while True:
        shapes = list(scene.shapes)
        background = scene.background
        index = int(rng.integers(len(shapes)))
        what = ("background", "colour", "kind", "size", "position")[int(rng.integers(5))]
        shape = shapes[index]
        if what == "background":
            background = str(rng.choice(list(world.COLOURS)))
        elif what == "colour":
            shapes[index] = replace(shape, colour=str(rng.choice(list(world.COLOURS))))
        elif what == "kind":
            shapes[index] = replace(shape, kind=str(rng.choice(world.SHAPES)))
        elif what == "size":
            shapes[index] = replace(shape, size=next(s for s in world.SIZES if s != shape.size))
        elif len(shapes) == 1:
            shapes[index] = replace(shape, position=str(rng.choice(list(world.POSITIONS))))
        else:  # two shapes: swap their places
            first, second = shapes
            shapes = [replace(first, position=second.position), replace(second, position=first.position)]
        try:
            candidate = world.Scene(background=background, shapes=tuple(shapes))
        except ValueError:
            continue
        if candidate != scene and world.split(candidate) == "train":
            return candidate


def log_step(step: int, total: int, start: float, **values: float) -> None:
    """Print one progress line: the step, the seconds since ``start`` and ``values`` (3 decimals)."""
    parts = " ".join(f"{k}={v:.3f}" for k, v in values.items())
    print(f"step {step}/{total} {time.time() - start:.0f}s {parts}", flush=True)


@torch.no_grad()
def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Move ``average``'s parameters towards ``model``'s: ``kept = decay * kept + (1 - decay) * new``."""
    for kept, new in zip(average.parameters(), model.parameters()):
        kept.lerp_(new, 1 - decay)


@torch.no_grad()
def recalibrate_batch_norm(
    generator: Generator, embeds: torch.Tensor, *, batches: int, batch: int, seed: int,
    sequence: torch.Tensor | None = None,
) -> None:
    """Re-estimate the running statistics (a cumulative average) for the weights as they are now.

    ``sequence``: the rows' token states, for a generator that reads them (``training.distil``).
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator.train()
    for _ in range(batches):
        rows = torch.randint(len(embeds), (batch,), generator=gen)
        noise = torch.randn(batch, generator.config.noise_dim, generator=gen)
        generator(noise, embeds[rows], None if sequence is None else sequence[rows])
    for norm in norms:
        norm.momentum = 0.1
    generator.eval()


def text_tower_from_clip(clip_path: str) -> tuple[Any, Any]:
    """The tokenizer and text tower (``CLIPTextModelWithProjection``) of a saved ``CLIPModel``.

    The projected embedding (``text_embeds``) is the one CLIP trained against images, so it
    is the one the GAN is conditioned on; the weights are copied unchanged and frozen.

    Returns:
        ``(tokenizer, text_encoder)``; the encoder in eval mode, ``requires_grad`` off.
    """
    from transformers import AutoTokenizer, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(clip_path)
    # typed ``dict | CLIPTextConfig | None``: CLIPConfig turns a dict into the config on load
    config = cast(CLIPTextConfig, clip.config.text_config)
    config.projection_dim = clip.config.projection_dim  # the text config's own field is unused by CLIPModel
    text_encoder = CLIPTextModelWithProjection(config)
    text_encoder.text_model.load_state_dict(clip.text_model.state_dict())
    text_encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(clip_path)
    return tokenizer, text_encoder.eval().requires_grad_(False)


def save_gan_folder(folder: str, *, generator: Generator, tokenizer: Any, text_encoder: Any) -> None:
    """Write a self-contained GAN folder: ``model_index.json``, tokenizer, text encoder, generator."""
    from safetensors.torch import save_file

    os.makedirs(os.path.join(folder, GENERATOR_FOLDER), exist_ok=True)
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    text_encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    config = {"_class_name": "Generator", **asdict(generator.config)}
    with open(os.path.join(folder, GENERATOR_FOLDER, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=1)
    state = {key: value.detach().contiguous() for key, value in generator.state_dict().items()}
    save_file(state, os.path.join(folder, GENERATOR_FOLDER, "model.safetensors"))
    index = {
        "_class_name": GAN_CLASS_NAME,
        "_module": "models.gan",
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "text_encoder": ["transformers", type(text_encoder).__name__],
        "generator": ["models.gan", "Generator"],
    }
    if generator.config.sequence_dim:  # it reads the token states: the text tower hands them over
        index["text_output"] = "sequence"
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=1)
