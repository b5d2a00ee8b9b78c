"""Global ranking groups: which targets one global ranking covers, decided by what a config *says*.

A target with ``scope="global"`` is ranked together with the other targets of its group:

* the targets whose configs name the same ``ModulePrunerConfig.global_group`` — whichever entries
  (``global_config``, type rules, name rules) selected them;
* otherwise the targets of the one config entry that selected it: ``global_config``, one type rule or one
  name rule (Neural Compressor ranks each pruner's layers on their own, SparseML each modifier's).

Both are saved by ``as_dict`` / ``to_yaml`` (a group's name is a field, an entry is a key), so a config
ranks the same before and after a round trip. The identity of a config *object* is not: one object shared
by several entries without a ``global_group`` ranks each entry on its own, and `check_groups` says so in a
warning (with the name to set to rank them together).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from ..config import ModulePrunerConfig

__all__ = ["check_groups", "ranking_group"]

logger = logging.getLogger(__name__)


class _Planned(Protocol):
    name: str
    config: ModulePrunerConfig
    entry: object


def ranking_group(config: ModulePrunerConfig, rule: str) -> str:
    """The key of the global ranking a module joins: its config's ``global_group``, else ``rule`` — the entry
    that selected it, as `sparsify.PrunerConfig.lookup` names it (``"global_config"``, ``"type rule
    'Linear'"``, ``"name rule 'fc.*'"``)."""
    group = getattr(config, "global_group", None)  # Core ML Tools' preset configs have no such field
    return f"global_group {group!r}" if group is not None else rule


def check_groups(plans: Sequence[_Planned]) -> None:
    """Refuse a named group whose members cannot share one ranking; warn about a shared unnamed config.

    The members of one named group are scored together, so they must use one criterion and one
    ``normalize``. A global config object without a ``global_group`` that several entries share ranks each
    entry on its own (identity is not saved): said once per object, with the entries and the fix.
    """
    by_group: dict[object, list[_Planned]] = defaultdict(list)
    entries_of: dict[int, list[object]] = defaultdict(list)  # unnamed global config object -> its entries
    for plan in plans:
        if plan.config.scope != "global":
            continue
        by_group[plan.entry].append(plan)
        if getattr(plan.config, "global_group", None) is None:
            entries = entries_of[id(plan.config)]
            if plan.entry not in entries:
                entries.append(plan.entry)
    for group, members in by_group.items():
        first = members[0]
        for other in members[1:]:
            for field in ("criterion", "normalize"):
                if getattr(other.config, field) != getattr(first.config, field):
                    raise ValueError(
                        f"{group}: modules {first.name!r} and {other.name!r} are ranked together but their configs "
                        f"differ in {field} ({getattr(first.config, field)!r} vs {getattr(other.config, field)!r}); "
                        f"one global ranking needs one {field}: make them equal or name different groups"
                    )
    for entries in entries_of.values():
        if len(entries) > 1:
            logger.warning(
                "one ModulePrunerConfig object with scope='global' serves %d entries (%s): each entry's modules are "
                "ranked on their own (sharing an object is not saved by as_dict / to_yaml); to rank them together, "
                "set global_group to one name (e.g. global_group=%r)",
                len(entries), ", ".join(map(str, entries)), "shared",
            )
