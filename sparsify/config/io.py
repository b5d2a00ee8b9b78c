"""``from_dict`` / ``from_yaml`` / ``as_dict`` / ``to_yaml`` for the attrs config classes.

YAML is parsed with ``yaml.safe_load`` (plain data only, never objects or code); unknown keys are an
error that names them and the allowed ones.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs
import yaml

from ..safe_io import load_yaml

__all__ = ["Dictable", "load_yaml_mapping", "safe_load_yaml", "yaml_source"]

T = TypeVar("T")

def safe_load_yaml(source: str | Path | IO[str]) -> Any:
    """Plain data from a YAML file path or stream, through `sparsify.safe_io` (size, alias and depth limits,
    no objects, no tags; errors name the file and line)."""
    return load_yaml(source, markdown=False, local_tags=False).data


def load_yaml_mapping(source: str | Path | IO[str]) -> dict[str, Any]:
    """Parse a config document; an empty document is ``{}``."""
    data = safe_load_yaml(source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise ValueError(f"a config YAML document must be a mapping at the top level, got {kind}")
    return data


def yaml_source(owner: str, yml: str | Path | IO[str]) -> Path | IO[str]:
    """What ``from_yaml(yml)`` reads: a path, a stream, or (a ``str`` that is not a file but has a newline or a
    ``:``) the YAML text itself."""
    if not isinstance(yml, str):
        return yml
    if os.path.isfile(yml):
        return Path(yml)
    if "\n" in yml or ":" in yml:
        return io.StringIO(yml)
    raise FileNotFoundError(f"{owner}.from_yaml({yml!r}): no such file; pass the path of a YAML file, a stream, or "
                            "YAML text (a mapping such as 'global_config: {target_sparsity: 0.5}')")


def check_keys(cls: type, data: Mapping[str, Any]) -> None:
    """Refuse keys that are not init fields of ``cls``, naming them and the allowed ones."""
    allowed = [a.name for a in attrs.fields(cls) if a.init]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}: allowed keys are "
            f"{', '.join(allowed)}"
        )


class Dictable:
    """``from_dict`` / ``from_yaml`` / ``as_dict`` / ``to_yaml`` for attrs config classes."""

    @classmethod
    def from_dict(cls: type[T], config_dict: Mapping[str, Any]) -> T:
        """Build from a mapping; unknown keys are an error that names them."""
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict expects a mapping, got {type(config_dict).__name__}")
        check_keys(cls, config_dict)
        return cls(**dict(config_dict))

    @classmethod
    def from_yaml(cls: type[T], yml: str | Path | IO[str]) -> T:
        """Build from a YAML file path, a stream, or YAML text (parsed safely, see `safe_load_yaml`).

        A ``str`` is a path, as in Core ML Tools, when it names an existing file; otherwise one with a newline
        or a ``:`` is YAML text (what `to_yaml` returns). Any other ``str`` is refused, naming it.
        """
        return cls.from_dict(load_yaml_mapping(yaml_source(cls.__name__, yml)))  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of JSON/YAML types; ``from_dict`` rebuilds an equal config."""
        raise NotImplementedError

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise `as_dict` as YAML; also write it to ``path`` when given."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text
