"""Fixtures for tests/models: one tiny-model cache per test session."""

from __future__ import annotations

import pytest

from models.store import resolve_model_path


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A session-wide node cache (built-in models are built once per session)."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def tiny_sd_path(model_cache_dir: str) -> str:
    """Local folder of the built-in tiny Stable Diffusion pipeline."""
    return resolve_model_path("builtin:tiny-sd", cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_path(model_cache_dir: str) -> str:
    """Local folder of the built-in tiny SDXL pipeline."""
    return resolve_model_path("builtin:tiny-sdxl", cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_flux_builtin_path(model_cache_dir: str) -> str:
    """Local folder of the built-in tiny FLUX pipeline (CLIP + T5 text encoders)."""
    return resolve_model_path("builtin:tiny-flux", cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_sd3_path(model_cache_dir: str) -> str:
    """Local folder of the built-in tiny SD3 pipeline (two CLIPs + T5)."""
    return resolve_model_path("builtin:tiny-sd3", cache_dir=model_cache_dir)
