"""sparsify's progress bars never run into a log line: records are written above an active bar."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch

from sparsify._progress import tqdm
from sparsify.criteria.sampler import GradSampler


def _terminal_lines(text: str) -> list[str]:
    """What a terminal shows: each line as its last carriage return left it."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


@pytest.fixture
def stderr_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """A terminal-like stderr with a plain StreamHandler on it (what `sparsify` and basicConfig set up)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("sparsify")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    yield stream
    logger.removeHandler(handler)


def test_log_lines_are_written_above_an_active_bar(stderr_log: io.StringIO) -> None:
    log = logging.getLogger("sparsify.test")
    handlers = list(logging.getLogger("sparsify").handlers)
    with tqdm(total=3, desc="work", file=sys.stderr, disable=False, mininterval=0, leave=False) as bar:
        for i in range(3):
            log.warning("step %d", i)
            bar.update()
    log.warning("after")
    shown = [line for line in _terminal_lines(stderr_log.getvalue()) if "WARNING" in line]
    assert shown == [f"WARNING sparsify.test: step {i}" for i in range(3)] + ["WARNING sparsify.test: after"]
    assert logging.getLogger("sparsify").handlers == handlers  # restored when the bar closed


def test_a_library_bar_with_a_warning_inside_keeps_lines_whole(stderr_log: io.StringIO) -> None:
    """GradSampler's bar (progress=True) while its loss warns on every batch."""
    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(2, 4), torch.randint(0, 2, (2,))) for _ in range(3)]
    log = logging.getLogger("sparsify.test")

    def loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log.warning("a batch")
        return torch.nn.functional.cross_entropy(outputs, target)

    sampler = GradSampler(data, loss, progress=True)
    assert len(list(sampler.gradients(model, list(model.parameters()), 3))) == 3
    lines = _terminal_lines(stderr_log.getvalue())
    assert [line for line in lines if "WARNING" in line] == ["WARNING sparsify.test: a batch"] * 3


def test_a_disabled_bar_changes_no_handler() -> None:
    handlers = list(logging.getLogger().handlers)
    with tqdm(total=1, disable=True):
        assert logging.getLogger().handlers == handlers
