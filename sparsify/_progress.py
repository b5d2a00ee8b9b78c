"""sparsify's progress bars: ``tqdm``, with log lines written *above* an active bar, never into it.

Why: a bar redraws its line with ``\\r``; a log record written meanwhile by a plain ``StreamHandler`` lands
after the bar's text on the same line, and the next redraw overwrites half of it
(``sparsegpt layers:  40%|████      | 2/5WARNING sparsify...``). While any sparsify bar is open, every
``logging.StreamHandler`` on the root logger and on ``sparsify``'s loggers that writes to the terminal
streams (``sys.stderr`` / ``sys.stdout``) writes through ``tqdm.write`` instead, which clears the bars,
writes the line and redraws them; the handlers are restored when the last bar closes. Handlers writing
to files are left alone. A disabled bar (``disable=True``, or not a terminal with ``disable=None``)
changes nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from tqdm.auto import tqdm as _tqdm

__all__ = ["tqdm"]

_lock = threading.Lock()
_open = 0
_swapped: list[tuple[logging.Logger, logging.StreamHandler, logging.Handler]] = []


class _WriteAboveBars(logging.Handler):
    """Format with the replaced handler's formatter and write through ``tqdm.write``."""

    def __init__(self, original: logging.StreamHandler) -> None:
        super().__init__(original.level)
        self.original = original
        self.setFormatter(original.formatter)
        self.filters = list(original.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _tqdm.write(self.format(record), file=self.original.stream)
        except Exception:  # as logging does: a broken handler must not break the work
            self.handleError(record)


def _loggers() -> list[logging.Logger]:
    names = ["sparsify", *(n for n in logging.root.manager.loggerDict if n.startswith("sparsify."))]
    return [logging.root, *(logging.getLogger(n) for n in names)]


def _redirect() -> None:
    for log in _loggers():
        for handler in list(log.handlers):
            if (type(handler) is logging.StreamHandler  # not FileHandler & co.
                    and getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)):
                replacement = _WriteAboveBars(handler)
                log.removeHandler(handler)
                log.addHandler(replacement)
                _swapped.append((log, handler, replacement))


def _restore() -> None:
    while _swapped:
        log, handler, replacement = _swapped.pop()
        log.removeHandler(replacement)
        log.addHandler(handler)


class tqdm(_tqdm):
    """``tqdm.auto.tqdm`` that keeps log lines above it while it is open (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redirecting = not self.disable
        if self._redirecting:
            global _open
            with _lock:
                if _open == 0:
                    _redirect()
                _open += 1

    def close(self) -> None:
        try:
            super().close()
        finally:
            if getattr(self, "_redirecting", False):
                self._redirecting = False
                global _open
                with _lock:
                    _open -= 1
                    if _open == 0:
                        _restore()
