"""An alias module: ``from diffusion.evaluation import evaluate`` imports
`diffusion.metrics.evaluation.evaluate`."""

from .metrics.evaluation import evaluate

__all__ = ["evaluate"]
