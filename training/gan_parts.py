"""The training-only half of the ``shapes-gan`` text-conditional GAN (``models.gan`` holds what a run loads).

- ``Discriminator``: judges (image, text) pairs; spectral norm everywhere (Miyato et al.
  2018) and a projection term for the text condition (Miyato & Koyama 2018);
- ``text_statistics``: the whitening statistics the generator's ``TextWhitening`` is saved with;
- ``text_tower_from_clip``: the frozen text tower copied out of a trained ``CLIPModel``;
- ``save_gan_folder``: writes the folder ``models.gan.load_generator`` and
  ``models.texttower`` read back (``model_index.json``, tokenizer, text encoder, generator).

``training.train_gan`` trains with them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.gan import GAN_CLASS_NAME, GENERATOR_FOLDER, Generator, TextWhitening

__all__ = ["Discriminator", "text_statistics", "text_tower_from_clip", "save_gan_folder"]


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
