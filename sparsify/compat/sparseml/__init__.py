"""SparseML recipes on the one machine: read (`read_recipe`), translated, and run by `sparsify.Pruner`.

`Recipe` / `RecipeSession` are sparsify's names; `ScheduledModifierManager` is SparseML's entry point, so
moving a training script from SparseML is an import change. See ``docs/recipes.md`` for what each modifier
becomes, and `sparsify.compat.sparseml.reader` for the reading rules.
"""

from ..translate import PassThrough, StepLevelsScheduler, epoch_levels
from .expressions import evaluate_expression, evaluate_recipe
from .reader import read_recipe, read_recipe_data, read_recipe_text
from .recipe import Recipe, RecipeSession, ScheduledModifierManager, ScheduledOptimizer

__all__ = [
    "PassThrough",
    "Recipe",
    "RecipeSession",
    "ScheduledModifierManager",
    "ScheduledOptimizer",
    "StepLevelsScheduler",
    "epoch_levels",
    "evaluate_expression",
    "evaluate_recipe",
    "read_recipe",
    "read_recipe_data",
    "read_recipe_text",
]
