"""GPU fast paths for a loaded diffusers pipeline: dtype, SDPA, channels_last, compile, tiny VAE.

``apply_fast_paths`` takes a pipeline already on its device and applies the settings of a
``FastPaths`` (built from the job spec's ``model.performance``), returning what it applied
and what it skipped and why, for logs and benchmarks. Everything but the tiny VAE is a
CUDA-only speed-up: on CPU those settings are skipped, so CPU output bytes (the project's
tests and byte determinism) stay exactly what they were. The tiny VAE changes the images
by design, so it applies on every device when asked for.

The weights dtype is chosen before loading (``weights_dtype``): loading in bf16 halves the
host memory and the copy to the GPU. Images leave the device as uint8 through a pinned
buffer (``to_host_uint8``): a quarter of the bytes of float32, copied without a staging copy.

Example:
    >>> pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
    >>> apply_fast_paths(pipe, FastPaths(compile=True), "cuda")["compile"]
    ['unet', 'vae.decoder']
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

__all__ = ["FastPaths", "apply_fast_paths", "weights_dtype", "load_tiny_vae", "to_host_uint8", "eager_if_compiled"]

# Pipeline attributes that hold the denoiser, by family (SD/SDXL: unet, FLUX: transformer).
DENOISERS = ("unet", "transformer")
# Modules whose convolutions gain from channels_last (transformers text encoders have none).
CONVOLUTIONAL = ("unet", "vae")


@dataclass(frozen=True)
class FastPaths:
    """Fast-path settings; field names and defaults are those of ``pipelines.spec.PerformanceSpec``.

    Attributes:
        dtype: weights dtype on CUDA: ``auto`` (bf16 where supported, else float32) or a dtype name.
        sdpa: set diffusers' ``AttnProcessor2_0`` (PyTorch SDPA) on classic attention layers.
        channels_last: UNet and VAE in channels_last memory format.
        compile: ``torch.compile`` the denoiser and the VAE decoder, with ``compile_mode``.
        tiny_vae: local folder of a diffusers ``AutoencoderTiny`` to decode with, or None.
        pinned_transfer: copy uint8 images device -> host through pinned memory.
    """

    dtype: str = "auto"
    sdpa: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    tiny_vae: str | None = None
    pinned_transfer: bool = True

    @classmethod
    def off(cls) -> FastPaths:
        """Every fast path off: the plain float32 pipeline as diffusers loads it."""
        return cls(dtype="float32", sdpa=False, channels_last=False, compile=False, pinned_transfer=False)


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def weights_dtype(fast: FastPaths, device: str | torch.device, explicit: str | None = None) -> str:
    """Return the weights dtype name to load with.

    Args:
        fast: the settings; ``fast.dtype`` counts on CUDA only.
        device: where the pipeline runs.
        explicit: a dtype the caller asked for by name (a stage's own ``dtype``); it wins.
    """
    if explicit is not None:
        return explicit
    if not _is_cuda(device):
        return "float32"
    if fast.dtype == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return fast.dtype


def load_tiny_vae(folder: str, *, like: torch.nn.Module, vae_scale_factor: int) -> torch.nn.Module:
    """Load the ``AutoencoderTiny`` saved in ``folder`` on ``like``'s device and dtype.

    Args:
        folder: local folder with ``config.json`` and weights (``save_pretrained`` layout).
        like: the pipeline's own VAE, whose latent channels the tiny one must take.
        vae_scale_factor: the pipeline's pixels per latent; the tiny decoder must upsample by it.

    Raises:
        ValueError: the tiny VAE does not fit the pipeline's latents.
    """
    from diffusers import AutoencoderTiny

    parameter = next(like.parameters())
    tiny = AutoencoderTiny.from_pretrained(folder, dtype=parameter.dtype)
    config = tiny.config
    upsampling = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    if upsampling != vae_scale_factor:
        raise ValueError(
            f"tiny VAE {folder!r} upsamples latents x{upsampling} but the pipeline's VAE x{vae_scale_factor}; "
            f"use a tiny VAE with {vae_scale_factor.bit_length()} decoder blocks (upsampling_scaling_factor 2)"
        )
    # a diffusers VAE: its ``config`` is a FrozenDict, which nn.Module's typing reads as a submodule
    like_channels = cast(Any, like).config.latent_channels
    if config.latent_channels != like_channels:
        raise ValueError(
            f"tiny VAE {folder!r} takes {config.latent_channels} latent channels, "
            f"the pipeline's VAE {like_channels}"
        )
    return tiny.to(parameter.device)


def apply_fast_paths(
    pipe: Any, fast: FastPaths, device: str | torch.device, *, cuda_paths_on_cpu: bool = False
) -> dict[str, Any]:
    """Apply ``fast`` to ``pipe`` (already on ``device``, in its weights dtype), in place.

    Args:
        pipe: a diffusers pipeline, or one half of one (missing components are skipped).
        fast: the settings.
        device: the pipeline's device; the CUDA-only paths are skipped elsewhere.
        cuda_paths_on_cpu: apply the CUDA-only paths on CPU too (benchmark smoke runs and
            tests of the mechanics; it changes CPU output bytes).

    Returns:
        What was applied: ``dtype``, ``tiny_vae`` (folder or None), ``sdpa``,
        ``channels_last`` and ``compile`` (component names), ``compile_mode``,
        ``pinned_transfer``, and ``skipped`` (``{setting: reason}``).
    """
    applied: dict[str, Any] = {
        "device": str(device),
        "dtype": _pipeline_dtype(pipe),
        "tiny_vae": None,
        "sdpa": [],
        "channels_last": [],
        "compile": [],
        "compile_mode": None,
        "pinned_transfer": False,
        "skipped": {},
    }
    skipped: dict[str, str] = applied["skipped"]
    # 1. Tiny VAE first, so the later paths act on the decoder that will run
    if fast.tiny_vae is not None:
        if getattr(pipe, "vae", None) is None:
            skipped["tiny_vae"] = "this pipeline half has no VAE"
        else:
            pipe.vae = load_tiny_vae(fast.tiny_vae, like=pipe.vae, vae_scale_factor=pipe.vae_scale_factor)
            applied["tiny_vae"] = fast.tiny_vae
    wanted = [name for name in ("sdpa", "channels_last", "compile", "pinned_transfer") if getattr(fast, name)]
    if not (_is_cuda(device) or cuda_paths_on_cpu):
        skipped.update({name: f"CUDA only; running on {device}" for name in wanted})
        return applied
    # 2. Attention through torch's scaled_dot_product_attention
    if fast.sdpa:
        applied["sdpa"] = _use_sdpa(pipe, skipped)
    # 3. NHWC weights: convolutions then run on tensor-core kernels without layout copies
    if fast.channels_last:
        for name in CONVOLUTIONAL:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                # Module.to takes memory_format at run time; torch's overloads leave it out
                cast(Any, module).to(memory_format=torch.channels_last)
                applied["channels_last"].append(name)
    # 4. torch.compile in place (the pipeline keeps its own modules); traced on first call
    if fast.compile:
        applied["compile"] = _compile(pipe, fast.compile_mode)
        applied["compile_mode"] = fast.compile_mode
    applied["pinned_transfer"] = fast.pinned_transfer
    return applied


def _pipeline_dtype(pipe: Any) -> str:
    """The dtype name of the first component with weights ("none" without any)."""
    for component in pipe.components.values():
        parameter = next(component.parameters(), None) if isinstance(component, torch.nn.Module) else None
        if parameter is not None:
            return str(parameter.dtype).removeprefix("torch.")
    return "none"


def _use_sdpa(pipe: Any, skipped: dict[str, str]) -> list[str]:
    """Set ``AttnProcessor2_0`` on every component whose attention is the classic kind.

    Components with other processors (FLUX's, IP-adapter, LoRA-fused ...) already carry
    their own SDPA variant or need theirs; they are left alone and named in ``skipped``.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    done = []
    for name, component in pipe.components.items():
        processors = getattr(component, "attn_processors", None) if isinstance(component, torch.nn.Module) else None
        if not processors:
            continue
        kinds = {type(processor) for processor in processors.values()}
        if kinds <= {AttnProcessor, AttnProcessor2_0}:
            component.set_attn_processor(AttnProcessor2_0())
            done.append(name)
        else:
            skipped[f"sdpa:{name}"] = "own attention processors: " + ", ".join(sorted(k.__name__ for k in kinds))
    return done


def _compile(pipe: Any, mode: str) -> list[str]:
    """``Module.compile`` the denoiser and the VAE decoder; return their names."""
    compiled = []
    for name in DENOISERS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile(mode=mode, dynamic=False)
            compiled.append(name)
    decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
    if isinstance(decoder, torch.nn.Module):
        decoder.compile(mode=mode, dynamic=False)
        compiled.append("vae.decoder")
    return compiled


def eager_if_compiled(applied: dict[str, Any]) -> AbstractContextManager:
    """A context that runs compiled modules eagerly, when ``applied`` compiled any.

    The float32 decode retry changes the VAE's weight dtype for one call; compiled code
    would recompile for it (minutes in max-autotune) and again on the way back.
    """
    return torch.compiler.set_stance("force_eager") if applied.get("compile") else nullcontext()


def to_host_uint8(images: torch.Tensor, *, pinned: bool) -> np.ndarray:
    """Float images in [0, 1] -> uint8 numpy on the host, converted on the images' device.

    Rounds as diffusers' ``numpy_to_pil`` does (``x * 255`` in float32, half to even), so on
    CPU the bytes equal those of the same arithmetic in numpy.

    Args:
        images: float tensor, any shape (e.g. ``[B, H, W, 3]``), on any device.
        pinned: on CUDA, copy through a page-locked buffer with ``non_blocking``.
    """
    as_uint8 = (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).contiguous()
    if as_uint8.device.type != "cuda":
        return as_uint8.numpy()
    if not pinned:
        return as_uint8.cpu().numpy()
    # torch caches pinned blocks, so a buffer per chunk costs no cudaHostAlloc after the first
    host = torch.empty(as_uint8.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(as_uint8, non_blocking=True)
    torch.cuda.current_stream(as_uint8.device).synchronize()
    return host.numpy()
