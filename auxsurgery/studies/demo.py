"""The end-to-end demo: the built-in recipe ``demo.toml``, run by :func:`~.experiment.run_recipe` like any other.

It is the README's first command (``auxsurgery demo``): no download, no GPU, CPU-sized. The recipe
ships inside the package (``auxsurgery/studies/recipes/demo.toml``, which the repo's
``recipes/demo.toml`` links to), so it runs without the repository checkout.
"""
from __future__ import annotations

from importlib.resources import as_file, files

from ..evaluation import Budget
from .recipe import Recipe, load_recipe

__all__ = ["QUICK", "demo_recipe"]

# The smoke-sized run (seconds): every stage, suite and report, nothing measured seriously.
QUICK = {
    "data.train_subset": 500, "data.held_out": 100, "train.epochs": 1, "attack.n": 16,
    "attack.budget": Budget.quick().to_dict(), "attack.curve.apgd_steps": Budget.quick().apgd_steps,
}


def demo_recipe(quick: bool = False, seed: int | None = None, n: int | None = None) -> Recipe:
    """The demo's recipe; ``quick`` applies :data:`QUICK`, ``seed`` and ``n`` replace ``[recipe] seed`` and
    ``[attack] n``."""
    with as_file(files(__package__) / "recipes" / "demo.toml") as path:
        recipe = load_recipe(path)
    changes = {**(QUICK if quick else {}), **({"recipe.seed": seed} if seed is not None else {}),
               **({"attack.n": n} if n is not None else {})}
    return recipe.changed(changes)
