"""Text-to-image compute split in two halves: ``PromptEncoder`` and ``ImageGenerator``.

Each class loads only its half of a diffusers pipeline (the memory split the diffusers
docs recommend: text encoders in one place, denoiser + VAE in another) once in
``__init__``; the compute methods are pure functions of their arguments. Embeddings
travel between the halves as float32 numpy arrays with the batch as first axis.

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
other position-dependent kernel found, is avoided by ``_contiguous_group_norm_inputs``.
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
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.batching import in_fixed_chunks
from models.families import FAMILIES, EncodeFn, PipelineFamily, family_for, none_overrides, read_model_index
from models.fastpaths import FastPaths, apply_fast_paths, eager_if_compiled, to_host_uint8, weights_dtype
from models.safety import SAFETY_COMPONENTS, SafetyChecker, has_safety_checker
from models.shared import BLANK, DTYPES, NON_FINITE, SAFETY_FLAGGED, row_problems
from models.shared import torch_dtype as _torch_dtype
from models.store import model_fingerprint
from models.texttower import encode_tower, is_text_tower, load_text_tower

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


def _load_half(
    model_path: str, *, drop: tuple[str, ...], device: str, dtype: str, fast_paths: FastPaths
) -> tuple[DiffusionPipeline, dict]:
    """Load the pipeline at ``model_path`` without the components in ``drop``, fast paths applied.

    Returns:
        ``(pipeline, applied)``, ``applied`` as ``models.fastpaths.apply_fast_paths`` reports it.
    """
    pipe = DiffusionPipeline.from_pretrained(
        model_path, dtype=_torch_dtype(dtype), **none_overrides(model_path, drop)
    )
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    applied = apply_fast_paths(pipe, fast_paths, device)
    if not applied["channels_last"]:
        # With channels_last (CUDA) the hook would copy every GroupNorm input back to NCHW
        # and undo the layout; the batch invariance it buys was measured on CPU kernels only.
        _contiguous_group_norm_inputs(pipe)
    return pipe, applied


def load_text_half(
    model_path: str, *, device: str, dtype: str, fast_paths: FastPaths
) -> tuple[str, Any, EncodeFn, dict]:
    """Load the text half of any model folder: the one loading path of ``PromptEncoder``.

    A diffusers pipeline (a ``models.families`` class) loads without its family's
    ``text_only_drop``; a folder that is no diffusers pipeline but has its own transformers
    tokenizer and text encoder (``models.texttower.is_text_tower``, e.g. a ``models.gan``
    folder) loads them as a ``TextTower``.

    Returns:
        ``(class name, text half, encode function, fast-path report)``; the text half has a
        ``tokenizer``, the encode function is called as ``encode(half, prompts, negatives, device)``.

    Raises:
        ValueError: a folder of neither kind (the message lists the supported pipelines).
    """
    index = read_model_index(model_path)
    class_name = index["_class_name"]
    if class_name not in FAMILIES and is_text_tower(index):
        tower, applied = load_text_tower(model_path, device=device, dtype=dtype, fast_paths=fast_paths)
        return class_name, tower, encode_tower, applied
    class_name, family = family_for(model_path)
    pipe, applied = _load_half(
        model_path, drop=family.text_only_drop, device=device, dtype=dtype, fast_paths=fast_paths
    )
    return class_name, pipe, family.encode, applied


def _contiguous_group_norm_inputs(pipe: DiffusionPipeline) -> None:
    """Make every GroupNorm of the pipeline's modules see an NCHW-contiguous input.

    The VAE's attention block hands the next ResNet a channels-last view, and the CPU
    GroupNorm kernel for channels-last input splits its reduction by batch position
    across threads, so a row's result changed with its place in a micro-batch (found
    in the tiny VAE's mid-block; NCHW GroupNorm is batch-invariant). ``contiguous()``
    is a no-op for the inputs that already are.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                if isinstance(module, torch.nn.GroupNorm):
                    module.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


class PromptEncoder:
    """The text half of a pipeline: prompts in, embeddings out.

    Args:
        model_path: local diffusers folder (see ``models.store.resolve_model_path``), or a
            folder with its own text tower, such as a ``models.gan`` one (see ``load_text_half``).
        device: torch device to run on.
        dtype: weights dtype name (``float32``, ``float16``, ``bfloat16``); None: chosen by
            ``fast_paths.dtype`` (float32 on CPU, bf16 on CUDA by default).
        fast_paths: fast-path settings (``models.fastpaths``); None: the defaults.

    Attributes:
        fast_paths_applied: what ``apply_fast_paths`` applied and skipped, for logs.
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        self.device = torch.device(device)
        fast_paths = fast_paths or FastPaths()
        self.pipeline_class, self.pipe, self._encode, self.fast_paths_applied = load_text_half(
            model_path, device=device, dtype=weights_dtype(fast_paths, device, dtype), fast_paths=fast_paths
        )

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        *,
        guidance: list[float],
        micro_batch: int = 1,
    ) -> dict[str, np.ndarray]:
        """Encode a batch of prompts with the pipeline's own ``encode_prompt``.

        Args:
            prompts: one prompt per row.
            negative_prompts: one per row (``""`` or ``None`` entries: no negative), or None.
            guidance: per-row guidance scale; checked for length. Negative embeddings are
                computed for every row of a classic-CFG pipeline whatever its guidance, so
                a row's embeddings never depend on its batch-mates.
            micro_batch: rows per forward pass (see the module docstring).

        Returns:
            float32 arrays, batch first: ``prompt_embeds`` and, per pipeline family,
            ``negative_prompt_embeds``, ``pooled_prompt_embeds``,
            ``negative_pooled_prompt_embeds``; for a GAN folder ``text_embeds`` only.
        """
        # 1. Check inputs
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        negatives = [negative or "" for negative in (negative_prompts or [""] * len(prompts))]
        if not (len(prompts) == len(negatives) == len(guidance)):
            raise ValueError(
                f"prompts ({len(prompts)}), negative_prompts ({len(negatives)}) and "
                f"guidance ({len(guidance)}) must have one entry per row"
            )

        # 2. Encode fixed-size chunks with the family's call convention; hand over as
        #    float32 numpy, batch first
        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
            tensors = self._encode(
                self.pipe, [prompts[i] for i in rows], [negatives[i] for i in rows], self.device
            )
            return {key: value.float().cpu().numpy() for key, value in tensors.items()}

        return in_fixed_chunks(compute, len(prompts), micro_batch)

    @property
    def max_tokens(self) -> int:
        """Tokens per prompt the primary tokenizer keeps when encoding (``model_max_length``).

        Longer prompts are truncated by ``encode`` (for SD/SDXL/FLUX: 77, CLIP's limit).
        """
        return int(self.pipe.tokenizer.model_max_length)

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Count the primary tokenizer's tokens per prompt, without truncation.

        Args:
            prompts: one prompt per row.

        Returns:
            the number of token ids per prompt, special tokens (BOS/EOS) included; a
            count above ``max_tokens`` means ``encode`` drops the prompt's tail.
        """
        if not prompts:
            return []
        # verbose=False: no "sequence length is longer than the maximum" warning, counting
        # over-long prompts is the point here
        token_ids = self.pipe.tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in token_ids]


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
        self.pipe, self.fast_paths_applied = _load_half(
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
        # 1. Check inputs
        batch = _check_generate_inputs(self.family, embeds, seeds, width, height, steps)
        if batch == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8)
        # 2. Embeddings to the pipeline's device and dtype
        tensors = self._to_tensors(embeds)

        def compute(rows: np.ndarray) -> np.ndarray:
            images = self._run_chunk(
                tensors, rows, seeds, width=width, height=height, steps=steps, guidance=guidance
            )
            return to_host_uint8(images, pinned=self.pinned_transfer)

        return in_fixed_chunks(compute, batch, micro_batch)

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
        # 1. Check inputs
        batch = _check_generate_inputs(self.family, embeds, seeds, width, height, steps)
        if batch == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8), {}
        # 2. Embeddings to the pipeline's device and dtype
        tensors = self._to_tensors(embeds)
        call: _ChunkCall = {"width": width, "height": height, "steps": steps, "guidance": guidance}

        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
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

        checked = in_fixed_chunks(compute, batch, micro_batch)
        # 6. One status per row that is not ok, the first that applies
        return checked["images"], row_problems(
            checked["images"], non_finite=checked["non_finite"], flagged=checked["flagged"]
        )

    def _to_tensors(self, embeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The family's embeddings as tensors on the pipeline's device and dtype."""
        return {
            key: torch.from_numpy(np.ascontiguousarray(embeds[key])).to(self.device, self.dtype)
            for key in self.family.embed_keys
            if key in embeds
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
        ).images.permute(0, 2, 3, 1)


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
