"""A text-conditional GAN: one generator pass from (noise, text embedding) to an image.

The generator maps a noise vector and the pooled text embedding of a frozen CLIP text
encoder to a 64x64 image; the discriminator (training only) judges (image, text) pairs.
The recipe follows Reed et al. 2016 (a matching-aware discriminator: a real image with a
mismatched caption is a fake pair) with the later stabilisers: hinge loss and spectral
norm in the discriminator (Miyato et al. 2018), a projection discriminator for the text
condition (Miyato & Koyama 2018) and conditional batch norm in the generator. Plain
torch; ``models.train_gan`` trains it, the model store loads it, and the pipeline's
encode and generate stages run it like a diffusers pipeline:

- text half (``GANTextEncoder``): the folder's ``tokenizer/`` and ``text_encoder/`` (a
  transformers ``CLIPTextModelWithProjection``) give ``{"text_embeds": [B, D]}``;
- image half (``GANImageGenerator``): ``generator/`` (``config.json`` + safetensors) turns
  those embeddings and per-row seeds into uint8 images, with the non-finite and blank
  checks of ``models.diffusion``.

A GAN folder is marked by a ``model_index.json`` whose ``_class_name`` is
:data:`GAN_CLASS_NAME` (``models.families`` registers it), so ``models.store`` and
``models.publish`` treat it like any other model folder.

Batch invariance is kept as in ``models.diffusion``: each row draws its noise from its own
``torch.Generator`` seeded with the row's seed, and every forward pass runs at one fixed
micro-batch (``models.batching``); the generator has no batch statistics at inference
(batch norm uses its running statistics) and upsamples with nearest-neighbour + 3x3
convolutions only.

Example:
    >>> path = resolve_model_path("builtin:shapes-gan", cache_dir="/tmp/c")
    >>> embeds = GANTextEncoder(path).encode(["a small red circle on the left, blue background"])
    >>> GANImageGenerator(path).generate(embeds, seeds=[0], width=64, height=64).shape
    (1, 64, 64, 3)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.batching import in_fixed_chunks

__all__ = [
    "GAN_CLASS_NAME",
    "EMBED_KEY",
    "GeneratorConfig",
    "TextWhitening",
    "text_statistics",
    "Generator",
    "Discriminator",
    "GANTextEncoder",
    "GANImageGenerator",
    "load_text_half",
    "save_gan_folder",
    "load_generator",
    "text_tower_from_clip",
]

GAN_CLASS_NAME = "TextConditionalGAN"
EMBED_KEY = "text_embeds"  # the one embedding the encode stage hands to a GAN
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
    """

    text_dim: int = 64
    noise_dim: int = 32
    channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    truncation: float = 1.0

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)


class TextWhitening(nn.Module):
    """Unit-normalise a text embedding (CLIP compares directions), then whiten it with fixed statistics.

    A contrastive text embedding spreads its variance very unevenly: in ``shapes-clip`` a dozen
    directions (colours, background, size) hold almost all of it, and the words for position and
    shape kind move the embedding by a cosine of 0.99+. Whitening with the training captions'
    mean and covariance (:func:`text_statistics`, saved with the weights as buffers) gives those
    small directions the same scale as the large ones, so the networks can use them.
    """

    def __init__(self, text_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("matrix", torch.eye(text_dim))

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(text_embeds.to(self.mean.dtype), dim=-1) * text_embeds.shape[-1] ** 0.5
        return (unit - self.mean) @ self.matrix


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


class Generator(nn.Module):
    """(noise, text embedding) -> image in [-1, 1], ``[B, 3, S, S]`` with ``S = config.image_size``.

    A linear layer maps ``[noise, text]`` to a 4x4 feature map (where things go), then each
    up block doubles the side; every normalisation takes its gain and bias from the same
    condition (colours and kinds), and a 3x3 convolution + tanh makes RGB.
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
        self.to_rgb = nn.Conv2d(config.channels[-1], 3, 3, padding=1)

    def forward(self, noise: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        condition = torch.cat([noise, self.text(text_embeds)], dim=1)
        x = self.stem(condition).view(len(noise), self.config.channels[0], 4, 4)
        x = F.relu(self.stem_norm(x, condition))
        for block in self.blocks:
            x = block(x, condition)
        return torch.tanh(self.to_rgb(x))


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


# --- the folder: model_index.json, tokenizer/, text_encoder/, generator/ ----------------------


def text_tower_from_clip(clip_path: str) -> tuple[Any, Any]:
    """The tokenizer and text tower (``CLIPTextModelWithProjection``) of a saved ``CLIPModel``.

    The projected embedding (``text_embeds``) is the one CLIP trained against images, so it
    is the one the GAN is conditioned on; the weights are copied unchanged and frozen.

    Returns:
        ``(tokenizer, text_encoder)``; the encoder in eval mode, ``requires_grad`` off.
    """
    from transformers import AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(clip_path)
    config = clip.config.text_config
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
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=1)


def load_generator(
    folder: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Generator:
    """The generator of a GAN folder, in eval mode (batch norm on its running statistics)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, GENERATOR_FOLDER, "config.json"), encoding="utf-8") as handle:
        raw = json.load(handle)
    raw.pop("_class_name", None)
    config = GeneratorConfig(**{**raw, "channels": tuple(raw["channels"])})
    generator = Generator(config)
    generator.load_state_dict(load_file(os.path.join(folder, GENERATOR_FOLDER, "model.safetensors")))
    return generator.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _not_applied(device: str | torch.device, dtype: torch.dtype, fast_paths: Any) -> dict[str, Any]:
    """``apply_fast_paths``'s report for a GAN half: nothing applies (no attention, no VAE, tiny convs)."""
    names = ("tiny_vae", "sdpa", "channels_last", "compile")
    wanted = [name for name in names if fast_paths is not None and getattr(fast_paths, name)]
    return {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "tiny_vae": None, "sdpa": [],
        "channels_last": [], "compile": [], "compile_mode": None, "pinned_transfer": False,
        "skipped": {name: "not a diffusers pipeline (GAN)" for name in wanted},
    }


def _dtype(name: str | None) -> torch.dtype:
    from models.diffusion import DTYPES

    return DTYPES[name or "float32"]


class GANTextEncoder:
    """The text half of a GAN folder: prompts -> ``{"text_embeds": [B, D]}`` (projected, pooled CLIP).

    Args:
        model_path: a GAN folder (``model_index.json`` with ``_class_name`` :data:`GAN_CLASS_NAME`).
        device: torch device.
        dtype: weights dtype name; None: float32.

    Attributes:
        tokenizer: the folder's tokenizer (``PromptEncoder`` counts tokens with it).
        text_encoder: the frozen ``CLIPTextModelWithProjection``.
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str | None = None) -> None:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(model_path, "tokenizer"))
        self.text_encoder = CLIPTextModelWithProjection.from_pretrained(
            os.path.join(model_path, "text_encoder"), dtype=_dtype(dtype)
        ).to(self.device).eval()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Pooled, projected text embeddings of ``prompts``: ``{"text_embeds": [B, D]}`` on the device.

        Prompts are padded to the tokenizer's window and truncated past it; the pooled token
        (the first end-of-text) does not see the padding, so a prompt's embedding does not
        depend on the other prompts of the batch.
        """
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        output = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        return {EMBED_KEY: output.text_embeds}


def load_text_half(
    model_path: str, *, device: str, dtype: str | None, fast_paths: Any
) -> tuple[GANTextEncoder, dict]:
    """``models.families`` hook: the text half of a GAN folder and its (empty) fast-path report."""
    encoder = GANTextEncoder(model_path, device=device, dtype=dtype)
    return encoder, _not_applied(device, encoder.text_encoder.dtype, fast_paths)


def row_noise(seeds: list[int] | np.ndarray, noise_dim: int) -> torch.Tensor:
    """One noise vector per seed, each drawn from its own CPU ``torch.Generator`` (device-independent bytes)."""
    return torch.stack([
        torch.randn(noise_dim, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds
    ])


class GANImageGenerator:
    """The image half of a GAN folder: text embeddings + seeds in, uint8 images out (one pass).

    The interface is ``models.diffusion.ImageGenerator``'s, so the generate stage runs either;
    ``steps`` and ``guidance`` are accepted and ignored (there is no denoising loop and no
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
        from models.families import family_for
        from models.store import model_fingerprint

        class_name, _family = family_for(model_path)
        if class_name != GAN_CLASS_NAME:
            raise ValueError(f"{model_path!r} is a {class_name}, not a GAN folder ({GAN_CLASS_NAME})")
        self.device = torch.device(device)
        self.dtype = _dtype(dtype)
        self.generator = load_generator(model_path, device=self.device, dtype=self.dtype)
        self.native_size = self.generator.config.image_size
        self.fast_paths_applied = _not_applied(device, self.dtype, fast_paths)
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
        """``generate`` plus the row checks of ``models.diffusion.row_problems`` (non-finite, blank).

        Returns:
            ``(images, problems)`` as ``ImageGenerator.generate_checked``: non-finite values
            become 0; ``problems`` maps row index -> ``(status, reason)``. There is no safety
            checker and no float32 retry (the generator runs in float32 unless told otherwise).
        """
        from models.diffusion import row_problems
        from models.fastpaths import to_host_uint8

        # 1. Check inputs
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise ValueError(f"width and height must be positive multiples of 8, got {width}x{height}")
        if EMBED_KEY not in embeds:
            raise ValueError(f"embeds has no {EMBED_KEY!r}; encode the prompts with this GAN's text encoder")
        text = embeds[EMBED_KEY]
        if len(text) != len(seeds):
            raise ValueError(f"text_embeds has {len(text)} rows but there are {len(seeds)} seeds")
        if text.shape[1] != self.generator.config.text_dim:
            wanted = self.generator.config.text_dim
            raise ValueError(f"text_embeds are {text.shape[1]} wide; this generator takes {wanted}")
        if len(seeds) == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8), {}
        text = torch.from_numpy(np.ascontiguousarray(text))

        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
            # 2. Per-row noise (truncated), one generator pass for the fixed-size chunk
            config = self.generator.config
            noise = row_noise([seeds[i] for i in rows], config.noise_dim) * config.truncation
            images = self.generator(noise.to(self.device, self.dtype), text[rows].to(self.device, self.dtype))
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
