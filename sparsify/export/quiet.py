"""Keep Core ML Tools' chatter out of the user's terminal while sparsify's export and inspect calls run.

Unfiltered, one export prints about ten import notices (untested torch version, no Core ML runtime on
Linux, scikit-learn version), two "renamed input/output" ``UserWarning``s and eight tqdm progress
bars. None of it is actionable for a sparsify user, and it buries sparsify's own warnings. Inside
`quiet`:

* records of the ``coremltools`` logger are re-logged at DEBUG by ``sparsify.export`` (and not
  passed to the root logger);
* warnings raised from Core ML Tools' code are re-logged at DEBUG; every other warning (torch's
  ``TracerWarning``, say) is re-issued unchanged when the block ends, so the user's filters apply —
  each distinct one (category, text, file, line) once per process, as Python's default filter shows it.
  Recording needs ``simplefilter("always")`` inside the block, so a warning raised in a loop (transformers'
  ``is_gradient_checkpointing`` FutureWarning: once per layer per trace, 8 times for a 2-layer GPT-2
  export) is recorded every time; re-issuing every record used to print it 8 times per export;
* ``sys.stderr`` is redirected to a buffer (that is where tqdm writes) whose content, progress bars
  reduced to their final state, is logged at DEBUG.

``logging.getLogger("sparsify").setLevel(logging.DEBUG)`` (or ``sparsify -vv``) shows all of it.
The redirection is process-wide for the duration of the call: another thread writing to
``sys.stderr`` meanwhile is captured too (and logged at DEBUG). A logging handler created before the
call keeps writing to the real stream; Python's last-resort handler (no logging configured) would
write into the buffer, which is why sparsify's own warnings are emitted after the block ends.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet"]

logger = logging.getLogger("sparsify.export")

_COREMLTOOLS_DIR = os.sep + "coremltools" + os.sep
# the warnings already re-issued in this process: (category, text, file, line)
_REISSUED: set[tuple[type[Warning], str, str, int]] = set()


class _Forward(logging.Handler):
    """Re-log a Core ML Tools record at DEBUG through sparsify's logger."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("coremltools %s: %s", record.levelname.lower(), record.getMessage())


def _final_lines(text: str) -> list[str]:
    """Each line as it ends up on a terminal: a progress bar's last redraw (after its last ``\\r``)."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines() if line.rsplit("\r", 1)[-1].strip()]


@contextmanager
def quiet() -> Iterator[None]:
    """Capture Core ML Tools' log records, warnings and progress bars; show them at DEBUG only."""
    ct_logger = logging.getLogger("coremltools")
    handler = _Forward(logging.DEBUG)
    saved_propagate = ct_logger.propagate
    ct_logger.addHandler(handler)
    ct_logger.propagate = False
    buffer = io.StringIO()
    saved_stderr = sys.stderr
    sys.stderr = buffer
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        sys.stderr = saved_stderr
        ct_logger.removeHandler(handler)
        ct_logger.propagate = saved_propagate
        for line in _final_lines(buffer.getvalue()):
            logger.debug("stderr: %s", line)
        for w in caught:
            if _COREMLTOOLS_DIR in os.path.abspath(w.filename):
                logger.debug("coremltools %s: %s", w.category.__name__, w.message)
                continue
            key = (w.category, str(w.message), w.filename, w.lineno)
            if key in _REISSUED:
                continue
            _REISSUED.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
