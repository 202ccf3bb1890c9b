"""The import path of `evaluate` before it moved to `diffusion.metrics.evaluation`; code that imports
``diffusion.evaluation.evaluate`` keeps working."""

from .metrics.evaluation import evaluate

__all__ = ["evaluate"]
