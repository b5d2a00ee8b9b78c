"""SparseML's entry points over the one machine: `Recipe`, `ScheduledModifierManager`.

A recipe is read into a `sparsify.compat.plan.RecipePlan` (`sparsify.compat.sparseml.reader`), translated
into one `sparsify.PrunerConfig` (`sparsify.compat.translate`) and run by one `sparsify.Pruner`::

    manager = ScheduledModifierManager.from_yaml("recipe.md")          # SparseML's names, unchanged
    optimizer = manager.modify(model, optimizer, steps_per_epoch=len(loader))
    for epoch ...: for x, y in loader: ...; loss.backward(); optimizer.step()   # pruning happens here
    manager.finalize(model)

    manager.apply(model, grad_sampler={"data_loader_builder": ..., "loss_function": ...})  # one shot

or with sparsify's names: ``Recipe.from_yaml(path).attach(model, steps_per_epoch)`` / ``.oneshot(model,
sampler)``. What the recipe asks that is not pruning (distillation, quantization, learning rate, ...) is
named in one warning per kind when the recipe is read; what sparsify cannot do is refused then.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast

from torch import nn

from ..._checks import check_flags
from ...analysis.report import Report
from ...criteria import GradSampler, as_grad_sampler
from ...pruning import Pruner
from ...safe_io import DEFAULT_MAX_BYTES, load_yaml_text, read_text
from ..plan import RecipePlan, ResolvedGroup
from ..translate import PassThrough, pruner_config
from .acdc import AcdcPhases
from .reader import read_recipe_data, recipe_text_to_yaml

__all__ = ["Recipe", "RecipeSession", "ScheduledModifierManager", "ScheduledOptimizer"]


class Recipe:
    """A SparseML recipe read and checked: `plan` says what it prunes; `ignored` what it does not apply."""

    def __init__(self, plan: RecipePlan) -> None:
        self.plan = plan
        plan.warn_not_applied()

    @classmethod
    def from_yaml(cls, source: str | Path | IO[str], recipe_variables: Mapping[str, Any] | None = None, *,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Recipe:
        """From a ``.yaml`` / ``.md`` file or a stream; ``recipe_variables`` override top-level variables."""
        name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", None)
        return cls.from_string(read_text(source, max_bytes=max_bytes), recipe_variables,
                               name=name if isinstance(name, str) else None)

    @classmethod
    def from_string(cls, text: str, recipe_variables: Mapping[str, Any] | None = None, *,
                    name: str | None = None) -> Recipe:
        """From recipe text (YAML, or Markdown with front matter or a ```yaml block)."""
        loaded = load_yaml_text(recipe_text_to_yaml(text, name), name)
        return cls(read_recipe_data(loaded.data, name, recipe_variables, duplicates=loaded.duplicates))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], recipe_variables: Mapping[str, Any] | None = None) -> Recipe:
        """From parsed recipe data (modifiers as `sparsify.safe_io.Tagged` values, or ``{Name: {...}}`` stages)."""
        return cls(read_recipe_data(data, None, recipe_variables))

    @property
    def ignored(self) -> list[str]:
        """The modifiers that are not applied (not pruning), by name."""
        return [name for items in self.plan.not_applied.values() for name, _ in items]

    @property
    def needs_sampler(self) -> bool:
        """Whether one-shot pruning needs calibration data (M-FAC and other data-dependent criteria)."""
        return any(g.method not in ("magnitude", "lock") for g in self.plan.groups)

    def describe(self, model: nn.Module) -> list[ResolvedGroup]:
        """Dry run: every group with the final sparsity of each module it selects, touching nothing."""
        return self.plan.resolve(model)

    def pruner(self, model: nn.Module, *, steps_per_epoch: float | None = None, one_shot: bool = False,
               sampler: GradSampler | Mapping[str, Any] | None = None) -> Pruner:
        """An unprepared `sparsify.Pruner` for ``model`` (no layer drops: see `attach`)."""
        check_flags("Recipe.pruner", one_shot=one_shot)
        config, _ = pruner_config(self.plan, model, steps_per_epoch=steps_per_epoch, one_shot=one_shot)
        return Pruner(model, config, self._sampler(sampler))

    def _sampler(self, sampler: Any) -> GradSampler | None:
        if sampler is None or isinstance(sampler, GradSampler):
            return sampler
        kwargs: dict[str, Any] = {}
        for group in self.plan.groups:
            kwargs.update(group.options.get("grad_sampler_kwargs", {}))
        return as_grad_sampler(sampler, **kwargs)

    def _session(self, model: nn.Module, steps_per_epoch: float | None, sampler: Any, *, one_shot: bool,
                 inplace: bool, optimizer: Any = None) -> RecipeSession:
        check_flags("Recipe", one_shot=one_shot, inplace=inplace)
        target = model if inplace else copy.deepcopy(model)
        config, resolved = pruner_config(self.plan, target, steps_per_epoch=steps_per_epoch, one_shot=one_shot)
        pruner = Pruner(target, config, self._sampler(sampler))
        dropped = _drop_layers(self.plan, target)
        try:
            pruner.prepare(inplace=True)
        except BaseException:
            _restore_layers(target, dropped)
            raise
        acdc = [r for r in resolved if r.group.schedule.curve == "acdc" and r.modules] if not one_shot else []
        phases = AcdcPhases(pruner, [n for r in acdc for n in r.modules], any(
            r.group.options.get("momentum_buffer_reset", True) for r in acdc), optimizer) if acdc else None
        return RecipeSession(pruner, phases)

    def attach(self, model: nn.Module, steps_per_epoch: float, sampler: GradSampler | Mapping[str, Any] | None = None,
               *, inplace: bool = True, optimizer: Any = None) -> RecipeSession:
        """Prepare ``model`` to train under the recipe; call ``session.step()`` after each optimizer step.

        Epochs become steps with ``steps_per_epoch``. Data-dependent criteria read the training gradients
        (or ``sampler``, SparseML's ``grad_sampler`` dict or a `sparsify.GradSampler`). ``optimizer``: the
        training optimizer, for an ``ACDCPruningModifier`` that resets its momentum (`manager.modify` passes it).
        """
        return self._session(model, steps_per_epoch, sampler, one_shot=False, inplace=inplace, optimizer=optimizer)

    def oneshot(self, model: nn.Module, sampler: GradSampler | Mapping[str, Any] | None = None, *,
                inplace: bool = False, finalize: bool = True) -> RecipeSession:
        """Every modifier at its final state now (SparseML's ``manager.apply``); returns the session."""
        check_flags("Recipe.oneshot", inplace=inplace, finalize=finalize)
        if self.needs_sampler and sampler is None:
            methods = sorted({g.method for g in self.plan.groups if g.method not in ("magnitude", "lock")})
            raise ValueError(f"the recipe's {', '.join(methods)} pruning needs calibration data in one shot: "
                             f"oneshot(model, sampler=GradSampler(data, loss_fn)) or SparseML's grad_sampler dict")
        session = self._session(model, None, sampler, one_shot=True, inplace=inplace)
        session.pruner.prune_now()
        if finalize:
            session.finalize()
        return session


def _drop_layers(plan: RecipePlan, model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for drop in plan.layer_drops:
        for name in drop.layers:
            parent_name, _, child = name.rpartition(".")
            try:
                parent, original = model.get_submodule(parent_name), model.get_submodule(name)
            except AttributeError as exc:
                _restore_layers(model, replaced)
                raise drop.origin.error(f"layers entry {name!r} is not a module of the model") from exc
            replaced.append((parent, child, original))
            setattr(parent, child, PassThrough())
    return replaced


def _restore_layers(model: nn.Module, replaced: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, child, original in reversed(replaced):
        setattr(parent, child, original)


class RecipeSession:
    """A recipe applied to one model: one `sparsify.Pruner` (``step``, ``finalize``, ``report``)."""

    def __init__(self, pruner: Pruner, acdc: AcdcPhases | None = None) -> None:
        self.pruner = pruner
        self.acdc = acdc

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    def step(self) -> None:
        """After each optimizer step: advance every modifier's schedule."""
        if self.acdc is None:
            self.pruner.step()
            return
        self.acdc.before_step()
        self.pruner.step()
        self.acdc.after_step()

    def finalize(self) -> nn.Module:
        """Bake the masks into the model (Core ML metadata included) and return it."""
        return self.pruner.finalize(inplace=True)

    def report(self) -> Report:
        """Every pruned module's sparsity, with a ``global`` row."""
        return self.pruner.report()


class ScheduledOptimizer:
    """What `ScheduledModifierManager.modify` returns: the optimizer, whose ``step()`` also prunes.

    ``step()`` lets gradient criteria read this step's gradients, steps the optimizer, then advances the
    recipe's schedules (`sparsify.Pruner.step`). Everything else is the wrapped optimizer's.
    """

    def __init__(self, optimizer: Any, session: RecipeSession) -> None:
        self.optimizer = optimizer
        self.session = session

    def step(self, closure: Any = None) -> Any:
        self.session.pruner.observe_gradients()
        result = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.session.step()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


class ScheduledModifierManager:
    """SparseML's ``ScheduledModifierManager``, as a thin shim over `Recipe` and `sparsify.Pruner`."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.session: RecipeSession | None = None

    @classmethod
    def from_yaml(cls, file_path: str | Path | IO[str], add_modifiers: Any = None,
                  recipe_variables: Mapping[str, Any] | str | None = None, **kwargs: Any) -> ScheduledModifierManager:
        """Read a recipe (``.yaml``, ``.md``, or recipe text); ``recipe_variables`` override its variables."""
        if add_modifiers:
            raise ValueError("add_modifiers is not supported: put the modifiers in the recipe")
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        if isinstance(recipe_variables, str):
            import json

            parsed = json.loads(recipe_variables)  # SparseML passes a JSON object
            if not isinstance(parsed, dict):
                raise ValueError(f"recipe_variables={recipe_variables!r} is invalid: allowed a mapping or a JSON "
                                 f"object such as '{{\"num_epochs\": 10}}', got a JSON {type(parsed).__name__}")
            recipe_variables = cast(Mapping[str, Any], parsed)
        if isinstance(file_path, str) and "\n" in file_path:  # SparseML accepts recipe text here too
            return cls(Recipe.from_string(file_path, recipe_variables))
        return cls(Recipe.from_yaml(file_path, recipe_variables))

    @property
    def pruner(self) -> Pruner | None:
        return None if self.session is None else self.session.pruner

    def apply(self, module: nn.Module, epoch: float = math.inf, loggers: Any = None, finalize: bool = True,
              grad_sampler: GradSampler | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """One shot, in place: every modifier at its final state (SparseML's ``apply``)."""
        check_flags("ScheduledModifierManager.apply", finalize=finalize)
        if epoch != math.inf:
            raise ValueError(f"apply(epoch={epoch!r}): only the final state (epoch=math.inf) is supported; use "
                             f"modify() to prune during training")
        self.session = self.recipe.oneshot(module, grad_sampler, inplace=True, finalize=finalize)

    def modify(self, module: nn.Module, optimizer: Any, steps_per_epoch: int, wrap_optimizer: bool = True,
               epoch: float | None = None, grad_sampler: GradSampler | Mapping[str, Any] | None = None,
               **kwargs: Any) -> Any:
        """Prepare ``module`` in place for training under the recipe.

        Returns the optimizer wrapped so that ``optimizer.step()`` also prunes (`ScheduledOptimizer`); with
        ``wrap_optimizer=False`` the optimizer unchanged, and the loop calls ``manager.step()`` after it.
        """
        check_flags("ScheduledModifierManager.modify", wrap_optimizer=wrap_optimizer)
        if epoch not in (None, 0, 0.0):
            raise ValueError(f"modify(epoch={epoch!r}): start from epoch 0, or resume with the pruner's "
                             f"state_dict()")
        self.session = self.recipe.attach(module, steps_per_epoch, grad_sampler, inplace=True, optimizer=optimizer)
        return ScheduledOptimizer(optimizer, self.session) if wrap_optimizer else optimizer

    def step(self) -> None:
        """After each optimizer step, when `modify` did not wrap the optimizer."""
        self._session().step()

    def finalize(self, module: nn.Module | None = None) -> nn.Module:
        """Bake the masks (SparseML's ``finalize``); returns the finalized model."""
        return self._session().finalize()

    def _session(self) -> RecipeSession:
        if self.session is None:
            raise RuntimeError("call modify() or apply() first")
        return self.session
