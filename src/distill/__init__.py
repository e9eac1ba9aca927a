"""distill: knowledge distillation from one YAML recipe or a few lines of Python."""

__version__ = "0.1.0"
