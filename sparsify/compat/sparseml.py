"""SparseML-style YAML recipes: pruning modifiers applied one-shot, or attached to a training loop.

A recipe is YAML — a ``.yaml`` file, or the block between the first two ``---`` lines of a Markdown
file, as SparseML writes them — whose modifiers sit in a list under ``modifiers`` or any key ending in
``_modifiers``; other top-level keys are variables (YAML anchors ``&x`` / ``*x``). The MNIST tutorial's
recipe, unchanged::

    pruning_modifiers:
      - !MFACPruningModifier
        params: __ALL_PRUNABLE__
        init_sparsity: 0.0
        final_sparsity: 0.35
        start_epoch: 0.0
        end_epoch: 1.0
        update_frequency: 1.0
        num_grads: 512
        fisher_block_size: 2000

    recipe = Recipe.from_yaml("pruning-mnistnet-one_shot-mfac.md")
    session = recipe.oneshot(model, GradSampler(loader, F.cross_entropy))   # session.model is pruned

    session = recipe.attach(model, steps_per_epoch=len(loader))            # gradual
    for epoch ...: for x, y in loader: ...; optimizer.step(); session.step()
    model = session.finalize()

**Loading is safe.** The loader is a ``yaml.SafeLoader`` subclass that additionally accepts local tags
(``!MFACPruningModifier``) and turns them into plain data; nothing is ever constructed from a tag, so
``!!python/object/apply:os.system`` is rejected as by ``yaml.safe_load``. ``eval(...)`` strings are
refused rather than evaluated.

Modifiers (tag → sparsify):

* ``!GMPruningModifier`` / ``!MagnitudePruningModifier`` — magnitude, layer-wise
  (``GMPruningModifier`` honours ``global_sparsity``); ``!GlobalMagnitudePruningModifier`` — magnitude,
  one global ranking; ``!MFACPruningModifier`` — `sparsify.mfac.MFACPruner`. All three run as an
  ``MFACPruner`` (``criterion="magnitude"`` or ``"mfac"``), so masks only grow.
* ``!ConstantPruningModifier`` — freeze the zeros the weights have when it starts (mask = ``w != 0``).
* Training modifiers (``EpochRangeModifier``, learning-rate and weight-decay modifiers) are not pruning:
  they are listed in `Recipe.ignored` with a warning. Any other tag is an error.

Fields, as SparseML names them: ``params`` (``__ALL_PRUNABLE__`` = the weights of every ``Linear`` and
``Conv1d/2d/3d``; exact parameter names such as ``"features.0.weight"``; ``"re:<regex>"`` matched with
``re.match`` — anchored at the start only, SparseML's rule — against the prunable weight names; every
entry must match something), ``init_sparsity``, ``final_sparsity`` (a number, or ``{sparsity: [params]}``
with ``params: []``), ``start_epoch``, ``end_epoch``, ``update_frequency``, ``inter_func`` (``cubic`` or
``linear``), ``global_sparsity`` (default ``false``, as in SparseML), ``mask_type`` (``unstructured``,
``filter`` or ``"N:M"`` = N *kept* of every M, SparseML's meaning, converted to sparsify's
``n_m_ratio=(M-N, M)``), ``leave_enabled`` (only ``true``). M-FAC: ``num_grads`` (int or
``{sparsity: n}``), ``damp``, ``fisher_block_size``, ``available_devices`` (old name ``available_gpus``),
``grads_device``, ``grad_sampler_kwargs`` (passed to a SparseML ``data_loader_builder``), the old nested
``mfac_options:`` form; and sparsify's own ``damp_mode``, ``obs_update``, ``num_recomputations``,
``memory_budget``, ``min_layer_sparsity``, ``max_layer_sparsity``. ``damp`` keeps sparsify's meaning —
*relative* to the Fisher's scale unless ``damp_mode: absolute`` (SparseML's absolute ``1e-5`` turns M-FAC
into magnitude pruning on converged models; see `sparsify.fisher`).

Epochs become steps with ``steps_per_epoch``: the masks are updated at ``n + 1`` evenly spaced steps from
``round(start_epoch·spe)`` to ``round(end_epoch·spe)``, ``n = round((end − start) / update_frequency)``,
with sparsity ``final + (init − final)(1 − i/n)^p`` (``p = 3`` cubic, ``1`` linear) — SparseML's
interpolation — as a `sparsify.PolynomialDecayScheduler`. As everywhere in sparsify,
``init_sparsity`` itself is applied (by magnitude) when the pruner is prepared.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import yaml
from torch import nn

from ..analysis.report import Report
from ..config import SUPPORTED_MODULES, ModulePrunerConfig, PrunerConfig
from ..criteria import GradSampler, MFACCriterion, as_grad_sampler
from ..pruning import Pruner
from ..schedules import ConstantSparsityScheduler, PolynomialDecayScheduler, PruningScheduler

__all__ = [
    "Modifier",
    "Recipe",
    "RecipeSession",
    "epochs_to_scheduler",
    "load_recipe_text",
]

logger = logging.getLogger(__name__)

ALL_PRUNABLE = "__ALL_PRUNABLE__"

# tag → (criterion, global_sparsity forced or None = read from the recipe)
PRUNING_MODIFIERS: dict[str, tuple[str, bool | None]] = {
    "GMPruningModifier": ("magnitude", None),
    "MagnitudePruningModifier": ("magnitude", False),
    "GlobalMagnitudePruningModifier": ("magnitude", True),
    "MFACPruningModifier": ("mfac", None),
    "ConstantPruningModifier": ("constant", False),
}
TRAINING_MODIFIERS = (
    "EpochRangeModifier", "SetLearningRateModifier", "LearningRateModifier", "LearningRateFunctionModifier",
    "SetWeightDecayModifier", "TrainableParamsModifier",
)
_INTER_FUNCS = {"cubic": 3, "linear": 1}
_COMMON_KEYS = ("params", "start_epoch", "end_epoch", "update_frequency", "leave_enabled", "log_types")
_PRUNING_KEYS = (*_COMMON_KEYS, "init_sparsity", "final_sparsity", "inter_func", "global_sparsity", "mask_type")
# recipe key → MFACPrunerConfig field
_MFAC_KEYS = {
    "num_grads": "num_grads", "damp": "damp", "damp_mode": "damp_mode", "fisher_block_size": "fisher_block_size",
    "available_devices": "devices", "available_gpus": "devices", "grads_device": "grads_device",
    "obs_update": "obs_update", "num_recomputations": "num_recomputations", "memory_budget": "memory_budget",
    "min_layer_sparsity": "min_layer_sparsity", "max_layer_sparsity": "max_layer_sparsity",
}
_MFAC_ONLY = ("grad_sampler_kwargs", "mfac_options", "num_pages", "use_gradient_buffering")
_SCOPE_KEYS = ("min_layer_sparsity", "max_layer_sparsity")


# ----------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------


@attrs.define
class _Tagged:
    tag: str
    fields: dict[str, Any]


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads local ``!Tag`` mappings as plain `_Tagged` data."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"!{suffix} must tag a mapping of the modifier's fields", node.start_mark
        )
    return _Tagged(suffix, loader.construct_mapping(node, deep=True))


_RecipeLoader.add_multi_constructor("!", _construct_tagged)


def load_recipe_text(text: str) -> dict[str, Any]:
    """Parse recipe text (YAML, or Markdown with the YAML between the first two ``---`` lines)."""
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(fences) >= 2:
        text = "\n".join(lines[fences[0] + 1 : fences[1]])
    data = yaml.load(text, Loader=_RecipeLoader)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


def _refuse_eval(value: Any, where: str) -> None:
    if isinstance(value, str) and value.strip().startswith("eval("):
        raise ValueError(f"{where}={value!r}: sparsify does not evaluate expressions in recipes; write the value")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_eval(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_eval(item, f"{where}[{i}]")


# ----------------------------------------------------------------------------------------------
# Modifiers
# ----------------------------------------------------------------------------------------------


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}={value!r} is invalid: expected a number")
    return float(value)


@attrs.define
class Modifier:
    """One pruning modifier of a recipe, validated; `Recipe.attach` / `Recipe.oneshot` apply it."""

    tag: str
    params: list[str]
    init_sparsity: float
    final_sparsity: float | dict[float, list[str]]
    start_epoch: float
    end_epoch: float
    update_frequency: float
    power: int
    global_sparsity: bool
    mask_type: str
    mfac_options: dict[str, Any]
    grad_sampler_kwargs: dict[str, Any]

    @property
    def kind(self) -> str:
        """``"magnitude"``, ``"mfac"`` or ``"constant"``."""
        return PRUNING_MODIFIERS[self.tag][0]

    @classmethod
    def from_fields(cls, tag: str, fields: Mapping[str, Any], index: int) -> Modifier:
        where = f"modifier {index} (!{tag})"
        kind, forced_global = PRUNING_MODIFIERS[tag]
        fields = dict(fields)
        nested = fields.pop("mfac_options", None) if kind == "mfac" else None
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ValueError(f"{where}.mfac_options={nested!r} is invalid: expected a mapping")
            fields.update(nested)
        allowed = _COMMON_KEYS if kind == "constant" else _PRUNING_KEYS
        if kind == "mfac":
            allowed = (*allowed, *_MFAC_KEYS, *_MFAC_ONLY)
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {', '.join(allowed)}")
        _refuse_eval(fields, where)
        if fields.get("leave_enabled", True) is not True:
            raise ValueError(f"{where}.leave_enabled={fields['leave_enabled']!r}: only true is supported")
        for key in ("num_pages", "use_gradient_buffering"):
            if key in fields:
                logger.warning("%s: %s=%r has no meaning in sparsify and is ignored", where, key, fields[key])

        params = fields.get("params", ALL_PRUNABLE if kind == "constant" else None)
        if params is None:
            raise ValueError(f"{where}: 'params' is required ({ALL_PRUNABLE}, names or 're:<regex>' entries)")
        params = [params] if isinstance(params, str) else params
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise ValueError(f"{where}.params={params!r} is invalid: expected a string or a list of strings")

        start = max(0.0, _number(f"{where}.start_epoch", fields.get("start_epoch", 0.0)))
        end = _number(f"{where}.end_epoch", fields.get("end_epoch", start))
        if end < start and not (kind == "constant" and end < 0):
            raise ValueError(f"{where}.end_epoch={end} is invalid: allowed end_epoch >= start_epoch ({start})")
        frequency = _number(f"{where}.update_frequency", fields.get("update_frequency", 1.0))
        if frequency <= 0 and end > start and kind != "constant":
            raise ValueError(f"{where}.update_frequency={frequency} is invalid: allowed > 0")

        inter = fields.get("inter_func", "cubic")
        if inter not in _INTER_FUNCS:
            raise ValueError(f"{where}.inter_func={inter!r} is invalid: allowed values are {', '.join(_INTER_FUNCS)}")
        init = _number(f"{where}.init_sparsity", fields.get("init_sparsity", 0.0))
        final = fields.get("final_sparsity", 0.0)
        if isinstance(final, Mapping):
            final = {_number(f"{where}.final_sparsity", k): ([v] if isinstance(v, str) else list(v))
                     for k, v in final.items()}
            if params:
                raise ValueError(f"{where}: with final_sparsity given per parameter, set params: []")
        else:
            final = _number(f"{where}.final_sparsity", final)
        global_sparsity = fields.get("global_sparsity", False) if forced_global is None else forced_global
        if not isinstance(global_sparsity, bool):
            raise ValueError(f"{where}.global_sparsity={global_sparsity!r} is invalid: expected true or false")
        mask_type = fields.get("mask_type", "unstructured")
        options = {_MFAC_KEYS[k]: v for k, v in fields.items() if k in _MFAC_KEYS}
        sampler_kwargs = fields.get("grad_sampler_kwargs") or {}
        if not isinstance(sampler_kwargs, Mapping):
            raise ValueError(f"{where}.grad_sampler_kwargs={sampler_kwargs!r} is invalid: expected a mapping")
        modifier = cls(tag, params, init, final, start, end, frequency, _INTER_FUNCS[inter], global_sparsity,
                       str(mask_type), options, dict(sampler_kwargs))
        modifier._pattern(where)  # validate mask_type now
        criterion_options = {k: v for k, v in options.items() if k not in _SCOPE_KEYS}
        if criterion_options:
            MFACCriterion(**criterion_options)  # validate the M-FAC options now, with their own messages
        return modifier

    def _pattern(self, where: str = "") -> dict[str, Any]:
        """ModuleMagnitudePrunerConfig pattern fields for ``mask_type``."""
        where = where or f"!{self.tag}"
        if self.mask_type == "unstructured":
            return {}
        if self.global_sparsity:
            raise ValueError(f"{where}.mask_type={self.mask_type!r} needs global_sparsity: false")
        if self.mask_type == "filter":
            return {"granularity": "per_channel"}
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", self.mask_type)
        if match:
            kept, size = int(match.group(1)), int(match.group(2))
            if not 0 < kept < size:
                raise ValueError(f"{where}.mask_type={self.mask_type!r} is invalid: N:M keeps N of M, 0 < N < M")
            logger.info("%s: mask_type %s keeps %d of every %d = n_m_ratio (%d, %d) in sparsify (n zeros of m)",
                        where, self.mask_type, kept, size, size - kept, size)
            return {"n_m_ratio": (size - kept, size)}
        raise ValueError(
            f"{where}.mask_type={self.mask_type!r} is invalid: allowed 'unstructured', 'filter' or 'N:M' (N kept of M)"
        )

    # -- application -----------------------------------------------------------------------

    def targets(self, model: nn.Module) -> dict[str, float]:
        """``{module name: final sparsity}`` of the modules this modifier prunes in ``model``."""
        prunable = _prunable_weights(model)
        where = f"!{self.tag}"
        if isinstance(self.final_sparsity, dict):
            targets = {}
            for level, entries in self.final_sparsity.items():
                for module in _select(entries, prunable, f"{where}.final_sparsity[{level}]"):
                    targets[module] = level
            return targets
        return {module: self.final_sparsity for module in _select(self.params, prunable, f"{where}.params")}

    def scheduler(self, steps_per_epoch: float | None) -> PruningScheduler:
        """The schedule in steps (``steps_per_epoch=None``: one shot, the target at the first step)."""
        if steps_per_epoch is None:
            return ConstantSparsityScheduler(begin_step=0)
        return epochs_to_scheduler(self.start_epoch, self.end_epoch, self.update_frequency, steps_per_epoch, self.power)

    def module_configs(self, model: nn.Module, steps_per_epoch: float | None) -> dict[str, ModulePrunerConfig]:
        """``{module name: ModulePrunerConfig}`` for the modules this modifier prunes in ``model``.

        Modules that share a level share one config object, so a global modifier is one global ranking.
        """
        targets = self.targets(model)
        scheduler = self.scheduler(steps_per_epoch)
        if self.kind == "constant":
            # freezing the zeros is magnitude pruning at the zero fraction: the zeros rank lowest
            at_once = isinstance(scheduler, ConstantSparsityScheduler) and scheduler.begin_step == 0
            return {
                name: ModulePrunerConfig(initial_sparsity=level if at_once else 0.0, target_sparsity=level,
                                         scheduler=copy.deepcopy(scheduler))
                for name, level in ((n, _zero_fraction(model, n)) for n in targets)
            }
        pattern = self._pattern()
        options = dict(self.mfac_options)
        scope_fields = {
            "scope": "global" if self.global_sparsity else "local",
            "min_sparsity": options.pop("min_layer_sparsity", 0.0),
            "max_sparsity": options.pop("max_layer_sparsity", 1.0),
        }
        criterion: Any = {"kind": "mfac", **options} if self.kind == "mfac" else "magnitude"
        shared: dict[float, ModulePrunerConfig] = {}
        configs = {}
        for name, level in targets.items():
            if level not in shared:
                initial = 0.0 if steps_per_epoch is None else min(self.init_sparsity, level)  # one shot: to final
                fields = {"initial_sparsity": initial, "target_sparsity": level, "scheduler": copy.deepcopy(scheduler),
                          "criterion": criterion, **scope_fields, **pattern}
                if "n_m_ratio" in pattern:
                    fields.pop("target_sparsity")
                shared[level] = ModulePrunerConfig(**fields)
            configs[name] = shared[level]
        return configs


def epochs_to_scheduler(
    start_epoch: float, end_epoch: float, update_frequency: float, steps_per_epoch: float, power: int = 3
) -> PruningScheduler:
    """SparseML's epoch schedule as a step scheduler (see the module docstring)."""
    if not steps_per_epoch > 0:
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} is invalid: allowed a number > 0")
    start, end = round(start_epoch * steps_per_epoch), round(end_epoch * steps_per_epoch)
    if end <= start:
        return ConstantSparsityScheduler(begin_step=start)
    n = max(1, round((end_epoch - start_epoch) / update_frequency))
    steps = sorted({round(start + (end - start) * i / n) for i in range(n + 1)})
    if len(steps) < n + 1:
        logger.warning("epochs %s-%s every %s epoch(s) at %s steps per epoch: only %d distinct update steps",
                       start_epoch, end_epoch, update_frequency, steps_per_epoch, len(steps))
    return PolynomialDecayScheduler(update_steps=steps, power=power)


def _prunable_weights(model: nn.Module) -> dict[str, str]:
    """``{"<module>.weight": "<module>"}`` for every Linear / ConvNd whose weight is a parameter."""
    found = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if isinstance(module, SUPPORTED_MODULES) else None
        if isinstance(weight, nn.Parameter):
            found[f"{name}.weight" if name else "weight"] = name
    return found


def _select(entries: list[str], prunable: dict[str, str], where: str) -> list[str]:
    """Module names selected by ``entries`` (SparseML's tokens), in model order; each entry must match."""
    chosen: set[str] = set()
    for entry in entries:
        if entry == ALL_PRUNABLE:
            hits = list(prunable)
        elif entry == "__ALL__":
            raise ValueError(f"{where}: '__ALL__' selects biases and norms too; use {ALL_PRUNABLE!r}")
        elif entry.startswith("re:"):
            pattern = re.compile(entry[3:])
            hits = [p for p in prunable if pattern.match(p)]
        else:
            hits = [entry] if entry in prunable else []
        if not hits:
            raise ValueError(
                f"{where}: {entry!r} matches no prunable weight; prunable weights are "
                f"{', '.join(prunable) or 'none'} ('re:' entries use re.match, anchored at the start)"
            )
        chosen.update(hits)
    return [prunable[p] for p in prunable if p in chosen]


def _zero_fraction(model: nn.Module, name: str) -> float:
    weight = model.get_submodule(name).weight
    return float((weight == 0).float().mean())


# ----------------------------------------------------------------------------------------------
# Recipe and session
# ----------------------------------------------------------------------------------------------


@attrs.define
class Recipe:
    """The pruning modifiers of a recipe (see the module docstring); `ignored` lists the others."""

    modifiers: list[Modifier]
    ignored: list[str] = attrs.field(factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """From parsed recipe data (modifier lists under ``modifiers`` or ``*_modifiers`` keys)."""
        tagged: list[Any] = []
        for key, value in data.items():
            if key == "modifiers" or key.endswith("_modifiers"):
                if not isinstance(value, list):
                    raise ValueError(f"recipe key {key!r} must hold a list of modifiers, got {type(value).__name__}")
                tagged.extend(value)
        modifiers, ignored = [], []
        for index, item in enumerate(tagged):
            if not isinstance(item, _Tagged):
                raise ValueError(f"modifier {index} is not a tagged modifier (e.g. '- !MFACPruningModifier'): {item!r}")
            if item.tag in TRAINING_MODIFIERS:
                logger.warning("recipe: !%s is a training modifier, not pruning; sparsify ignores it", item.tag)
                ignored.append(item.tag)
            elif item.tag in PRUNING_MODIFIERS:
                modifiers.append(Modifier.from_fields(item.tag, item.fields, index))
            else:
                raise ValueError(
                    f"modifier {index}: !{item.tag} is not supported; allowed pruning modifiers are "
                    f"{', '.join('!' + t for t in PRUNING_MODIFIERS)} (training modifiers "
                    f"{', '.join('!' + t for t in TRAINING_MODIFIERS)} are ignored)"
                )
        if not modifiers:
            raise ValueError("the recipe has no pruning modifier (under 'modifiers' or a '*_modifiers' key)")
        return cls(modifiers, ignored)

    @classmethod
    def from_string(cls, text: str) -> Recipe:
        """From recipe text (YAML, or Markdown with YAML front matter)."""
        return cls.from_dict(load_recipe_text(text))

    @classmethod
    def from_yaml(cls, source: str | Path | IO[str]) -> Recipe:
        """From a recipe file path (``.yaml`` or ``.md``) or an open text stream."""
        if isinstance(source, (str, Path)):
            return cls.from_string(Path(source).read_text(encoding="utf-8"))
        return cls.from_string(source.read())

    @property
    def needs_sampler(self) -> bool:
        """Whether a modifier needs calibration data for one-shot pruning (M-FAC)."""
        return any(m.kind == "mfac" for m in self.modifiers)

    def describe(self, model: nn.Module) -> list[tuple[str, dict[str, float]]]:
        """Dry run: ``(tag, {module: final sparsity})`` for every modifier, touching nothing."""
        return [(m.tag, m.targets(model)) for m in self.modifiers]

    def _session(
        self, model: nn.Module, steps_per_epoch: float | None, sampler: Any, inplace: bool
    ) -> RecipeSession:
        owners: dict[str, str] = {}
        for index, modifier in enumerate(self.modifiers):
            for name in modifier.targets(model):
                if name in owners:
                    raise ValueError(
                        f"two modifiers of the recipe select the same module {name!r}: {owners[name]} and "
                        f"modifier {index} (!{modifier.tag}); sparsify applies one modifier per module"
                    )
                owners[name] = f"modifier {index} (!{modifier.tag})"
        name_configs: dict[str, ModulePrunerConfig] = {}
        for modifier in self.modifiers:
            name_configs.update(modifier.module_configs(model, steps_per_epoch))
        config = PrunerConfig(module_name_configs={re.escape(name): cfg for name, cfg in name_configs.items()})
        mfac = next((m for m in self.modifiers if m.kind == "mfac"), None)
        if isinstance(sampler, Mapping):
            sampler = as_grad_sampler(sampler, **(mfac.grad_sampler_kwargs if mfac is not None else {}))
        pruner = Pruner(model, config, sampler)
        pruner.prepare(inplace=inplace)
        return RecipeSession(pruner)

    def oneshot(
        self, model: nn.Module, sampler: GradSampler | Mapping[str, Any] | None = None, *,
        inplace: bool = False, finalize: bool = True,
    ) -> RecipeSession:
        """Apply every modifier at its final state now (SparseML's ``manager.apply``); returns the session."""
        if self.needs_sampler and sampler is None:
            raise ValueError(
                "the recipe's !MFACPruningModifier needs calibration data: recipe.oneshot(model, "
                "sampler=GradSampler(data, loss_fn))"
            )
        session = self._session(model, None, sampler, inplace)
        session.pruner.prune_now()
        if finalize:
            session.finalize()
        return session

    def attach(
        self, model: nn.Module, steps_per_epoch: float, sampler: GradSampler | Mapping[str, Any] | None = None,
        *, inplace: bool = True,
    ) -> RecipeSession:
        """Prepare ``model`` for training under the recipe; call ``session.step()`` after each optimizer step.

        Without ``sampler``, M-FAC modifiers record the training gradients before each update.
        """
        return self._session(model, steps_per_epoch, sampler, inplace)


class RecipeSession:
    """A recipe applied to one model: one `sparsify.Pruner` with a config entry per modifier."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    def step(self) -> None:
        """Advance every modifier's schedule by one optimizer step."""
        self.pruner.step()

    def finalize(self) -> nn.Module:
        """Bake every mask into the model (Core ML metadata included) and return it."""
        return self.pruner.finalize(inplace=True)

    def report(self) -> Report:
        """Every pruned module's sparsity, with one ``global`` row."""
        return self.pruner.report()
