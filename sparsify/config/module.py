"""`ModulePrunerConfig`: how one module is pruned — the four parts of the machine, chosen freely.

Its first eight fields are Core ML Tools' ``ModuleMagnitudePrunerConfig`` fields, in the same order with
the same defaults; the rest choose the criterion, the pattern (tiles, n:m or any registered one), the scope,
its caps and its ranking group. Every field is validated when the config is built and when it is changed
(assignment), with an error naming the field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._checks import field_error
from ..criteria import Criterion, MagnitudeCriterion, criterion_from_dict
from ..masking import MASK_MODES
from ..patterns import GRANULARITIES, Pattern, pattern_from_dict, pattern_kinds
from ..patterns.fields import normalized_text, pattern_of_fields
from ..schedules import ConstantSparsityScheduler, PruningScheduler
from ..scope import NORMALIZATIONS
from . import fields
from .io import Dictable

__all__ = ["SCOPES", "ModuleOptimizationConfig", "ModulePrunerConfig"]

SCOPES = ("local", "global")
_OWNER = "ModulePrunerConfig"


class ModuleOptimizationConfig(Dictable):
    """Base of per-module configs (Core ML Tools' name)."""


def _to_granularity(value: Any) -> str:
    if value == "per_layer":
        raise field_error(
            _OWNER, "granularity", value,
            "'per_layer' is not a pruning granularity (Core ML Tools accepts it but cannot prune conv weights "
            "with it); allowed values are 'per_scalar', 'per_kernel', 'per_channel'",
        )
    return fields.one_of(_OWNER, "granularity", GRANULARITIES)(value)


def _to_criterion(value: Any) -> Criterion:
    try:
        return criterion_from_dict(value)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{_OWNER}.criterion: {exc}") from exc


def _to_pattern(value: Any) -> str | Pattern | None:
    """The config's ``pattern``: ``None``, a pattern string (``"4x1"``, ``"2:4"``, normalised), or a `Pattern`.

    A registered kind name (``"row_pairs"``) or a dict (``{"kind": ..., **fields}``, what `as_dict` writes) is
    built through the registry; an instance whose `Pattern.config_text` is a string (a tile) is stored as that
    string, so a config compares and saves the same whichever way it was written.
    """
    if value is None:
        return None
    if isinstance(value, Mapping) or (isinstance(value, str) and value.strip() in pattern_kinds()):
        try:
            value = pattern_from_dict(value if isinstance(value, Mapping) else value.strip())
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{_OWNER}.pattern={value!r} is invalid: {exc}") from exc
    if isinstance(value, Pattern):
        text = value.config_text
        if text is None:
            return value
        value = text
    try:
        return normalized_text(value)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{_OWNER}.{exc}") from exc


def _to_global_group(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise field_error(_OWNER, "global_group", value, "expected None or a group name (a str)", TypeError)
    if not value.strip():
        raise field_error(_OWNER, "global_group", value, "expected None or a non-empty group name")
    return value


def check_module_config(values: Mapping[str, Any], owner: str = _OWNER) -> None:
    """Checks that involve more than one field."""
    n_m, pattern = values["n_m_ratio"], values.get("pattern")
    if n_m is not None:
        for field, plain, value in (
            ("block_size", 1, values["block_size"]), ("granularity", "per_scalar", values["granularity"]),
            ("pattern", None, pattern),
        ):
            if value != plain:
                raise ValueError(
                    f"{owner}: {field}={value!r} and n_m_ratio={n_m} are mutually exclusive: with n_m_ratio set, "
                    f"{field} must be {plain!r}"
                )
    if pattern is not None:
        for field, plain, value in (("block_size", 1, values["block_size"]),
                                    ("granularity", "per_scalar", values["granularity"])):
            if value != plain:
                raise ValueError(
                    f"{owner}: {field}={value!r} and pattern={pattern!r} are mutually exclusive: a pattern replaces "
                    f"Core ML Tools' pattern fields, so {field} must be {plain!r}"
                )
    final = values["target_sparsity"] if n_m is None else n_m[0] / n_m[1]
    if values["initial_sparsity"] > final:
        raise ValueError(
            f"{owner}.initial_sparsity={values['initial_sparsity']} is invalid: allowed 0.0 <= initial_sparsity "
            f"<= the final sparsity ({final})"
        )
    group = values.get("global_group")
    if group is not None and values.get("scope") != "global":
        raise ValueError(f"{owner}.global_group={group!r} is invalid with scope={values.get('scope')!r}: a ranking "
                         "group names modules ranked together, so it needs scope='global'")
    low, high = values.get("min_sparsity", 0.0), values.get("max_sparsity", 1.0)
    if low > high:
        raise ValueError(f"{owner}.min_sparsity={low} is invalid: allowed min_sparsity <= max_sparsity ({high})")


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate, fields.revalidate_with(check_module_config)])
class ModulePrunerConfig(ModuleOptimizationConfig):
    """How one module is pruned: schedule, criterion, pattern and scope.

    Args:
        scheduler: when and how fast (any registered scheduler, or a dict: Core ML Tools' ``update_steps`` /
            ``begin_step`` forms, or ``{"kind": "exponential", "start_step": ..., "end_step": ...,
            "frequency": ...}``); default: the target at the first ``step()``. Each config gets its own.
        initial_sparsity: applied at ``prepare()`` (ranked by magnitude) and where schedules start.
        target_sparsity: the final fraction of zeros (with ``n_m_ratio`` the final sparsity is ``n / m``).
        granularity: Core ML Tools' ``"per_scalar"``, ``"per_kernel"`` or ``"per_channel"`` (whole output
            channels of a conv; a ``Linear`` falls back to per-scalar as in Core ML Tools — use
            ``pattern="1xchannel"`` for whole rows).
        block_size: prune blocks of this many consecutive output channels together (``1``: no blocks).
        n_m_ratio: ``(n, m)``: ``n`` ZEROS in every ``m`` consecutive weights along ``dim`` (``(2, 4)`` = 50 %).
        dim: the n:m axis: ``1`` input channels, ``0`` output channels.
        param_name: the parameter to prune.
        criterion: ``"magnitude"`` (default), ``"gradient"``, ``"snip"``, ``"snip_momentum"``, ``"mfac"``, or a
            dict with ``kind`` and the criterion's settings (``{"kind": "mfac", "num_grads": 128}``).
        pattern: Neural Compressor's patterns: NxM tiles, ``"4x1"``, ``"1xchannel"``, ``"channelx1"`` …
            (`sparsify.patterns.tiles`), or ``"n:m"`` — ``n`` zeros in every ``m`` input-channel weights, ending
            at ``min(target_sparsity, n / m)``: with ``target_sparsity >= n / m`` exactly ``n_m_ratio=(n, m)``
            (same masks, partial runs padded); below ``n / m``, Neural Compressor's meaning — that share of
            whole runs made sparse one by one, layers whose runs do not divide skipped
            (`sparsify.patterns.n_m`); or any `sparsify.patterns.Pattern` — an instance, a registered kind's name
            (default settings) or ``{"kind": ..., **fields}`` (`sparsify.patterns.register_pattern`), saved
            by ``as_dict`` in that dict form; ``None`` uses the Core ML Tools fields above.
        scope: ``"local"`` (each layer at its scheduled sparsity) or ``"global"`` (one ranking over the
            modules this config entry selects — ``global_config``, one type rule or one name rule — with the
            per-layer caps; see ``global_group`` to rank several entries together).
        min_sparsity: in global scope, the least sparsity of a layer.
        max_sparsity: the most sparsity of a layer, in either scope (INC's ``max_sparsity_ratio_per_op``).
        normalize: how global ranking compares layers: ``None`` (raw scores), ``"mean"``, ``"l2"``, ``"max"``.
        masking: ``"default"`` (Core ML Tools' semantics: ``weight_orig`` keeps pruned values, a later mask can
            revive them) or ``"inplace"`` (pruned entries zeroed in the parameter, gradients masked in place and
            re-zeroed after each optimizer step, so the forward pass reads the parameter directly: close to dense
            speed and memory; pruned weights cannot come back — see `sparsify.masking`).
        global_group: with ``scope="global"``, a name: every module whose config names the same group is
            ranked in one ranking, whichever entries selected them (their criteria and ``normalize`` must
            agree). ``None``: the modules of this config's own entry. The name is saved by ``as_dict`` and
            ``to_yaml``, so a ranking survives round trips; sharing one config *object* between entries does
            not make a group (`sparsify.pruning.groups`).
    """

    # mypy's attrs plugin cannot type a converter that a call returns (fields.py): hence ignore[misc] below
    scheduler: PruningScheduler = attrs.field(
        factory=lambda: ConstantSparsityScheduler(begin_step=0), converter=fields.scheduler(_OWNER)  # type: ignore[misc]
    )
    initial_sparsity: float = attrs.field(default=0.0, converter=fields.fraction(_OWNER, "initial_sparsity"))  # type: ignore[misc]
    target_sparsity: float = attrs.field(default=0.5, converter=fields.fraction(_OWNER, "target_sparsity"))  # type: ignore[misc]
    granularity: str = attrs.field(default="per_scalar", converter=_to_granularity)
    block_size: int = attrs.field(default=1, converter=fields.positive_int(_OWNER, "block_size"))  # type: ignore[misc]
    n_m_ratio: tuple[int, int] | None = attrs.field(default=None, converter=fields.n_m_ratio(_OWNER))  # type: ignore[misc]
    dim: int = attrs.field(default=1, converter=fields.dim(_OWNER))  # type: ignore[misc]
    param_name: str = attrs.field(default="weight", converter=fields.param_name(_OWNER))  # type: ignore[misc]
    criterion: Criterion = attrs.field(factory=MagnitudeCriterion, converter=_to_criterion)
    pattern: str | Pattern | None = attrs.field(default=None, converter=_to_pattern)
    scope: str = attrs.field(default="local", converter=fields.one_of(_OWNER, "scope", SCOPES))  # type: ignore[misc]
    min_sparsity: float = attrs.field(default=0.0, converter=fields.fraction(_OWNER, "min_sparsity"))  # type: ignore[misc]
    max_sparsity: float = attrs.field(default=1.0, converter=fields.fraction(_OWNER, "max_sparsity"))  # type: ignore[misc]
    normalize: str | None = attrs.field(default=None, converter=fields.one_of(_OWNER, "normalize", NORMALIZATIONS))  # type: ignore[misc]
    masking: str = attrs.field(default="default", converter=fields.one_of(_OWNER, "masking", MASK_MODES))  # type: ignore[misc]
    global_group: str | None = attrs.field(default=None, converter=_to_global_group)

    def __attrs_post_init__(self) -> None:
        check_module_config(attrs.asdict(self, recurse=False), type(self).__name__)

    @property
    def final_sparsity(self) -> float:
        """The sparsity the schedule ends at: ``target_sparsity``; ``n / m`` with ``n_m_ratio`` (Core ML
        Tools' rule); at most ``n / m`` with ``pattern="n:m"`` (Neural Compressor's rule)."""
        if self.n_m_ratio is not None:
            return self.n_m_ratio[0] / self.n_m_ratio[1]
        return min(self.target_sparsity, self.pattern_spec().max_sparsity)

    def pattern_spec(self) -> Pattern:
        """The `sparsify.patterns.Pattern` these fields describe (`sparsify.patterns.fields.pattern_of_fields`)."""
        return pattern_of_fields(self.pattern, n_m_ratio=self.n_m_ratio, dim=self.dim, granularity=self.granularity,
                                 block_size=self.block_size, target_sparsity=self.target_sparsity)

    def as_dict(self) -> dict[str, Any]:
        data = {a.name: getattr(self, a.name) for a in attrs.fields(type(self)) if a.init}
        data["scheduler"] = self.scheduler.as_dict()
        if "n_m_ratio" in data and self.n_m_ratio is not None:
            data["n_m_ratio"] = list(self.n_m_ratio)
        if "criterion" in data:
            data["criterion"] = self.criterion.as_dict()
        if isinstance(data.get("pattern"), Pattern):
            data["pattern"] = self.pattern.as_dict()  # type: ignore[union-attr]
        return data
