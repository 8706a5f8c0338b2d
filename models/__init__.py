"""Model loading and compute for pixelmill: plain torch/diffusers, no Ray.

Modules (import the one you need; this package import stays light):

- ``store``: turn a model URI (``builtin:``, local path, ``file://``, any fsspec URL)
  into a local diffusers folder, cached once per node; ``model_fingerprint``.
- ``builtin``: registry of tiny, seeded pipelines built in code (no model hub).
- ``tiny_tokenizer``: the small CLIP BPE vocabulary the built-in models use.
- ``families``: per-pipeline-class differences (SD, SDXL, FLUX) as a registry.
- ``diffusion``: ``PromptEncoder`` (text side) and ``ImageGenerator`` (denoise + decode).
- ``batching``: fixed-shape micro-batches, so a row's bytes do not depend on its batch.
- ``publish``: file-locked, atomic "build once into a folder" helper.
"""
