r"""``mfac``: second-order saliency ``ρᵢ = wᵢ² / (2 [F⁻¹]ᵢᵢ)`` (M-FAC / WoodFisher, SparseML's ``MFACPruningModifier``).

At every mask update of a set of modules the scorer

1. takes ``m = num_grads`` gradients of the loss with respect to their still-unpruned weights — from the
   pruner's sampler (one shot, or gradual with calibration data), or recorded from the live training
   steps just before the update (gradual, no sampler);
2. builds the inverse empirical Fisher over those ``d`` coordinates (`sparsify.criteria.fisher`, dense or
   block-diagonal, relative damping by default);
3. scores every weight by the OBS saliency — the estimated loss increase of removing it (pruned weights
   score 0 and stay pruned: masks only grow) — leaving the ranking to the config's pattern and scope
   (``scope="global"`` ranks all the modules of a config entry together, SparseML's ``global_sparsity``);
4. optionally applies SparseML's OBS weight update to the survivors: ``δw = −F⁻¹ e`` with
   ``e_q = w_q / [F⁻¹]_qq`` for every newly pruned ``q``.

``num_recomputations = r`` reaches a new sparsity in ``r`` sub-steps, each with fresh gradients, a fresh
Fisher and its own update (oBERT / WoodFisher's recomputation; needs a sampler).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_float, as_int, boolean, check_in, check_range, field_error
from ..calibration import as_grad_sampler
from ..distributed import gather_rows
from .base import Criterion, PrunerView, Scorer, register_criterion
from .fisher import DAMP_MODES, FisherInverse, plan_memory

__all__ = ["MFACCriterion"]

logger = logging.getLogger(__name__)

_OWNER = "MFACCriterion"


def _to_num_grads(value: Any) -> int | tuple[tuple[float, int], ...]:
    if isinstance(value, (Mapping, tuple)) and not isinstance(value, int):
        items = value.items() if isinstance(value, Mapping) else value
        table = {}
        for key, count in items:
            level = as_float(_OWNER, "num_grads", key)
            check_range(_OWNER, "num_grads", level, 0.0, 1.0, high_open=True)
            count = as_int(_OWNER, "num_grads", count)
            check_range(_OWNER, "num_grads", count, 1)
            table[level] = count
        if not table:
            raise field_error(_OWNER, "num_grads", value, "a mapping needs at least one {sparsity: num_grads} entry")
        return tuple(sorted(table.items()))
    value = as_int(_OWNER, "num_grads", value)
    check_range(_OWNER, "num_grads", value, 1)
    return value


def _positive(field: str, low: int = 1):
    def convert(value: Any) -> int:
        value = as_int(_OWNER, field, value)
        check_range(_OWNER, field, value, low)
        return value

    return convert


def _to_damp(value: Any) -> float:
    value = as_float(_OWNER, "damp", value)
    check_range(_OWNER, "damp", value, 0.0, low_open=True)
    return value


def _to_damp_mode(value: Any) -> str:
    check_in(_OWNER, "damp_mode", value, DAMP_MODES)
    return value


def _to_block_size(value: Any) -> int | None:
    return None if value is None else _positive("fisher_block_size")(value)


def _device(field: str, value: Any) -> str:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise field_error(_OWNER, field, value, "expected a torch device such as 'cpu' or 'cuda:0'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("%s.%s=%r: CUDA is not available on this machine; M-FAC runs on the CPU", _OWNER, field, value)
        return "cpu"
    return str(device)


def _to_grads_device(value: Any) -> str:
    return _device("grads_device", value)


def _to_devices(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, torch.device)):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise field_error(_OWNER, "devices", value, "expected None or a non-empty list of devices", TypeError)
    return tuple(dict.fromkeys(_device("devices", v) for v in value))


def _to_budget(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return value
    raise field_error(
        _OWNER, "memory_budget", value,
        "allowed None (no limit), a float in (0, 1] (fraction of available RAM) or an int > 1 (bytes)",
    )



@register_criterion
@attrs.define(eq=True, frozen=True)
class MFACCriterion(Criterion):
    """Second-order saliency with the OBS update (see the module docs).

    Args:
        num_grads: gradients per Fisher estimate, ``m``: an int, or ``{sparsity: m}`` — the entry with the
            largest key ``<=`` the modules' sparsity before the update is used (the smallest key if none is).
        damp: Fisher damping; relative (``λ = damp × mean Fisher diagonal``) unless ``damp_mode="absolute"``.
        damp_mode: ``"relative"`` (default) or ``"absolute"`` (SparseML's 1e-5 — see `sparsify.criteria.fisher`).
        fisher_block_size: block-diagonal Fisher with blocks of this many coordinates, or ``None`` for dense.
        obs_update: apply the OBS weight update to the surviving weights.
        num_recomputations: reach each new sparsity in this many sub-steps (needs a sampler).
        grads_device: where the ``m × d`` gradient buffer lives; a CUDA device on a machine without CUDA
            falls back to the CPU with a warning.
        devices: where the Fisher blocks are factored (default: ``grads_device``).
        memory_budget: refuse before any work when the gradient buffer and Fisher need more: a fraction of
            the available RAM, a number of bytes, or ``None``.
    """

    kind: ClassVar[str] = "mfac"
    needs_data: ClassVar[bool] = True

    num_grads: int | tuple[tuple[float, int], ...] = attrs.field(default=64, converter=_to_num_grads)
    damp: float = attrs.field(default=0.01, converter=_to_damp)
    damp_mode: str = attrs.field(default="relative", converter=_to_damp_mode)
    fisher_block_size: int | None = attrs.field(default=2000, converter=_to_block_size)
    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    obs_update: bool = attrs.field(default=True, converter=boolean(_OWNER, "obs_update"))  # type: ignore[misc]
    num_recomputations: int = attrs.field(default=1, converter=_positive("num_recomputations"))  # type: ignore[misc]
    grads_device: str = attrs.field(default="cpu", converter=_to_grads_device)
    devices: tuple[str, ...] | None = attrs.field(default=None, converter=_to_devices)
    memory_budget: float | int | None = attrs.field(default=0.5, converter=_to_budget)

    def num_grads_at(self, sparsity: float) -> int:
        """``m`` for modules whose sparsity before the update is ``sparsity`` (see ``num_grads``)."""
        if isinstance(self.num_grads, int):
            return self.num_grads
        keys = [level for level, _ in self.num_grads if level <= sparsity + 1e-9]
        table = dict(self.num_grads)
        return table[max(keys) if keys else min(table)]

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        if isinstance(self.num_grads, tuple):
            data["num_grads"] = dict(self.num_grads)
        if self.devices is not None:
            data["devices"] = list(self.devices)
        return data

    def scorer(self) -> Scorer:
        return _MFACScorer(self)


class _Recording:
    """Tensor hooks on ``weight_orig`` copying each backward pass's gradient (unpruned coordinates only)
    into a ring buffer of ``m`` rows."""

    def __init__(self, entries: list[tuple[str, torch.Tensor, torch.Tensor]], num_grads: int, device: str) -> None:
        self.layout: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, _, index in entries:
            self.layout[name] = (offset, index.numel())
            offset += index.numel()
        self.buffer = torch.empty(num_grads, offset, device=device)
        self.counts = [0] * len(entries)
        self.handles = [
            param.register_hook(functools.partial(self._record, i, self.layout[name][0], index))
            for i, (name, param, index) in enumerate(entries)
        ]

    def _record(self, i: int, offset: int, index: torch.Tensor, grad: torch.Tensor) -> None:
        row = self.counts[i] % self.buffer.shape[0]
        values = grad.detach().reshape(-1)[index]
        self.buffer[row, offset : offset + index.numel()] = values.to(self.buffer.device, self.buffer.dtype)
        self.counts[i] += 1

    @property
    def rows(self) -> int:
        return min(min(self.counts, default=0), self.buffer.shape[0])

    def take(self, names: list[str]) -> torch.Tensor:
        """The recorded rows for ``names`` (columns in that order), removing the hooks."""
        self.remove()
        rows = self.buffer[: self.rows]
        if [*self.layout] == names:
            return rows
        columns = [torch.arange(o, o + n) for o, n in (self.layout[name] for name in names)]
        return rows[:, torch.cat(columns).to(rows.device)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def state(self) -> dict[str, Any]:
        """``{module: {"rows": its columns of the buffer, "count": backward passes recorded}}``."""
        return {
            name: {"rows": self.buffer[:, offset : offset + size].detach().clone(), "count": self.counts[i]}
            for i, (name, (offset, size)) in enumerate(self.layout.items())
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Fill the buffer from `state` (modules with the same unpruned weights as when it was saved)."""
        for i, (name, (offset, size)) in enumerate(self.layout.items()):
            saved = state.get(name)
            if saved is None or tuple(saved["rows"].shape) != (self.buffer.shape[0], size):
                continue
            self.buffer[:, offset : offset + size] = saved["rows"].to(self.buffer.device, self.buffer.dtype)
            self.counts[i] = int(saved["count"])


class _MFACScorer(Scorer):
    monotone: ClassVar[bool] = True

    def __init__(self, spec: MFACCriterion) -> None:
        self.spec = spec
        self.names: list[str] = []
        self.fisher: FisherInverse | None = None
        self.diag: torch.Tensor | None = None
        self.slots: dict[str, tuple[int, torch.Tensor]] = {}
        self.recording: _Recording | None = None
        self.resumed: dict[str, Any] = {}  # recorded gradients from a checkpoint, until the recording reopens
        self.log: list[dict[str, Any]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def attach(self, pruner: PrunerView, names: list[str]) -> None:
        if self.spec.num_recomputations > 1 and pruner.sampler is None:
            raise ValueError(
                f"{_OWNER}.num_recomputations={self.spec.num_recomputations} needs fresh gradients for every "
                f"sub-step: pass sampler=GradSampler(data, loss_fn) to the Pruner"
            )
        self.names = list(names)
        self.after_step(pruner)

    def detach(self) -> None:
        self._stop_recording()

    def substeps(self, pruner: PrunerView) -> int:
        return self.spec.num_recomputations if pruner.sampler is not None else 1

    def after_step(self, pruner: PrunerView) -> None:
        """Open the gradient recording when an update of these modules is due within ``num_grads`` steps."""
        if pruner.sampler is not None or self.recording is not None or not self.names:
            return
        upcoming = pruner.next_update_step(self.names)
        if upcoming is None:
            return
        num_grads = self.spec.num_grads_at(_level(pruner, self.names))
        if upcoming - pruner.step_count > num_grads:
            return
        entries = _entries(pruner, self.names)
        self._plan(num_grads, sum(index.numel() for _, _, index in entries)).check()
        logger.info("M-FAC: recording training gradients for the update at step %d", upcoming)
        self.recording = _Recording(entries, num_grads, self.spec.grads_device)
        if self.resumed:
            self.recording.restore(self.resumed)
            self.resumed = {}

    def _stop_recording(self) -> None:
        if self.recording is not None:
            self.recording.remove()
            self.recording = None

    # -- one update --------------------------------------------------------------------------

    def begin(self, pruner: PrunerView, names: list[str]) -> None:
        spec = self.spec
        entries = _entries(pruner, names)
        level = _level(pruner, names)
        num_grads = spec.num_grads_at(level)
        dim = sum(index.numel() for _, _, index in entries)
        started = time.perf_counter()
        plan = None
        if pruner.sampler is not None:
            plan = self._plan(num_grads, dim)
            plan.check()
            grads = self._sample(pruner, entries, num_grads, dim)
        else:
            grads = self._recorded(pruner, names, num_grads)
        grads = gather_rows(grads)  # under DDP every rank builds the same Fisher from all ranks' gradients
        gathered = time.perf_counter()
        self.fisher = FisherInverse(
            grads, spec.damp, damp_mode=spec.damp_mode, block_size=spec.fisher_block_size, devices=spec.devices
        )
        self.diag = self.fisher.diag(torch.float64)
        self.slots, offset = {}, 0
        for name, _, index in entries:
            self.slots[name] = (offset, index)
            offset += index.numel()
        self.log.append({
            "step": pruner.step_count, "sparsity_before": level, "num_grads": grads.shape[0], "dim": dim,
            "damp": self.fisher.damp, "damp_ratio": self.fisher.damp_ratio, "fisher_scale": self.fisher.fisher_scale,
            "seconds_gradients": gathered - started, "seconds_fisher": time.perf_counter() - gathered,
            "memory_plan": str(plan) if plan is not None else None,
        })

    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        if self.diag is None or name not in self.slots:
            raise RuntimeError(f"module {name!r}: M-FAC scores exist only while masks are being computed")
        weight = pruner.targets[name].orig.detach()
        offset, index = self.slots[name]
        diag = self.diag[offset : offset + index.numel()].to(weight.device, torch.float64)
        score = torch.zeros(weight.numel(), dtype=torch.float32, device=weight.device)
        kept = weight.reshape(-1)[index].double()
        score[index] = (kept.square() / (2 * diag)).float()
        return score.view_as(weight)

    def after_masks(self, pruner: PrunerView, masks: Mapping[str, torch.Tensor]) -> None:
        """``w ← w − F⁻¹e``, ``e_q = w_q/[F⁻¹]_qq`` over the newly pruned ``q`` (SparseML's update)."""
        if not self.spec.obs_update or self.fisher is None or self.diag is None:
            return
        home = self.diag.device
        weights, pruned = [], []
        for name, (offset, index) in self.slots.items():
            param = pruner.targets[name].orig
            weights.append(param.detach().reshape(-1)[index].to(home, self.diag.dtype))
            survives = masks[name].expand(param.shape).reshape(-1)[index]
            pruned.append((~survives).nonzero().squeeze(1).to(home) + offset)
        flat = torch.cat(weights)
        newly = torch.cat(pruned)
        if newly.numel() == 0:
            return
        e = torch.zeros_like(flat)
        e[newly] = flat[newly] / self.diag[newly]
        delta = self.fisher.mul(e).neg_()
        with torch.no_grad():
            for name, (offset, index) in self.slots.items():
                param = pruner.targets[name].orig
                full = torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
                full[index] = delta[offset : offset + index.numel()].to(param.device, param.dtype)
                param.add_(full.view_as(param))

    def end(self) -> None:
        self.fisher, self.diag, self.slots = None, None, {}

    def state_dict(self) -> dict[str, Any]:
        """The gradients recorded so far for the next update (gradual pruning without a sampler), per module."""
        return self.recording.state() if self.recording is not None else {}

    def load_state_dict(self, state: Mapping[str, Any], pruner: PrunerView) -> None:
        """Keep the checkpoint's recorded gradients for the recording that reopens right after loading."""
        self._stop_recording()
        for name, saved in state.items():
            if not isinstance(saved, Mapping) or set(saved) != {"rows", "count"}:
                raise ValueError(f"M-FAC state of module {name!r} must hold 'rows' and 'count', got {saved!r:.80}")
            target = pruner.targets[name]
            kept = int(target.mask.expand(target.orig.shape).sum())
            rows = saved["rows"]
            if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != kept:
                raise ValueError(
                    f"M-FAC recorded gradients of module {name!r} have shape "
                    f"{tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__}, expected "
                    f"(num_grads, {kept}) for its {kept} unpruned weights (the checkpoint is from another run)"
                )
        self.resumed = dict(state)

    # -- gradients ---------------------------------------------------------------------------

    def _plan(self, num_grads: int, dim: int) -> Any:
        plan = plan_memory(num_grads, dim, self.spec.fisher_block_size, budget=self.spec.memory_budget)
        logger.info("M-FAC memory plan: %s", plan)
        return plan

    def _sample(
        self, pruner: PrunerView, entries: list[tuple[str, torch.Tensor, torch.Tensor]], num_grads: int, dim: int
    ) -> torch.Tensor:
        device = self.spec.grads_device
        buffer = torch.empty(num_grads, dim, device=device)
        params = [param for _, param, _ in entries]
        sampler = as_grad_sampler(pruner.sampler)
        for row, grads in enumerate(sampler.gradients(pruner.model, params, num_grads, desc="M-FAC gradients")):
            offset = 0
            for grad, (_, _, index) in zip(grads, entries):
                buffer[row, offset : offset + index.numel()] = grad.reshape(-1)[index].to(device, buffer.dtype)
                offset += index.numel()
        return buffer

    def _recorded(self, pruner: PrunerView, names: list[str], num_grads: int) -> torch.Tensor:
        recording, self.recording = self.recording, None
        rows = 0 if recording is None else recording.rows
        if recording is None or rows == 0:
            if recording is not None:
                recording.remove()
            raise RuntimeError(
                f"M-FAC at step {pruner.step_count}: no gradients for this update — one shot needs calibration "
                f"data (Pruner(model, config, sampler=GradSampler(data, loss_fn))); gradual pruning records the "
                f"backward passes of the num_grads={num_grads} training steps before each update, so schedule the "
                f"first update after at least one training step"
            )
        if rows < num_grads:
            logger.warning(
                "M-FAC at step %d: only %d of num_grads=%d training gradients were recorded before this update; "
                "using them", pruner.step_count, rows, num_grads,
            )
        missing = [n for n in names if n not in recording.layout]
        if missing:
            recording.remove()
            raise RuntimeError(f"M-FAC: no gradients were recorded for module(s) {missing}")
        return recording.take(names)


def _entries(pruner: PrunerView, names: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, weight_orig, flat indices of the unpruned weights)`` for ``names``."""
    entries: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name in names:
        target = pruner.targets[name]
        keep = target.mask.expand(target.orig.shape)
        entries.append((name, target.orig, keep.reshape(-1).nonzero().squeeze(1)))
    return entries


def _level(pruner: PrunerView, names: list[str]) -> float:
    """The parameter-weighted mean scheduled sparsity of ``names``."""
    sizes = {n: pruner.targets[n].orig.numel() for n in names}
    total = max(sum(sizes.values()), 1)
    return sum(sizes[n] * pruner.targets[n].sparsity_level for n in names) / total
