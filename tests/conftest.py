"""Shared pytest fixtures."""

from pathlib import Path

import pytest

from opens2s.tiny import build_tiny_model


__all__ = ["tiny_model_dir"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random OpenS2S folder (seed 0), built once per test session in a temporary folder."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-opens2s"))
