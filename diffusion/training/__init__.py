"""Training: the config, loss, EMA, data order and the accelerate-based loop."""

from typing import TYPE_CHECKING

from .config import TrainConfig
from .errors import TrainingError

if TYPE_CHECKING:
    from .trainer import Trainer


def __getattr__(name: str) -> object:
    """``Trainer`` is imported on first use: it pulls in accelerate, which sampling never needs."""
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "Trainer", "TrainingError"]
