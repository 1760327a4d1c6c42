"""Studies built on training and evaluation: recipes (:mod:`.recipe`) and their runner
(:mod:`.experiment`), the comparison with the paper (:mod:`.comparison`, :mod:`.paper`), the
placement study (:mod:`.placement`) and the demo (:mod:`.demo`)."""
from .experiment import run_recipe
from .recipe import Recipe, RecipeError, load_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "run_recipe"]
