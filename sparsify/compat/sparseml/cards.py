"""Markdown recipe cards: one YAML block per card, or a clear refusal naming the second block's line."""

from __future__ import annotations

import re

from ...safe_io import SourceError

__all__ = ["one_yaml_block"]

FENCE = re.compile(r"^\s*(```+|~~~+)\s*(ya?ml)\s*$", re.IGNORECASE)


def one_yaml_block(text: str, name: str | None) -> None:
    """Refuse a Markdown card with a second YAML block, naming its line, rather than apply half of it.

    SparseML (``load_recipe_yaml_str``) reads a recipe card's front matter only — the first ``---`` (or
    ``+++``) pair — and never a fenced ```` ```yaml ```` block, so a card with front matter and a fenced block,
    or two fenced blocks, holds YAML that SparseML would silently drop: which half is the recipe is not
    knowable from the file.
    """
    lines = text.splitlines()
    delimiters = [i for i, line in enumerate(lines) if line.strip() in ("---", "+++")]
    front = (delimiters[0], delimiters[1]) if len(delimiters) >= 2 else None
    blocks: list[tuple[int, str]] = [(front[0], "front matter")] if front else []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match and not (front and front[0] < i < front[1]):
            blocks.append((i, f"{match.group(1)}{match.group(2)} block"))
            close = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == match.group(1)), len(lines))
            i = close
        i += 1
    if len(blocks) > 1:
        (first, what), (second, other) = blocks[0], blocks[1]
        raise SourceError(
            f"a second YAML block ({other}) starts here; the first ({what}) is at line {first + 1}: SparseML reads "
            f"only a recipe card's front matter and would drop the other block, so sparsify refuses rather than "
            f"apply half — keep the whole recipe in one block", name, second + 1)
