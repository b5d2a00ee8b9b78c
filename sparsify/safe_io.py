"""The one safe reader for every YAML or text file sparsify reads: configs, recipes, INC configs.

Why one reader: a recipe is input from someone else. ``yaml.safe_load`` alone stops code execution but
not the other ways a file can hurt: a 537-byte alias bomb ("billion laughs") expands to 10⁹ nodes and
hangs whatever walks the result, a 50 MB file makes the pure-Python parser allocate gigabytes, and a
``ConstructorError`` on a local tag (``!Pruner``) names neither the file nor what to do. Here:

* **size** — at most ``max_bytes`` (default `DEFAULT_MAX_BYTES`, 10 MB) are read; a longer file is
  refused before parsing;
* **aliases and nesting** — a first pass over the parser's events (linear time, no recursion) counts
  the nodes the document would have with every alias expanded and its nesting depth; more than
  ``max_nodes`` (default 1,000,000) or ``max_depth`` (default 100) is refused as soon as it is seen,
  and so is an alias to a node that contains itself;
* **no objects** — the loader is a ``SafeLoader``: only plain data is built; ``!!python/...`` and every
  other global tag is an error. **Local tags** (``!Pruner``, ``!GMPruningModifier``) become
  `Tagged` values — the tag and its plain data — and nothing is ever constructed from them;
* **errors name the file and the line** (`SourceError`), 1-based, for syntax errors as well;
* **line numbers survive**: mappings and sequences are `YamlMap` / `YamlList` (``dict`` / ``list``
  subclasses) that remember the line of each key or item, so a reader can say where a value it refuses
  came from. Duplicate keys keep the last value (PyYAML's and SparseML's behaviour) and are reported
  in `LoadedYaml.duplicates`;
* **Markdown**: `yaml_from_markdown` takes the front matter between the first two ``---`` (or
  ``+++``) lines, SparseML's recipe-card layout, or else the first fenced ```` ```yaml ```` block; the
  text outside is blanked, not removed, so line numbers stay those of the Markdown file.

The C parser (libyaml) is used when PyYAML has it; otherwise the pure-Python one, with the same limits.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypedDict

import attrs
import yaml

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_NODES",
    "LoadedYaml",
    "SourceError",
    "Tagged",
    "YamlLimits",
    "YamlList",
    "YamlMap",
    "line_of",
    "load_yaml",
    "load_yaml_text",
    "read_text",
    "yaml_from_markdown",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_NODES = 1_000_000
DEFAULT_MAX_DEPTH = 100

_MARKDOWN_SUFFIXES = (".md", ".markdown")


class YamlLimits(TypedDict, total=False):
    """The limits readers pass on to `load_yaml_text` as keyword arguments (``**limits``)."""

    max_nodes: int
    max_depth: int


class SourceError(ValueError):
    """A file (or text) that cannot be read, or holds something that cannot be honoured.

    ``str(error)`` starts with ``file:line:`` when they are known. ``path``, ``line`` (1-based) and
    ``reason`` are kept separately for callers that format their own messages.
    """

    def __init__(self, reason: str, path: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        super().__init__(f"{where(path, line)}{reason}")


def where(path: str | None, line: int | None) -> str:
    """``"path:line: "`` / ``"path: "`` / ``"line N: "`` / ``""`` — the prefix of every message."""
    if path and line:
        return f"{path}:{line}: "
    if path:
        return f"{path}: "
    if line:
        return f"line {line}: "
    return ""


@attrs.define(eq=True)
class Tagged:
    """A value written with a local tag (``!Pruner {...}``): the tag without ``!``, the plain value, its line."""

    tag: str
    value: Any
    line: int | None = attrs.field(default=None, eq=False)


class YamlMap(dict):
    """A ``dict`` that remembers its own line and the line of each key (1-based)."""

    line: int | None = None
    lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines = {}


class YamlList(list):
    """A ``list`` that remembers its own line and the line of each item (1-based)."""

    line: int | None = None
    lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines = []


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of ``container[key]`` (or of ``container`` itself), when the loader recorded it."""
    if key is not None:
        if isinstance(container, YamlMap):
            return container.lines.get(key, container.line)
        if isinstance(container, YamlList) and isinstance(key, int) and 0 <= key < len(container.lines):
            return container.lines[key]
    if isinstance(container, Tagged):
        return container.line
    return getattr(container, "line", None)


@attrs.define
class LoadedYaml:
    """What `load_yaml` returns: the data, the name it was read under, and the duplicate keys seen."""

    data: Any
    path: str | None
    duplicates: list[tuple[str, int]] = attrs.field(factory=list)


# ----------------------------------------------------------------------------------------------
# Reading text
# ----------------------------------------------------------------------------------------------


def _name_of(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) if isinstance(getattr(source, "name", None), str) else None


def read_text(source: str | os.PathLike[str] | IO[str] | IO[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read a file path or an open stream as UTF-8 text, refusing more than ``max_bytes``.

    A path is checked with ``stat`` first, so a huge file is refused without reading it. A byte-order
    mark is dropped.
    """
    name = _name_of(source)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes!r} is invalid: allowed an integer > 0")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise SourceError(_too_big(size, max_bytes), name)
            with open(path, "rb") as stream:
                raw: bytes | str = stream.read(max_bytes + 1)
        except OSError as exc:
            raise SourceError(f"cannot read the file ({exc.strerror or exc})", name) from exc
    else:
        raw = source.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SourceError(_too_big(None, max_bytes), name)
    if isinstance(raw, str):
        return raw.removeprefix("\ufeff")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"not UTF-8 text (byte {exc.start}: {exc.reason})", name, line) from exc


def _too_big(size: int | None, max_bytes: int) -> str:
    got = f"{size:,} bytes" if size is not None else f"more than {max_bytes:,} bytes"
    return (f"the file is {got}; the limit is {max_bytes:,} bytes (pass max_bytes= to read a larger file you "
            f"trust)")


_FENCE_OPEN = re.compile(r"^\s*(```+|~~~+)\s*(ya?ml)\s*$", re.IGNORECASE)


def yaml_from_markdown(text: str, name: str | None = None, *, require: bool = True) -> str:
    """The YAML of a Markdown recipe card, with every other line blanked so line numbers stay.

    Front matter first, as SparseML reads recipe cards: from the first line that is ``---`` (or
    ``+++``) to the next such line. Otherwise the first fenced block opened by ```` ```yaml ```` (or
    ``yml``, or ``~~~``), the way recipes are shown in READMEs. Without either: `SourceError` when
    ``require`` (the text is Markdown), else the text unchanged.
    """
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if line.strip() in ("---", "+++")]
    if len(fences) >= 2:
        start, stop = fences[0], fences[1]
    else:
        start = stop = -1
        for i, line in enumerate(lines):
            match = _FENCE_OPEN.match(line)
            if match:
                close = match.group(1)
                ends = [j for j in range(i + 1, len(lines)) if lines[j].strip() == close]
                if not ends:
                    raise SourceError(f"the {close}{match.group(2)} block opened here is never closed", name, i + 1)
                start, stop = i, ends[0]
                break
        if start < 0:
            if require:
                raise SourceError(
                    "no recipe found: a Markdown recipe holds its YAML between two '---' lines (front matter) "
                    "or in a ```yaml block", name)
            return text
    kept = ["" for _ in lines[: start + 1]] + lines[start + 1 : stop] + ["" for _ in lines[stop:]]
    return "\n".join(kept) + "\n"


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------

_Base: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Loader(_Base):
    """SafeLoader whose containers remember lines and whose local tags become `Tagged`."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[YamlMap]:
    data = YamlMap()
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain value, got {type(key).__name__}", key_node.start_mark
            ) from exc
        if key in data:
            loader.duplicates.append((str(key), key_node.start_mark.line + 1))
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[YamlList]:
    data = YamlList()
    data.line = node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.lines.append(child.start_mark.line + 1)


def _built(parts: Iterator[Any]) -> Any:
    value = next(parts)
    for _ in parts:
        pass
    return value


def _construct_local_tag(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = _built(_construct_map(loader, node))
    elif isinstance(node, yaml.SequenceNode):
        value = _built(_construct_seq(loader, node))
    else:
        value = loader.construct_scalar(node)
    return Tagged(suffix, value, node.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _TaggedLoader(_Loader):
    """`_Loader` that also reads local ``!Name`` tags, as plain `Tagged` data."""


_TaggedLoader.add_multi_constructor("!", _construct_local_tag)


def _scan(text: str, name: str | None, max_nodes: int, max_depth: int) -> None:
    """Count expanded nodes and nesting depth from the parser's events, refusing early (no recursion)."""
    anchors: dict[str, int] = {}
    open_anchors: set[str] = set()
    stack: list[list[Any]] = []  # [count, anchor]
    total = 0
    for event in yaml.parse(io.StringIO(text), Loader=_Base):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= max_depth:
                raise SourceError(f"the document nests deeper than {max_depth} levels", name, line)
            if event.anchor:
                open_anchors.add(event.anchor)
            stack.append([1, event.anchor])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            count, anchor = stack.pop()
            if anchor:
                anchors[anchor] = count
                open_anchors.discard(anchor)
            if stack:
                stack[-1][0] += count
            else:
                total += count
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    raise SourceError(f"the alias *{event.anchor} refers to a node that contains it", name, line)
                count = anchors.get(event.anchor, 1) if event.anchor is not None else 1
            else:
                count = 1
                if event.anchor:
                    anchors[event.anchor] = 1
            if stack:
                stack[-1][0] += count
            else:
                total += count
        else:
            continue
        current = total + sum(entry[0] for entry in stack)
        if current > max_nodes:
            raise SourceError(
                f"the document expands to more than {max_nodes:,} values (YAML aliases repeat what they refer to); "
                f"refused as an alias bomb or an oversized document", name, line)


def _check_limit(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: allowed an integer > 0")


def load_yaml_text(
    text: str,
    name: str | None = None,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    local_tags: bool = True,
) -> LoadedYaml:
    """Parse YAML text safely (see the module docstring); ``name`` is used in error messages only.

    ``local_tags=False`` refuses ``!Name`` tags too (a sparsify config has none).
    """
    _check_limit("max_nodes", max_nodes)
    _check_limit("max_depth", max_depth)
    try:
        _scan(text, name, max_nodes, max_depth)
        loader = (_TaggedLoader if local_tags else _Loader)(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
            duplicates = loader.duplicates
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError) and "could not determine a constructor" in reason:
            allowed = "plain YAML data and local '!Name' tags are" if local_tags else "plain YAML data is"
            reason = f"{reason}: only {allowed} read; nothing is ever built from a tag"
        raise SourceError(f"invalid YAML: {reason}", name, mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise SourceError(f"invalid YAML: {exc}", name) from exc
    except RecursionError as exc:
        raise SourceError("the document nests too deeply to read", name) from exc
    return LoadedYaml(data, name, duplicates)


def load_yaml(
    source: str | os.PathLike[str] | IO[str] | IO[bytes],
    *,
    markdown: bool | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    local_tags: bool = True,
) -> LoadedYaml:
    """Read and parse a YAML (or Markdown recipe) file path or stream with every limit above.

    ``markdown``: ``None`` decides from the file name (``.md`` / ``.markdown``); ``True`` takes the
    front matter or the first ```yaml block; ``False`` parses the whole text. ``local_tags=False``
    refuses ``!Name`` tags (for sparsify's own configs).
    """
    name = _name_of(source)
    text = read_text(source, max_bytes=max_bytes)
    if markdown is None:
        markdown = name is not None and name.lower().endswith(_MARKDOWN_SUFFIXES)
    if markdown:
        text = yaml_from_markdown(text, name)
    return load_yaml_text(text, name, max_nodes=max_nodes, max_depth=max_depth, local_tags=local_tags)
