"""Model loading and compute: plain torch/diffusers, no Ray.

Submodules import torch lazily so that ``import models`` stays light.
"""
