"""A text-conditional GAN: one generator pass from (noise, text embedding) to an image.

The generator maps a noise vector and the pooled text embedding of a frozen CLIP text
encoder to a 64x64 image. The recipe (Reed et al. 2016, with hinge loss, spectral norm and a
projection discriminator; the discriminator and the rest of training live in
``training.gan_parts`` and ``training.train_gan``) gives a generator with conditional batch
norm, which is all a run loads. Plain torch; the model store loads it, and the pipeline's
encode and generate stages run it:

- text half: the folder's ``tokenizer/`` and ``text_encoder/`` (a transformers
  ``CLIPTextModelWithProjection``), loaded by ``PromptEncoder`` as any text tower
  (``models.texttower``): ``{"text_embeds": [B, D]}``;
- image half (``GANImageGenerator``, the ``gan`` generate backend of ``models.backends``):
  ``generator/`` (``config.json`` + safetensors) turns those embeddings and per-row seeds
  into uint8 images, with the non-finite and blank checks every backend shares
  (``models.shared``).

With ``GeneratorConfig.sequence_dim`` > 0 the generator also reads the text encoder's token
states (``prompt_embeds``, ``[B, L, D]``) through :class:`CrossAttention` blocks; its folder's
``model_index.json`` then says ``"text_output": "sequence"`` and the text tower hands them over.
``builtin:shapes-turbo``, a one-pass student distilled from ``builtin:shapes-sd``
(``training.distil``), is such a folder; it reads its teacher's own text encoder.

A GAN folder is marked by a ``model_index.json`` whose ``_class_name`` is
:data:`GAN_CLASS_NAME` (the ``gan`` backend draws it), so ``models.store`` and
``models.publish`` treat it like any other model folder.

Batch invariance is kept as in ``models.diffusion``: each row draws its noise from its own
``torch.Generator`` seeded with the row's seed, and every forward pass runs at one fixed
micro-batch (``models.batching``); the generator has no batch statistics at inference
(batch norm uses its running statistics) and upsamples with nearest-neighbour + 3x3
convolutions only.

Example:
    >>> path = resolve_model_path("builtin:shapes-gan", cache_dir="/tmp/c")
    >>> embeds = PromptEncoder(path).encode(["a small red circle on the left, blue background"], None, guidance=[1.0])
    >>> GANImageGenerator(path).generate(embeds, seeds=[0], width=64, height=64).shape
    (1, 64, 64, 3)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.batching import in_fixed_chunks
from models.families import read_model_index
from models.fastpaths import to_host_uint8
from models.shared import DTYPES, no_fast_paths, row_problems
from models.texttower import EMBED_KEY, SEQUENCE_KEY  # what the encode stage hands to a GAN

__all__ = [
    "GAN_CLASS_NAME",
    "EMBED_KEY",
    "GENERATOR_FOLDER",
    "GeneratorConfig",
    "TextWhitening",
    "ConditionalBatchNorm",
    "CrossAttention",
    "Generator",
    "GANImageGenerator",
    "load_generator",
    "row_noise",
]

GAN_CLASS_NAME = "TextConditionalGAN"  # also named by the ``gan`` entry of ``models.backends``
GENERATOR_FOLDER = "generator"


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a generator; saved as ``generator/config.json``.

    Attributes:
        text_dim: width of the pooled text embedding it is conditioned on.
        noise_dim: width of the per-row noise vector.
        channels: feature channels at 4x4, 8x8, ... (one entry per resolution; the
            image side is ``4 * 2 ** (len(channels) - 1)``).
        truncation: the noise is scaled by this when drawing (the truncation trick of
            BigGAN, Brock et al. 2019): below 1 trades variety for fidelity; training uses 1.
        sequence_dim: width of the text encoder's token states it also reads (``prompt_embeds``,
            ``[B, L, sequence_dim]``); 0: the pooled embedding only (``shapes-gan``).
        attention_at: feature-map sides (4, 8, ...) after which a :class:`CrossAttention`
            block reads the token states; needs ``sequence_dim`` > 0.
        heads: attention heads of each of those blocks.
    """

    text_dim: int = 64
    noise_dim: int = 32
    channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    truncation: float = 1.0
    sequence_dim: int = 0
    attention_at: tuple[int, ...] = ()
    heads: int = 2

    def __post_init__(self) -> None:
        sides = {4 * 2**i for i in range(len(self.channels))}
        if self.attention_at and (self.sequence_dim <= 0 or not set(self.attention_at) <= sides):
            raise ValueError(
                f"attention_at {self.attention_at} needs sequence_dim > 0 and sides among {sorted(sides)}"
            )

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)


class TextWhitening(nn.Module):
    """Unit-normalise a text embedding (CLIP compares directions), then whiten it with fixed statistics.

    A contrastive text embedding spreads its variance very unevenly: in ``shapes-clip`` a dozen
    directions (colours, background, size) hold almost all of it, and the words for position and
    shape kind move the embedding by a cosine of 0.99+. Whitening with the training captions'
    mean and covariance (``training.gan_parts.text_statistics``, saved with the weights as buffers) gives those
    small directions the same scale as the large ones, so the networks can use them.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    matrix: torch.Tensor

    def __init__(self, text_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("matrix", torch.eye(text_dim))

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(text_embeds.to(self.mean.dtype), dim=-1) * text_embeds.shape[-1] ** 0.5
        return (unit - self.mean) @ self.matrix


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; gain and bias are linear functions of the condition."""

    def __init__(self, channels: int, condition_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(condition_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)  # starts as plain batch norm: gain 1, bias 0

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gain, bias = self.affine(condition).chunk(2, dim=1)
        return self.norm(x) * (1 + gain[:, :, None, None]) + bias[:, :, None, None]


class _UpBlock(nn.Module):
    """Nearest-neighbour x2, 3x3 convolution, conditional batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = ConditionalBatchNorm(out_channels, condition_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.relu(self.norm(self.conv(x), condition))


class CrossAttention(nn.Module):
    """Every pixel of a feature map attends over the prompt's token states, added back as a residual.

    The text conditioning of the Stable Diffusion UNet (Rombach et al. 2022), at one
    resolution: queries from the feature map plus a learned embedding of each pixel's place
    (so "left" or "top" can pick the pixels it names), keys and values from the tokens. It
    works on each row alone (no batch statistics), so batch invariance holds. The output
    projection starts at zero: a new block starts as the identity.

    Args:
        channels: feature channels ``C`` of the ``[B, C, side, side]`` map.
        sequence_dim: width of the token states ``[B, L, sequence_dim]``.
        side: the map's side.
        heads: attention heads; the attention width is ``sequence_dim``.
    """

    def __init__(self, channels: int, sequence_dim: int, side: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.place = nn.Parameter(torch.randn(1, channels, side, side) * 0.1)
        self.query = nn.Conv2d(channels, sequence_dim, 1)
        self.key = nn.Linear(sequence_dim, sequence_dim)
        self.value = nn.Linear(sequence_dim, sequence_dim)
        self.out = nn.Conv2d(sequence_dim, channels, 1)
        for parameter in self.out.parameters():  # weight and bias
            nn.init.zeros_(parameter)

    def forward(self, x: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, D / heads]
            return t.view(batch, t.shape[1], self.heads, -1).transpose(1, 2)

        query = split(self.query(x + self.place).flatten(2).transpose(1, 2))
        attended = F.scaled_dot_product_attention(query, split(self.key(sequence)), split(self.value(sequence)))
        attended = attended.transpose(1, 2).reshape(batch, height * width, -1).transpose(1, 2)
        return x + self.out(attended.reshape(batch, -1, height, width))


class Generator(nn.Module):
    """(noise, text embedding[, token states]) -> image in [-1, 1], ``[B, 3, S, S]``, ``S = config.image_size``.

    A linear layer maps ``[noise, text]`` to a 4x4 feature map (where things go), then each
    up block doubles the side; every normalisation takes its gain and bias from the same
    condition (colours and kinds), and a 3x3 convolution + tanh makes RGB. With
    ``config.sequence_dim`` > 0 a :class:`CrossAttention` block after each side in
    ``config.attention_at`` reads the text encoder's token states (``prompt_embeds``).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        condition_dim = config.noise_dim + config.text_dim
        first = config.channels[0]
        self.text = TextWhitening(config.text_dim)
        self.stem = nn.Linear(condition_dim, first * 16)
        self.stem_norm = ConditionalBatchNorm(first, condition_dim)
        self.blocks = nn.ModuleList(
            _UpBlock(a, b, condition_dim) for a, b in zip(config.channels[:-1], config.channels[1:])
        )
        self.attention = nn.ModuleDict({
            str(4 * 2**i): CrossAttention(width, config.sequence_dim, 4 * 2**i, config.heads)
            for i, width in enumerate(config.channels) if 4 * 2**i in config.attention_at
        })
        self.to_rgb = nn.Conv2d(config.channels[-1], 3, 3, padding=1)

    def forward(
        self, noise: torch.Tensor, text_embeds: torch.Tensor, prompt_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] from noise ``[B, noise_dim]``, the pooled embedding
        ``[B, text_dim]`` and, for a generator with attention, token states ``[B, L, sequence_dim]``.

        Raises:
            ValueError: the generator reads token states and ``prompt_embeds`` is None.
        """
        if self.attention and prompt_embeds is None:
            raise ValueError("this generator reads the token states: pass prompt_embeds")
        condition = torch.cat([noise, self.text(text_embeds)], dim=1)
        x = self.stem(condition).view(len(noise), self.config.channels[0], 4, 4)
        x = F.relu(self.stem_norm(x, condition))
        x = self._attend(x, prompt_embeds)
        for block in self.blocks:
            x = self._attend(block(x, condition), prompt_embeds)
        return torch.tanh(self.to_rgb(x))

    def _attend(self, x: torch.Tensor, prompt_embeds: torch.Tensor | None) -> torch.Tensor:
        """``x`` after the cross-attention block of its side, or unchanged where there is none."""
        side = str(x.shape[-1])
        return self.attention[side](x, prompt_embeds) if side in self.attention else x


# --- the folder: model_index.json, tokenizer/, text_encoder/, generator/ ----------------------


def load_generator(
    folder: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Generator:
    """The generator of a GAN folder, in eval mode (batch norm on its running statistics)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, GENERATOR_FOLDER, "config.json"), encoding="utf-8") as handle:
        raw = json.load(handle)
    raw.pop("_class_name", None)
    config = GeneratorConfig(
        **{**raw, "channels": tuple(raw["channels"]), "attention_at": tuple(raw.get("attention_at", ()))}
    )
    generator = Generator(config)
    generator.load_state_dict(load_file(os.path.join(folder, GENERATOR_FOLDER, "model.safetensors")))
    return generator.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _checked_embeds(
    embeds: dict[str, np.ndarray], key: str, rows: int, shape: tuple[int | None, ...]
) -> torch.Tensor:
    """``embeds[key]`` as a tensor, checked to hold ``rows`` rows of ``shape`` (None: any length).

    Raises:
        ValueError: the key is missing (the prompts were encoded by another model's text
            encoder), or the rows or shape do not match.
    """
    if key not in embeds:
        raise ValueError(f"embeds has no {key!r}; encode the prompts with this model's text encoder")
    value = np.asarray(embeds[key])
    if len(value) != rows:
        raise ValueError(f"{key} has {len(value)} rows but there are {rows} seeds")
    if value.ndim != len(shape) + 1 or any(w is not None and w != v for w, v in zip(shape, value.shape[1:])):
        raise ValueError(f"{key} has shape {value.shape[1:]} per row; this generator takes {shape}")
    return torch.from_numpy(np.ascontiguousarray(value))


def row_noise(seeds: list[int] | np.ndarray, noise_dim: int) -> torch.Tensor:
    """One noise vector per seed, each drawn from its own CPU ``torch.Generator`` (device-independent bytes)."""
    return torch.stack([
        torch.randn(noise_dim, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds
    ])


class GANImageGenerator:
    """The image half of a GAN folder: text embeddings + seeds in, uint8 images out (one pass).

    An ``ImageBackend`` (``models.backends``) like ``models.diffusion.ImageGenerator``, so the
    generate stage runs either; ``steps`` and ``guidance`` are accepted and ignored (there is no denoising loop and no
    classifier-free guidance), and sizes other than the generator's native one are resampled
    from it (bicubic, antialiased), which adds no detail.

    Args:
        model_path: a GAN folder.
        device: torch device.
        dtype: weights dtype name; None: float32 (the generator is ~1M parameters).
        fast_paths: accepted for interface parity; none applies to a GAN (see ``fast_paths_applied``).

    Attributes:
        info: ``model_hash`` (of the folder), ``scheduler`` (``"none"``), ``pipeline`` (:data:`GAN_CLASS_NAME`).
        native_size: the side the generator draws at (64 for ``shapes-gan``).
    """

    def __init__(
        self, model_path: str, *, device: str = "cpu", dtype: str | None = None, fast_paths: Any = None
    ) -> None:
        from models.store import model_fingerprint

        class_name = read_model_index(model_path)["_class_name"]
        if class_name != GAN_CLASS_NAME:
            raise ValueError(f"{model_path!r} is a {class_name}, not a GAN folder ({GAN_CLASS_NAME})")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype or "float32"]
        self.generator = load_generator(model_path, device=self.device, dtype=self.dtype)
        self.native_size = self.generator.config.image_size
        self.fast_paths_applied = no_fast_paths(device, self.dtype, fast_paths, "not a diffusers pipeline (GAN)")
        self.info = {
            "model_hash": model_fingerprint(model_path), "scheduler": "none", "pipeline": GAN_CLASS_NAME,
        }

    @torch.no_grad()
    def generate(
        self, embeds: dict[str, np.ndarray], *, seeds: list[int], width: int, height: int,
        steps: int = 1, guidance: float = 1.0, micro_batch: int = 1,
    ) -> np.ndarray:
        """One image per row: uint8 ``[B, height, width, 3]`` (``steps``, ``guidance`` ignored)."""
        return self.generate_checked(
            embeds, seeds=seeds, width=width, height=height, steps=steps, guidance=guidance,
            micro_batch=micro_batch,
        )[0]

    @torch.no_grad()
    def generate_checked(
        self, embeds: dict[str, np.ndarray], *, seeds: list[int], width: int, height: int,
        steps: int = 1, guidance: float = 1.0, micro_batch: int = 1,
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """``generate`` plus the row checks of ``models.shared.row_problems`` (non-finite, blank).

        Returns:
            ``(images, problems)`` as ``ImageGenerator.generate_checked``: non-finite values
            become 0; ``problems`` maps row index -> ``(status, reason)``. There is no safety
            checker and no float32 retry (the generator runs in float32 unless told otherwise).
        """
        # 1. Check inputs
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise ValueError(f"width and height must be positive multiples of 8, got {width}x{height}")
        config = self.generator.config
        text = _checked_embeds(embeds, EMBED_KEY, len(seeds), (config.text_dim,))
        sequence = (
            _checked_embeds(embeds, SEQUENCE_KEY, len(seeds), (None, config.sequence_dim))
            if config.sequence_dim else None
        )
        if len(seeds) == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8), {}

        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
            # 2. Per-row noise (truncated), one generator pass for the fixed-size chunk
            noise = row_noise([seeds[i] for i in rows], config.noise_dim) * config.truncation
            images = self.generator(
                noise.to(self.device, self.dtype), text[rows].to(self.device, self.dtype),
                None if sequence is None else sequence[rows].to(self.device, self.dtype),
            )
            images = (images.float() + 1) / 2
            # 3. Other sizes: resample the native image (the scene is laid out in canvas fractions)
            if (height, width) != (self.native_size, self.native_size):
                images = F.interpolate(
                    images, size=(height, width), mode="bicubic", antialias=True, align_corners=False
                )
            non_finite = ~torch.isfinite(images).flatten(1).all(dim=1)
            images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0).permute(0, 2, 3, 1)
            return {"images": to_host_uint8(images, pinned=False), "non_finite": non_finite.cpu().numpy()}

        checked = in_fixed_chunks(compute, len(seeds), micro_batch)
        # 4. One status per row that is not ok (the checks of the diffusion path, shared)
        return checked["images"], row_problems(checked["images"], non_finite=checked["non_finite"])
