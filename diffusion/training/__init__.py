"""Training: the config, loss, EMA, data order and the accelerate-based loop."""

from .config import TrainConfig
from .trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "Trainer", "TrainingError"]
