"""INC 1.x's ``gradient_sensitivity`` pruner (attention-head and FFN-neuron pruning) as masks on the one machine.

INC's ``GradientSensitivityPruner`` with ``parameters`` (its structured mode), read from its source:

* each pruner lists weights by name, ``*`` standing for the layer index (``re.match`` of the name with
  ``*`` as ``(\\d+)``); a weight is cut into units of ``stride`` rows (``transpose: true``: columns);
* after each step it adds to each layer's unit importance the absolute value of, for
  ``importance_metric: abs_gradient`` with ``importance_inputs: [head_mask]``, the gradient of BERT's
  ``head_mask`` for that layer — per head, ``Σ context ⊙ ∂loss/∂context`` over the head's features, the
  context being the input of ``<layer>.attention.output.dense`` (read here by a hook, so the model need
  not take a ``head_mask``) — or, for ``weighted_gradient``, ``Σ_inputs Σ_columns grad ⊙ weight`` of the
  ``importance_inputs`` parameters (their ``*`` the layer's index);
* at the end of epoch ``start_epoch`` it keeps the ``target`` most important units of each weight (ties: the
  lower index) and drops the rest. INC slices the weights physically (and reorders the kept units); here the
  dropped units are masked to zero in place — the same function of the input, the same shapes — and a later
  epoch end changes nothing (INC's later cuts act on the already-thinned weight). ``normalize`` rescales a
  layer's importances by their norm, which does not change their order within the layer.

Biases listed with the weights stay dense (sparsify prunes weights): a dropped unit's output still reaches
nothing, because the weight that reads it (``transpose: true``) has that column zeroed too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import attrs
import torch
from torch import nn

from ...criteria.base import Criterion, PrunerView, Scorer
from ...mask_layout import orig_name
from ..plan import IncWeights, Origin, PruningGroup, Schedule, Structure, TargetRule, UnsupportedFeatureError

__all__ = ["GradientSensitivityCriterion", "gradient_sensitivity_group", "name_pattern"]

_METRICS = ("abs_gradient", "weighted_gradient")


def name_pattern(name: str) -> re.Pattern[str]:
    """INC's name rule: ``*`` becomes ``(\\d+)``, the rest is a regular expression matched at the start."""
    return re.compile(name.replace("*", r"(\d+)"))


def _index(patterns: tuple[str, ...], weight_name: str) -> str | None:
    for text in patterns:
        match = name_pattern(text).match(weight_name)
        if match is not None and "*" in text:
            return match.group(1)
    return None


@attrs.define(eq=True, frozen=True)
class GradientSensitivityCriterion(Criterion):
    """Scores of INC 1.x's gradient-sensitivity pruner: every weight of a unit scores that unit's importance.

    Not in the public registry (`sparsify.criteria.criterion_kinds`): it only means something for the weights
    an INC config names, and the INC reader builds it.
    """

    kind: ClassVar[str] = "inc_gradient_sensitivity"
    needs_data: ClassVar[bool] = True

    metric: str = "abs_gradient"
    stride: int = 1
    transpose: bool = False
    names: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    importance_inputs: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    num_batches: int = 8

    def scorer(self) -> Scorer:
        return _Scorer(self)


class _Scorer(Scorer):
    def __init__(self, spec: GradientSensitivityCriterion) -> None:
        self.spec = spec
        self.importance: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        self.sources: dict[str, str] = {}

    def attach(self, pruner: PrunerView, names: list[str]) -> None:
        modules = dict(pruner.model.named_modules())
        for name in names:
            index = _index(self.spec.names, f"{name}.weight")
            if self.spec.metric == "abs_gradient":
                prefix = self.spec.names[0].split("*")[0]
                source = f"{prefix}{index}.attention.output.dense"
                if index is None or not isinstance(modules.get(source), nn.Linear):
                    raise ValueError(f"{name}: INC's head_mask importance is read from the input of {source} (Hugging "
                                     f"Face BERT's attention output Linear), which this model does not have")
                self.sources[name] = source
                hook = functools.partial(self._context, name)
                self.handles.append(modules[source].register_forward_hook(hook))
            else:
                self.sources[name] = str(index)

    def _context(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """The context (the Linear's input) and, in backward, ∂loss/∂context = ∂loss/∂output · W — read from
        the output's gradient, so the context need not require a gradient itself."""
        context = args[0] if args else None
        if isinstance(context, torch.Tensor) and isinstance(output, torch.Tensor) and output.requires_grad:
            weight = cast(torch.Tensor, module.weight).detach()
            output.register_hook(functools.partial(self._head_grad, name, context.detach(), weight))

    def _head_grad(self, name: str, context: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> None:
        per_feature = (context * (grad @ weight)).reshape(-1, context.shape[-1]).sum(0)  # ∂loss/∂head_mask
        heads = per_feature.reshape(-1, self.spec.stride).sum(1).abs().detach().float()
        self._add(name, heads)

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.importance[name] = value if name not in self.importance else self.importance[name] + value

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def observe_gradients(self, pruner: PrunerView) -> int:
        if self.spec.metric != "weighted_gradient":
            return 0
        updated = 0
        params = dict(pruner.model.named_parameters())
        for name, index in self.sources.items():
            total: torch.Tensor | None = None
            for text in self.spec.importance_inputs:
                param_name = text.replace("*", index)
                param = params.get(param_name)
                if param is None:  # a masked weight trains as <name>_orig
                    param = params.get(orig_name(param_name))
                if param is None or param.grad is None:
                    continue
                term = param.grad.detach() * param.detach()
                term = term.sum(1) if term.dim() > 1 else term
                total = term if total is None else total + term
            if total is not None:
                self._add(name, total.abs().float())
                updated += 1
        return updated

    def begin(self, pruner: PrunerView, names: list[str]) -> None:
        missing = [n for n in names if n not in self.importance]
        if not missing:
            return
        if pruner.sampler is None:
            raise RuntimeError(f"criterion 'inc_gradient_sensitivity' has seen no gradient for {missing}: train "
                               f"through the callbacks first, or give calibration data")
        params: list[torch.Tensor] = [pruner.targets[n].orig for n in missing]
        named = dict(pruner.model.named_parameters())
        for name in missing:  # what the importances read: the context modules' weights (so the backward reaches
            wanted: list[torch.Tensor | None]
            if self.spec.metric == "abs_gradient":  # their outputs' hooks), or the importance_inputs parameters
                source = pruner.model.get_submodule(self.sources[name])
                wanted = [cast("torch.Tensor | None", p) for p in source.parameters(recurse=False)][:1]
            else:
                wanted = [named.get(t.replace("*", self.sources[name])) for t in self.spec.importance_inputs]
                wanted += [named.get(orig_name(t.replace("*", self.sources[name])))
                           for t in self.spec.importance_inputs]
            params += [p for p in wanted if p is not None and not any(p is q for q in params)]
        for grads in pruner.sampler.gradients(pruner.model, params, self.spec.num_batches, desc=self.spec.kind):
            saved = [param.grad for param in params]
            for param, grad in zip(params, grads):
                param.grad = grad
            self.observe_gradients(pruner)
            for param, grad in zip(params, saved):
                param.grad = grad

    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        target = pruner.targets[name]
        shape = target.orig.shape
        units = self.importance[name]
        # INC keeps the most important (ties: the lower index, its heap's order): score = rank, n for the first
        order = sorted(range(units.numel()), key=lambda i: (-float(units[i]), i))
        ranked = torch.empty(units.numel())
        ranked[order] = torch.arange(units.numel(), 0, -1, dtype=torch.float32)
        per_row = ranked.repeat_interleave(self.spec.stride)
        if self.spec.transpose:
            return per_row.reshape(1, -1).expand(shape[0], -1).float()
        return per_row.reshape(-1, 1).expand(-1, shape[1]).float()

    def state_dict(self) -> dict[str, Any]:
        return {name: tensor.clone() for name, tensor in self.importance.items()}

    def load_state_dict(self, state: Mapping[str, Any], pruner: PrunerView) -> None:
        self.importance = {name: tensor.clone() for name, tensor in state.items()}


def _flag(parameters: Mapping[str, Any], key: str, origin: Origin, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise origin.error(f"parameters.{key}={value!r} is invalid: expected true or false", key="parameters")
    return value


def gradient_sensitivity_group(local: Mapping[str, Any], names: tuple[str, ...], start: float,
                               origin: Origin) -> PruningGroup:
    """One INC 1.x ``prune_type: gradient_sensitivity`` pruner (structured mode) as a group."""
    parameters = local.get("parameters")
    if not isinstance(parameters, Mapping):
        raise UnsupportedFeatureError(f"{origin.entry}: prune_type='gradient_sensitivity' without parameters",
                                      "INC's element-wise mode; give parameters: {target, stride, "
                                      "importance_inputs, importance_metric}", origin.path, origin.at("parameters"))
    values: dict[str, int] = {}
    for key in ("target", "stride"):
        value = parameters.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise origin.error(f"parameters.{key}={value!r} is invalid: expected an integer >= 1", key="parameters")
        values[key] = value
    metric = parameters.get("importance_metric")
    inputs = parameters.get("importance_inputs")
    if metric not in _METRICS:
        raise origin.error(f"parameters.importance_metric={metric!r} is invalid: allowed {', '.join(_METRICS)}",
                           key="parameters")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) for v in inputs):
        raise origin.error(f"parameters.importance_inputs={inputs!r} is invalid: expected a list of names",
                           key="parameters")
    if metric == "abs_gradient" and inputs != ["head_mask"]:
        raise UnsupportedFeatureError(f"{origin.entry}: importance_inputs={inputs!r} with abs_gradient",
                                      "INC reads the gradient of a model input; sparsify reads BERT's head_mask",
                                      origin.path, origin.at("parameters"))
    if not names or not all("*" in n for n in names):
        raise origin.error(f"names={list(names)!r} is invalid: gradient_sensitivity names weights with '*' for the "
                           f"layer index", key="names")
    transpose = _flag(parameters, "transpose", origin, False)
    _flag(parameters, "normalize", origin, False)
    stride = values["stride"]
    tile = f"channelx{stride}" if transpose else f"{stride}xchannel"
    options = {"metric": metric, "stride": stride, "transpose": transpose, "names": list(names),
               "importance_inputs": list(inputs), "keep_units": values["target"]}
    note = (f"gradient sensitivity: keeps the {values['target']} most important units of {stride} "
            f"{'column' if transpose else 'row'}(s) per weight at the end of epoch {start:g}, masks the rest")
    return PruningGroup(origin, "inc_gradient_sensitivity", [TargetRule(0.0, IncWeights(names))], 0.0,
                        Schedule("epoch", start + 1, start + 1, 1.0, "oneshot"), Structure("tile", tile=tile,
                                                                                           indivisible="skip"),
                        options=options, notes=[note])
