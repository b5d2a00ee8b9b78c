"""Shared test set-up: one torch thread per test process (the suite runs with pytest -n 2 on 2 cores)."""

import logging

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def sparsify_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog capturing sparsify's warnings."""
    caplog.set_level(logging.WARNING, logger="sparsify")
    return caplog
