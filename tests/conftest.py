"""Shared pytest fixtures."""

from pathlib import Path

import pytest
import torch


__all__ = ["single_thread", "tiny_model_dir"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random OpenS2S folder (seed 0), built once per test session in a temporary folder."""
    from opens2s.conversion.tiny import build_tiny_model  # here, so a broken package fails its tests, not collection

    return build_tiny_model(tmp_path_factory.mktemp("tiny-opens2s"))


@pytest.fixture(scope="module")
def single_thread():
    """Run a module on one intra-op thread (restored afterwards).

    For modules of tiny decoder tensors: with 2 threads synchronisation dominates and a busy neighbour core can stall
    a call for seconds. Thread count moves float32 results by ~5e-6 at most (token2wav fixture README), well inside
    every tolerance used.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
