"""Where `sparsify.export.coreml.export_coreml` writes: checked before any work, replaced only at the end.

Core ML Tools' ``MLModel.save`` deletes whatever is at the destination (``shutil.rmtree`` on a
directory) and only then writes. So, before anything is traced or converted:

* an existing destination (other than an empty directory) is refused unless the caller passed
  ``overwrite=True`` — a user's files are never replaced by accident, as with the command's ``--force``;
* with ``overwrite=True`` it is accepted only if it is an empty directory or a Core ML package — a
  directory whose every file is its ``Manifest.json``, lies under ``Data/`` at an item the manifest
  lists, or is the ``executorch_debug_handle_mapping.json`` Core ML Tools writes for ``torch.export``
  models. A regular file, a symbolic link, a directory without a manifest, or a package holding any
  other file (notes, a second model, ...) is refused with ``FileExistsError``, and nothing is changed;
* the parent folder is created (as ``mkdir -p``) and a staging folder is made in it: a destination
  that cannot be written (a parent that is a file, a read-only file system, no permission) fails
  here with the ``OSError`` naming the path, not after minutes of conversion.

The model is saved into the staging folder; only then is an existing package moved aside, the new
one moved into place (a rename on the same file system) and the old one deleted. If anything fails
— conversion, saving, Ctrl-C — the staging folder and any parent folders this call created are
removed and an existing package is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["Destination"]

_OWNER = "export_coreml"
# files Core ML Tools itself writes at a package's top level (the second one for torch.export models)
_PACKAGE_FILES = ("Manifest.json", "executorch_debug_handle_mapping.json")


class Destination:
    """A checked ``.mlpackage`` path with a staging folder beside it (see the module docstring)."""

    owner = _OWNER  # named in errors

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = path
        self.overwrite = overwrite
        self._refuse(path)
        self._created: Path | None = _first_missing(path.parent)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        except OSError as exc:
            self._remove_created()
            raise OSError(exc.errno, f"{self.owner}: cannot write to {path.parent} ({exc.strerror}); nothing was "
                                     "converted", str(path)) from exc

    @property
    def staging(self) -> Path:
        """Where to save the package before it is moved into place."""
        return self._staging / self.path.name

    def commit(self) -> None:
        """Move the saved package into place, replacing an existing one (checked again: it may have changed)."""
        self._refuse(self.path)
        old = None
        if self.path.exists():
            old = self._staging / "previous"
            os.replace(self.path, old)
        try:
            os.replace(self.staging, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)
            raise
        shutil.rmtree(self._staging, ignore_errors=True)
        self._created = None

    def _refuse(self, path: Path) -> None:
        """Raise ``FileExistsError`` when ``path`` holds something this export must not replace."""
        if not self.overwrite and (path.is_symlink() or (path.exists() and not _is_empty_dir(path))):
            raise FileExistsError(
                f"{self.owner}: path={str(path)!r} exists; pass overwrite=True to replace it (the command's --force). "
                "Nothing was changed"
            )
        _refuse_foreign(path)

    def abandon(self) -> None:
        """Remove the staging folder and the parent folders this export created."""
        shutil.rmtree(self._staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        if self._created is None:
            return
        folder = self.path.parent
        while True:  # remove the empty folders we made, innermost first, up to the first we made
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self._created:
                break
            folder = folder.parent
        self._created = None


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s ancestry (``folder`` included) that does not exist yet."""
    missing = None
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


def _refuse_foreign(path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    what = None
    if path.is_symlink():
        what = "a symbolic link"
    elif not path.is_dir():
        what = "a file, not a directory"
    else:
        foreign = _foreign_files(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            what = f"a directory holding files that are not part of a Core ML package ({shown})"
    if what is not None:
        raise FileExistsError(
            f"{_OWNER}: path={str(path)!r} exists and is {what}; only an existing .mlpackage (or an empty "
            "directory) is replaced. Choose another path or move it away; nothing was changed"
        )


def _foreign_files(root: Path) -> list[str]:
    """Files under ``root`` that a Core ML package would not hold (every file, if it has no manifest)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
    if not files:
        return []
    try:
        manifest = json.loads((root / "Manifest.json").read_text(encoding="utf-8"))
        items = [f"Data/{entry['path']}".rstrip("/") for entry in manifest["itemInfoEntries"].values()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return files
    return [f for f in files if f not in _PACKAGE_FILES and not any(f == item or f.startswith(item + "/")
                                                                   for item in items)]
