"""Fixtures for tests/training: one model cache per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A session-wide node cache (built-in models are resolved once per session)."""
    return str(tmp_path_factory.mktemp("model-cache"))
