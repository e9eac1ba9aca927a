"""distill: knowledge distillation from one YAML recipe or a few lines of Python.

    import distill
    result = distill.train("hinton-mnist", overrides=["training.epochs=2"])
    print(result.metrics["gap_recovered"])
"""

from distill.config import Recipe, load_recipe
from distill.errors import DistillError
from distill.version import __version__  # noqa: F401  (distill.__version__)

__all__ = ["DistillError", "Recipe", "load_recipe", "train"]


def train(*args, **kwargs):  # noqa: ANN002, ANN003 - a lazy alias of distill.run.train (keeps import light)
    """Run a recipe end to end; see ``distill.run.train``."""
    from distill.run import train as run_train

    return run_train(*args, **kwargs)
