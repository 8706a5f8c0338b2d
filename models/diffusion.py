"""The image half of a diffusers pipeline: ``ImageGenerator`` (embeddings + seeds in, uint8 images out).

Text-to-image compute is split in two halves, each loading only its part of a pipeline
once in ``__init__`` (``models.loading``): ``models.encoder.PromptEncoder`` (re-exported
here, so both halves import from one place) and ``ImageGenerator``; the compute methods
are pure functions of their arguments. Embeddings travel between the halves as float32
numpy arrays with the batch as first axis.

Batch invariance: a row must give the same bytes whatever batch it is computed in.
Batched CPU math alone does not: MKL's GEMM picks its kernel from the number of rows
(GEMV for one row, other blockings for small batches) and oneDNN convolutions differ
between batch 1 and larger batches; the 1-ulp differences become +-1 in a few uint8
pixels. ``torch.use_deterministic_algorithms`` does not help: it makes one shape
reproducible run to run, it does not make different shapes agree. Both halves run
every forward pass at one fixed shape of ``micro_batch`` rows, padding the last chunk
(``models.batching.in_fixed_chunks``), and inside each chunk the small GEMMs whose
multi-threaded MKL kernel depends on a row's position run row by row
(``models.batching.RowwiseSmallLinear``); GroupNorm on channels-last input, the one
other position-dependent kernel found, is avoided by ``models.loading``.
A row's bytes then depend on the row and ``micro_batch`` only, for a fixed device,
dtype, thread count and library build (1 and 2 threads, idle and busy CPU, are tested;
bytes do differ between thread counts, so a stage's CPU count is part of its setting).

Output checks: ``ImageGenerator.generate_checked`` returns the same images as
``generate`` plus the rows that are not ok: NaN/inf (retried once with a float32 VAE),
flagged by the model folder's own safety checker (``models.safety``), or all black.
The checks run per fixed-size chunk too, so a row's verdict does not depend on its batch.

Fast paths (``models.fastpaths``): both halves take a ``FastPaths`` (default: the spec's
defaults) that picks the weights dtype when none is given (bf16 on CUDA) and, on CUDA only,
sets SDPA attention, channels_last and optionally ``torch.compile``; a tiny VAE
(``AutoencoderTiny``) can replace the pipeline's VAE on any device. Images become uint8 on
the device and cross to the host through pinned memory. On CPU, without a tiny VAE, every
byte is what it was without fast paths.

Example:
    >>> from models.store import resolve_model_path
    >>> path = resolve_model_path("builtin:tiny-sd", cache_dir="/tmp/pixelmill-cache")
    >>> embeds = PromptEncoder(path).encode(["a red cat"], None, guidance=[1.0])
    >>> images = ImageGenerator(path).generate(
    ...     embeds, seeds=[0], width=64, height=64, steps=2, guidance=1.0)
    >>> images.shape, images.dtype
    ((1, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict, cast

import numpy as np
import torch

from models.batching import in_fixed_chunks
from models.encoder import PromptEncoder
from models.families import PipelineFamily, family_for
from models.fastpaths import FastPaths, eager_if_compiled, to_host_uint8, weights_dtype
from models.loading import load_pipeline_half, load_text_half
from models.safety import SAFETY_COMPONENTS, SafetyChecker, has_safety_checker
from models.shared import BLANK, DTYPES, NON_FINITE, SAFETY_FLAGGED, row_problems
from models.shared import torch_dtype as _torch_dtype
from models.store import model_fingerprint

# Defined in ``models.shared`` (every backend's halves share them), imported from here as well.
__all__ = [
    "PromptEncoder", "ImageGenerator", "load_text_half", "DTYPES", "NON_FINITE", "SAFETY_FLAGGED", "BLANK",
    "row_problems",
]


class _ChunkCall(TypedDict):
    """The keyword arguments ``ImageGenerator._run_chunk`` takes besides the rows."""

    width: int
    height: int
    steps: int
    guidance: float


class ImageGenerator:
    """The image half of a pipeline: embeddings + seeds in, uint8 images out.

    Args:
        model_path: local diffusers folder (see ``models.store.resolve_model_path``).
        device: torch device to run on.
        dtype: weights dtype name (``float32``, ``float16``, ``bfloat16``); None: chosen by
            ``fast_paths.dtype`` (float32 on CPU, bf16 on CUDA by default).
        fast_paths: fast-path settings (``models.fastpaths``); None: the defaults.
            ``fast_paths.tiny_vae`` is a local folder (resolve URIs with the model store).

    Attributes:
        info: ``model_hash`` (of the model folder, and of the tiny VAE when one decodes),
            ``scheduler`` and ``pipeline`` (class names), for provenance.
        fast_paths_applied: what ``apply_fast_paths`` applied and skipped, for logs.
        safety_checker: the model folder's own safety checker (``models.safety``), kept
            outside ``pipe`` and used by ``generate_checked`` only; None when it has none.
        fp32_decode_retries: micro-batches ``generate_checked`` re-ran with a float32 VAE
            (the pipeline's or the tiny one) because they decoded to NaN/inf (cumulative).
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        self.pipeline_class, self.family = family_for(model_path)  # a diffusers pipeline, or ValueError
        self.device = torch.device(device)
        fast_paths = fast_paths or FastPaths()
        dtype = weights_dtype(fast_paths, device, dtype)
        self.dtype = _torch_dtype(dtype)
        drop = self.family.image_only_drop
        if has_safety_checker(model_path):
            # Load the checker with the image half, then hold it outside the pipeline, so the
            # pipeline ``generate`` calls is the same with or without one
            drop = tuple(name for name in drop if name not in SAFETY_COMPONENTS)
        self.pipe, self.fast_paths_applied = load_pipeline_half(
            model_path, drop=drop, device=device, dtype=dtype, fast_paths=fast_paths
        )
        self.pinned_transfer = bool(self.fast_paths_applied["pinned_transfer"])
        self.safety_checker = SafetyChecker.detach_from(self.pipe, device=self.device, dtype=self.dtype)
        self.fp32_decode_retries = 0
        self.info: dict[str, str] = {
            "model_hash": _model_hash(model_path, fast_paths.tiny_vae),
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": type(self.pipe).__name__,
        }

    @torch.no_grad()
    def generate(
        self,
        embeds: dict[str, np.ndarray],
        *,
        seeds: list[int],
        width: int,
        height: int,
        steps: int,
        guidance: float,
        micro_batch: int = 1,
    ) -> np.ndarray:
        """Denoise and decode one image per row.

        Args:
            embeds: output of ``PromptEncoder.encode`` (possibly re-batched rows).
            seeds: one seed per row; each row gets its own generator.
            width, height: image size in pixels, multiples of the family's size multiple.
            steps: number of denoising steps.
            guidance: guidance scale shared by the batch (CFG when > 1 for SD/SDXL).
            micro_batch: rows per forward pass (see the module docstring).

        Returns:
            uint8 array ``[B, height, width, 3]``.
        """
        # 1-2. Check inputs; embeddings to the pipeline's device and dtype
        batch, tensors = self._prepare(embeds, seeds, width=width, height=height, steps=steps)
        call: _ChunkCall = {"width": width, "height": height, "steps": steps, "guidance": guidance}

        # 3. Fixed-size chunks, uint8 on the device, then to the host
        def compute(rows: np.ndarray) -> np.ndarray:
            return to_host_uint8(self._run_chunk(tensors, rows, seeds, **call), pinned=self.pinned_transfer)

        return in_fixed_chunks(compute, batch, micro_batch) if batch else _no_images(width, height)

    @torch.no_grad()
    def generate_checked(
        self,
        embeds: dict[str, np.ndarray],
        *,
        seeds: list[int],
        width: int,
        height: int,
        steps: int,
        guidance: float,
        micro_batch: int = 1,
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """``generate``, plus a check of every image: non-finite, safety-flagged, blank.

        A micro-batch with a NaN/inf image is run again with the VAE in float32 (when
        it is not already: fp16 VAEs overflow); its rows that were finite keep their
        first bytes, so healthy rows always match ``generate`` byte for byte. The retry
        re-runs the whole chunk through the pipeline, denoising included, so that the
        decode stays the pipeline's own for every family (SD, SDXL, FLUX); it doubles
        that chunk's cost.

        Args:
            embeds, seeds, width, height, steps, guidance, micro_batch: as for ``generate``.

        Returns:
            ``(images, problems)``: uint8 ``[B, height, width, 3]`` (non-finite values
            become 0, safety-flagged rows are black) and, for the rows that are not ok,
            ``{row index in this call: (status, reason)}`` with status ``"error"`` (NaN/inf
            even after a float32 decode, or an all-black image) or ``"filtered"`` (flagged
            by the model's safety checker).
        """
        # 1-2. Check inputs; embeddings to the pipeline's device and dtype
        batch, tensors = self._prepare(embeds, seeds, width=width, height=height, steps=steps)
        if batch == 0:
            return _no_images(width, height), {}
        call: _ChunkCall = {"width": width, "height": height, "steps": steps, "guidance": guidance}
        # 3-5. Fixed-size chunks, each generated and checked (``_checked_chunk``)
        checked = in_fixed_chunks(lambda rows: self._checked_chunk(tensors, rows, seeds, call), batch, micro_batch)
        # 6. One status per row that is not ok, the first that applies
        return checked["images"], row_problems(
            checked["images"], non_finite=checked["non_finite"], flagged=checked["flagged"]
        )

    def _prepare(
        self, embeds: dict[str, np.ndarray], seeds: list[int], *, width: int, height: int, steps: int
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Check ``generate``'s inputs; return the batch size and the family's embeddings as
        tensors on the pipeline's device and dtype.

        Raises:
            ValueError: a size that is not a positive multiple of the family's, steps < 1, or
                embeddings and seeds of different lengths.
        """
        batch = _check_generate_inputs(self.family, embeds, seeds, width, height, steps)
        # attention masks travel as float32 like the embeddings; the pipeline takes them as int64
        tensors = {
            key: torch.from_numpy(np.ascontiguousarray(embeds[key])).to(
                self.device, torch.int64 if key in self.family.mask_keys else self.dtype
            )
            for key in self.family.embed_keys
            if key in embeds
        }
        return batch, tensors

    def _checked_chunk(
        self, tensors: dict[str, torch.Tensor], rows: np.ndarray, seeds: list[int], call: _ChunkCall
    ) -> dict[str, np.ndarray]:
        """One fixed-size chunk of ``generate_checked``: ``images`` (uint8), ``non_finite`` and
        ``flagged`` (bool per row)."""
        # 3. The chunk as generate computes it, still on the device; the padding (a
        #    repeat of the last row) never triggers a retry on its own
        images = self._run_chunk(tensors, rows, seeds, **call)
        padding = torch.from_numpy(np.concatenate([[False], rows[1:] == rows[:-1]])).to(images.device)
        non_finite = ~torch.isfinite(images).flatten(1).all(dim=1) & ~padding
        # 4. NaN/inf (fp16 VAE overflow, pipeline or tiny VAE): decode the chunk again in float32
        if non_finite.any() and self.pipe.vae.dtype != torch.float32:
            self.fp32_decode_retries += 1
            with _float32_vae(self.pipe.vae), eager_if_compiled(self.fast_paths_applied):
                retried = self._run_chunk(tensors, rows, seeds, **call)
            images = images.float()
            images[non_finite] = retried[non_finite].float()
            non_finite = ~torch.isfinite(images).flatten(1).all(dim=1) & ~padding
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
        # 5. The model's own safety checker (blacks out the rows it flags), on the host
        flagged = np.zeros(len(rows), dtype=bool)
        if self.safety_checker is not None:
            checked_images, flagged = self.safety_checker.check(images.float().cpu().numpy())
            images = torch.from_numpy(checked_images)
        return {
            "images": to_host_uint8(images, pinned=self.pinned_transfer),
            "non_finite": non_finite.cpu().numpy(),
            "flagged": flagged,
        }

    def _run_chunk(
        self,
        tensors: dict[str, torch.Tensor],
        rows: np.ndarray,
        seeds: list[int],
        *,
        width: int,
        height: int,
        steps: int,
        guidance: float,
    ) -> torch.Tensor:
        """Denoise + decode one fixed-size chunk: ``[len(rows), H, W, 3]`` in [0, 1] (NaN/inf
        where the decode overflowed), in the VAE's dtype, on the device."""
        index = torch.as_tensor(rows, device=self.device)
        # A fresh generator per row, even for a padding duplicate: a shared one would be
        # advanced twice (ancestral schedulers also draw noise in every step)
        generators = [torch.Generator(self.device).manual_seed(int(seeds[i])) for i in rows]
        # the base class has no __call__; every concrete pipeline class (SD, SDXL, FLUX) defines one
        return cast(Any, self.pipe)(
            **{key: value[index] for key, value in tensors.items()},
            generator=generators,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="pt",  # stays on the device: checks and uint8 conversion happen there
            **self.family.call_kwargs,
        ).images.permute(0, 2, 3, 1)


def _no_images(width: int, height: int) -> np.ndarray:
    """The result of an empty batch: uint8 ``[0, height, width, 3]``."""
    return np.zeros((0, height, width, 3), dtype=np.uint8)


def _model_hash(model_path: str, tiny_vae: str | None) -> str:
    """``model_fingerprint`` of the model folder, combined with the tiny VAE's when one decodes."""
    fingerprint = model_fingerprint(model_path)
    if tiny_vae is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}+tiny_vae:{model_fingerprint(tiny_vae)}".encode()).hexdigest()[:16]


def _cast_inputs_to_float32(_module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: floating-point tensor arguments to float32."""
    return tuple(arg.float() if torch.is_tensor(arg) and arg.is_floating_point() else arg for arg in args)


@contextmanager
def _float32_vae(vae: torch.nn.Module) -> Iterator[None]:
    """Run ``vae`` in float32 inside the block, then put back its original weights.

    The weights are swapped tensor by tensor (not ``vae.to``): the originals come back
    untouched, whatever mix of dtypes they had, and diffusers' ``ModelMixin.to`` would
    log a warning on each cast. SD and FLUX hand ``vae.decode`` the latents in the
    denoiser's dtype, so the inputs of the VAE's parts (``post_quant_conv``,
    ``decoder``, ...) are cast to float32 as well.
    """
    originals = [
        (tensor, tensor.data)
        for tensor in itertools.chain(vae.parameters(), vae.buffers())
        if tensor.is_floating_point()
    ]
    hooks = [child.register_forward_pre_hook(_cast_inputs_to_float32) for child in vae.children()]
    try:
        for tensor, data in originals:
            tensor.data = data.float()
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for tensor, data in originals:
            tensor.data = data


def _check_generate_inputs(
    family: PipelineFamily,
    embeds: dict[str, np.ndarray],
    seeds: list[int],
    width: int,
    height: int,
    steps: int,
) -> int:
    """Validate ``generate``'s arguments; return the batch size."""
    multiple = family.size_multiple
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f"width and height must be positive multiples of {multiple}, got {width}x{height}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if "prompt_embeds" not in embeds:
        raise ValueError("embeds has no 'prompt_embeds'; pass the output of PromptEncoder.encode")
    batch = len(embeds["prompt_embeds"])
    sizes = {key: len(value) for key, value in embeds.items()}
    if any(size != batch for size in sizes.values()) or len(seeds) != batch:
        raise ValueError(f"every embedding and seeds need one entry per row; got {sizes}, seeds={len(seeds)}")
    return batch
