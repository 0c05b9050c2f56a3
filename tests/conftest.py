"""Shared fixtures. MNIST comes from the real cache (fetched once per machine, then checked)."""

from __future__ import annotations

import pytest

from edge_runtime import mnist
from exporter import mnist_fetch


@pytest.fixture(scope="session")
def mnist_data() -> mnist.Mnist:
    """The standard split, fetched into the user's cache on first use (a few seconds, once)."""
    return mnist_fetch.load_mnist()
