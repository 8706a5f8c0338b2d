"""AdaIN arbitrary style transfer (Huang & Belongie 2017) in plain torch.

The two networks have exactly the ``nn.Sequential`` layouts of the reference
PyTorch implementation (naoto0804/pytorch-AdaIN, ``net.py``), so its published
``vgg_normalised.pth`` and ``decoder.pth`` state dicts load unchanged (keys
``0.weight``, ``2.weight``, ...).  A style is a 1024-float vector: the channel
means then the channel standard deviations of the style image's relu4_1
features; :meth:`AdaINStylizer.stylize` re-normalises the content features to
those statistics and decodes, one forward pass per batch.

    >>> paths = save_test_weights(folder)  # doctest: +SKIP
    >>> stylizer = AdaINStylizer(*paths)  # doctest: +SKIP
    >>> vector = stylizer.style_vector(style_pixels)  # (1024,) float32  # doctest: +SKIP
    >>> stylizer.stylize(images, vector[None]).shape  # doctest: +SKIP
    (1, 48, 64, 3)
"""

from __future__ import annotations

import os
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

__all__ = [
    "RELU4_1",
    "STYLE_DIM",
    "AdaINStylizer",
    "adain",
    "build_decoder",
    "build_vgg_encoder",
    "calc_mean_std",
    "save_test_weights",
]

RELU4_1 = 31  # modules [:31] of the published VGG end at relu4_1, the only features AdaIN uses
FEATURES = 512  # channels of relu4_1
STYLE_DIM = 2 * FEATURES  # style vector: 512 channel means, then 512 channel stds
STYLE_SHORT_SIDE = 256  # style images are resized so their shorter side is this long
DOWNSAMPLE = 8  # three ceil-mode max-pools before relu4_1

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# (in, out) of each 3x3 conv of VGG-19, None for a 2x2 max-pool; every conv is
# preceded by a 1-pixel reflection pad and followed by a ReLU, as in net.py.
_VGG_PLAN: list[tuple[int, int] | None] = [
    (3, 64), (64, 64), None,  # relu1_1, relu1_2
    (64, 128), (128, 128), None,  # relu2_1, relu2_2
    (128, 256), (256, 256), (256, 256), (256, 256), None,  # relu3_1 .. relu3_4
    (256, 512), (512, 512), (512, 512), (512, 512), None,  # relu4_1 .. relu4_4
    (512, 512), (512, 512), (512, 512), (512, 512),  # relu5_1 .. relu5_4
]  # fmt: skip

# (in, out) of each 3x3 conv of the decoder, "up" for a nearest 2x upsample.
# Every conv has a reflection pad before it and a ReLU after it, except the last (no ReLU).
_DECODER_PLAN: list[tuple[int, int] | str] = [
    (512, 256), "up",
    (256, 256), (256, 256), (256, 256), (256, 128), "up",
    (128, 128), (128, 64), "up",
    (64, 64), (64, 3),
]  # fmt: skip


def build_vgg_encoder() -> nn.Sequential:
    """Return the full VGG-19 "normalised" encoder in the layout of ``vgg_normalised.pth``.

    The whole published layout (53 modules, up to relu5_4) is built, not just the
    part AdaIN computes with, so the published file loads with ``strict=True``
    (a wrong or truncated file fails loudly instead of silently leaving random
    weights); callers slice ``[:RELU4_1]`` afterwards, as the reference ``test.py`` does.
    The first layer is a 1x1 conv that maps RGB in [0, 1] to the mean-subtracted
    BGR 0-255 input Caffe's VGG was trained on.
    """
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    for step in _VGG_PLAN:
        if step is None:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        else:
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(*step, (3, 3)), nn.ReLU()]
    return nn.Sequential(*layers)


def build_decoder() -> nn.Sequential:
    """Return the AdaIN decoder (relu4_1 features -> RGB) in the layout of ``decoder.pth``."""
    layers: list[nn.Module] = []
    for step in _DECODER_PLAN:
        if isinstance(step, str):  # "up"
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(*step, (3, 3)), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no ReLU after the last conv


def calc_mean_std(features: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Return per-channel spatial means and stds of ``[B, C, H, W]`` features, each ``[B, C, 1, 1]``.

    Matches the reference ``calc_mean_std``: unbiased variance plus ``eps``, then the square root.
    """
    flat = features.flatten(2)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2) + eps).sqrt()
    return mean[..., None, None], std[..., None, None]


def adain(content: Tensor, style_mean: Tensor, style_std: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalisation: give ``content`` features the style's channel statistics.

    Args:
        content: features ``[B, C, H, W]``.
        style_mean: target channel means, ``[B, C]`` or ``[B, C, 1, 1]``.
        style_std: target channel stds, same shape as ``style_mean``.
        eps: added to the content variance before the square root.

    Returns:
        ``(content - mean(content)) / std(content) * style_std + style_mean``, shape of ``content``.
    """
    content_mean, content_std = calc_mean_std(content, eps)
    shape = (content.shape[0], content.shape[1], 1, 1)
    return (content - content_mean) / content_std * style_std.reshape(shape) + style_mean.reshape(shape)


def _load(net: nn.Sequential, path: str, map_location: torch.device) -> None:
    """Load a published-layout state dict into ``net``, naming the file if it does not fit."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"{path} does not have the published AdaIN layout: {err}") from err


class AdaINStylizer:
    """AdaIN style transfer from the published weight files, batched over images of one size.

    Args:
        vgg_path: local ``vgg_normalised.pth`` (state dict of :func:`build_vgg_encoder`).
        decoder_path: local ``decoder.pth`` (state dict of :func:`build_decoder`).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``, ...).
        dtype: weights and activations dtype name (``float32``, ``float16``, ``bfloat16``);
            feature statistics are always computed in float32.
    """

    name = "adain"

    def __init__(self, vgg_path: str, decoder_path: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"AdaINStylizer was asked for device {device!r} but torch.cuda.is_available() is False "
                "(no GPU visible, or a CPU-only torch build); use device='cpu'"
            )
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        self.dtype = DTYPES[dtype]
        vgg, decoder = build_vgg_encoder(), build_decoder()
        _load(vgg, vgg_path, self.device)
        _load(decoder, decoder_path, self.device)
        self.encoder = vgg[:RELU4_1].to(self.device, self.dtype).eval()
        self.decoder = decoder.to(self.device, self.dtype).eval()

    def _to_tensor(self, pixels: np.ndarray) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> ``[B, 3, H, W]`` in [0, 1] on the device, in the model dtype."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        return batch.permute(0, 3, 1, 2).to(self.dtype) / 255.0

    @torch.no_grad()
    def style_vector(self, pixels: np.ndarray) -> np.ndarray:
        """Return the style vector of an image: relu4_1 channel means then stds, float32 ``(1024,)``.

        Args:
            pixels: uint8 ``[H, W, 3]``; resized (LANCZOS) so its shorter side is 256 first.
        """
        _check_pixels(pixels[None] if pixels.ndim == 3 else pixels, what="style image")
        # 1. Resize so the shorter side is STYLE_SHORT_SIDE
        height, width = pixels.shape[:2]
        scale = STYLE_SHORT_SIDE / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.array(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))  # writable copy
        # 2. Encode to relu4_1 and take the channel statistics in float32
        features = self.encoder(self._to_tensor(resized[None])).float()
        mean, std = calc_mean_std(features)
        return torch.cat([mean.flatten(), std.flatten()]).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def stylize(self, images: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Stylize a batch of equal-size images, each with its own style vector.

        Args:
            images: uint8 ``[B, H, W, 3]``, H and W at least 9 (relu4_1 must be 2x2 or larger).
            vectors: float32 ``[B, 1024]`` from :meth:`style_vector`.

        Returns:
            uint8 ``[B, H, W, 3]``, the same size as ``images``.
        """
        # 1. Check inputs
        _check_pixels(images, what="images")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (images.shape[0], STYLE_DIM):
            raise ValueError(f"vectors must be [{images.shape[0]}, {STYLE_DIM}], got {list(vectors.shape)}")
        batch, height, width = images.shape[:3]
        if min(height, width) <= DOWNSAMPLE:
            raise ValueError(f"images must be larger than {DOWNSAMPLE}x{DOWNSAMPLE}, got {height}x{width}")
        # 2. Encode the content to relu4_1
        content = self.encoder(self._to_tensor(images)).float()
        # 3. Re-normalise the content features to the style statistics (float32: fp16 variance overflows)
        style = torch.from_numpy(vectors).to(self.device)
        target = adain(content, style[:, :FEATURES], style[:, FEATURES:]).to(self.dtype)
        # 4. Decode; the ceil-mode pools make the output a multiple of 8 at least H x W, so
        #    crop the extra bottom/right rows (pooling is anchored at the top-left corner)
        decoded = self.decoder(target).float()
        if decoded.shape[-2] < height or decoded.shape[-1] < width:  # cannot happen with ceil_mode
            decoded = F.interpolate(decoded, size=(height, width), mode="bilinear", align_corners=False)
        decoded = decoded[:, :, :height, :width]
        # 5. Back to uint8 [B, H, W, 3]
        pixels = (decoded.clamp(0.0, 1.0) * 255).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy().reshape(batch, height, width, 3)


def _check_pixels(pixels: np.ndarray, *, what: str) -> None:
    """Raise a ValueError unless ``pixels`` is a non-empty uint8 ``[B, H, W, 3]`` array."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or 0 in pixels.shape:
        raise ValueError(f"{what} must be non-empty uint8 RGB pixels, got {pixels.dtype} {list(pixels.shape)}")


def _init_small(net: nn.Sequential) -> None:
    """Kaiming-normal conv weights (ReLU gain keeps activations at a steady scale), zero biases."""
    for module in net:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:  # every conv here has one
                nn.init.zeros_(module.bias)


def save_test_weights(folder: str, *, seed: int = 0) -> tuple[str, str]:
    """Write seeded random weights in the published layout, for tests only.

    Args:
        folder: existing local folder; gets ``vgg_normalised.pth`` and ``decoder.pth``.
        seed: ``torch.manual_seed`` for the initialisation; same seed, same bytes.

    Returns:
        ``(vgg_path, decoder_path)``.
    """
    torch.manual_seed(seed)
    vgg, decoder = build_vgg_encoder(), build_decoder()
    _init_small(vgg)
    _init_small(decoder)
    with torch.no_grad():
        # ReLU features are all positive, so a random last conv adds a large per-colour offset
        # that clipping would flatten to 0 or 255; zero-sum kernels remove it, and a mid-grey
        # bias with a smaller gain keeps the RGB output mostly inside [0, 1]
        last_conv = cast(nn.Conv2d, decoder[-1])  # the decoder ends with a conv (no ReLU)
        last = last_conv.weight
        last.sub_(last.mean(dim=(1, 2, 3), keepdim=True)).mul_(0.1)
        assert last_conv.bias is not None
        last_conv.bias.fill_(0.5)
    paths = (os.path.join(folder, "vgg_normalised.pth"), os.path.join(folder, "decoder.pth"))
    torch.save(vgg.state_dict(), paths[0])
    torch.save(decoder.state_dict(), paths[1])
    return paths
