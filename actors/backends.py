"""Generate-stage backends by name (the spec's ``generate.backend``): re-exported from ``models.backends``.

The registry, the ``ImageBackend`` protocol and ``load_backend`` live in ``models.backends``
(one place; no torch at import, so ``pipelines.spec`` can list the names); the generate stage
(``actors.generate``) and the spec import them from here.
"""

from __future__ import annotations

from models.backends import GENERATE_BACKENDS, GenerateBackend, ImageBackend, load_backend

__all__ = ["GenerateBackend", "GENERATE_BACKENDS", "ImageBackend", "load_backend"]
