"""The target directory's progress manifest: what is finished, with which settings, so a later call resumes.

``sparsify-progress.json`` in the target records the settings' fingerprint (the pruning configuration, the
calibration data's digest, the source's tensors), and for every finished decoder block its shard's name, size
and SHA-256. It is rewritten atomically after each block's shard has been renamed into place, so it never
names a shard that is not whole. Calling `prune_pretrained` again with the same settings checks the finished
shards against it and goes on after the last good one; different settings are refused, so a half-pruned
target is never finished with other data.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from .checkpoint import read_json, write_json

__all__ = ["MANIFEST_NAME", "Progress", "sha256_of"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "sparsify-progress.json"
FORMAT = "sparsify.prune_pretrained/1"


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


class Progress:
    """The manifest of one target directory (see the module docs)."""

    def __init__(self, target: Path, settings: dict[str, Any]) -> None:
        self.target = target
        self.path = target / MANIFEST_NAME
        self.settings = settings
        self.blocks: list[dict[str, Any]] = []
        self.outside: dict[str, Any] | None = None
        self.complete = False

    def open(self) -> None:
        """Read an earlier run's manifest (keeping its good blocks), or start a new one in an empty target."""
        if not self.path.exists():
            leftovers = [p.name for p in self.target.iterdir()] if self.target.exists() else []
            if leftovers:
                raise ValueError(f"target {str(self.target)!r} is not empty and holds no {MANIFEST_NAME} (it holds "
                                 f"{sorted(leftovers)[:5]}): give a new or empty directory, so nothing of yours is "
                                 f"overwritten")
            self.target.mkdir(parents=True, exist_ok=True)
            self.save()
            return
        data = read_json(self.path, "progress manifest")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{str(self.path)!r} is not a {FORMAT} manifest")
        earlier = data.get("settings", {})
        if earlier != self.settings:
            changed = sorted(k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k))
            raise ValueError(f"target {str(self.target)!r} holds a run with other settings ({', '.join(changed)} "
                             f"differ): call again with the same source, sparsity, choices and calibration data "
                             f"to resume it, or give a new directory")
        self.outside = self._good(data.get("outside"))
        for block in data.get("blocks", []):
            if self._good(block) is None:
                logger.warning("prune_pretrained: shard %r of block %s does not match the manifest; redoing it "
                               "and the blocks after it", block.get("shard"), block.get("index"))
                break
            self.blocks.append(block)
        self.complete = bool(data.get("complete")) and len(self.blocks) == data.get("num_blocks")
        if self.blocks:
            logger.info("prune_pretrained: resuming %s after block %d", self.target, len(self.blocks) - 1)

    def _good(self, entry: Any) -> dict[str, Any] | None:
        if not isinstance(entry, dict) or not isinstance(entry.get("shard"), str):
            return None
        path = self.target / Path(entry["shard"]).name
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
        return entry if sha256_of(path) == entry.get("sha256") else None

    def entry(self, shard: str, **extra: Any) -> dict[str, Any]:
        path = self.target / shard
        return {"shard": shard, "bytes": path.stat().st_size, "sha256": sha256_of(path), **extra}

    def save(self, num_blocks: int | None = None) -> None:
        write_json(self.path, {"format": FORMAT, "settings": self.settings, "outside": self.outside,
                               "blocks": self.blocks, "complete": self.complete, "num_blocks": num_blocks})
