"""Loading one half of a model folder: the pipeline's components without the other half's.

The memory split the diffusers docs recommend: text encoders in one place, denoiser + VAE
in another. ``load_pipeline_half`` loads a diffusers pipeline without the components a
half does not use; ``load_text_half`` is the one loading path of every folder's text half
(a diffusers pipeline, or a folder's own transformers text tower such as a GAN's).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.families import FAMILIES, EncodeFn, family_for, none_overrides, read_model_index
from models.fastpaths import FastPaths, apply_fast_paths
from models.shared import torch_dtype
from models.texttower import encode_tower, is_text_tower, load_text_tower

__all__ = ["load_pipeline_half", "load_text_half"]


def load_pipeline_half(
    model_path: str, *, drop: tuple[str, ...], device: str, dtype: str, fast_paths: FastPaths
) -> tuple[DiffusionPipeline, dict]:
    """Load the pipeline at ``model_path`` without the components in ``drop``, fast paths applied.

    Returns:
        ``(pipeline, applied)``, ``applied`` as ``models.fastpaths.apply_fast_paths`` reports it.
    """
    pipe = DiffusionPipeline.from_pretrained(
        model_path, dtype=torch_dtype(dtype), **none_overrides(model_path, drop)
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
    pipe, applied = load_pipeline_half(
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


