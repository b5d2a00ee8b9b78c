"""The temporary ``.mlpackage`` folders coremltools keeps behind converted and compressed models."""

from __future__ import annotations

import shutil
from typing import Any

__all__ = ["discard_package"]


def discard_package(mlmodel: Any) -> None:
    """Delete the temporary package behind ``mlmodel`` (a no-op for a model loaded from the user's file).

    coremltools removes these only when the process exits (an ``atexit`` hook), so a training job that
    exports every epoch would pile one up per conversion and per compression step in the temp folder,
    and a killed process would leave them for good. The export has saved what it keeps by then; the hook
    later finds nothing and does nothing.
    """
    path = getattr(mlmodel, "package_path", None)
    if path and getattr(mlmodel, "is_temp_package", False):
        shutil.rmtree(path, ignore_errors=True)
