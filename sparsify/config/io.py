"""``from_dict`` / ``from_yaml`` / ``as_dict`` / ``to_yaml`` for the attrs config classes.

YAML is parsed with ``yaml.safe_load`` (plain data only, never objects or code); unknown keys are an
error that names them and the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs
import yaml

__all__ = ["Dictable", "load_yaml_mapping", "safe_load_yaml"]

T = TypeVar("T")

MAX_CONFIG_BYTES = 10 * 1024 * 1024


def safe_load_yaml(source: str | Path | IO[str]) -> Any:
    """``yaml.safe_load`` of a file path or a stream: plain data only, at most 10 MiB."""
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as stream:
            text = stream.read(MAX_CONFIG_BYTES + 1)
    else:
        text = source.read(MAX_CONFIG_BYTES + 1)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"config {source!r} is larger than {MAX_CONFIG_BYTES} bytes: refused")
    return yaml.safe_load(text)


def load_yaml_mapping(source: str | Path | IO[str]) -> dict[str, Any]:
    """Parse a config document; an empty document is ``{}``."""
    data = safe_load_yaml(source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"a config YAML document must be a mapping at the top level, got {type(data).__name__}")
    return data


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
        """Build from a YAML file path or stream (parsed with ``yaml.safe_load``)."""
        return cls.from_dict(load_yaml_mapping(yml))  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of JSON/YAML types; ``from_dict`` rebuilds an equal config."""
        raise NotImplementedError

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise `as_dict` as YAML; also write it to ``path`` when given."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text
