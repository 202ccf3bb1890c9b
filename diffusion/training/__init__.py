"""Training, one concept per module, lowest first:

- `config`: `TrainConfig`, checked once where it enters, and what derives from it (UNet config, noise
  schedule, run length, learning-rate schedule);
- `loss`: `training_loss`, the whole objective as one pure function;
- `ema`, `sampler`: the fp32 weight average, and the data order as a function of the step;
- `checkpointing`: what a checkpoint restores (`RunState`) and when a run may continue from one;
- `outputs`, `report`, `plot`, `safety`: what a run writes into its folder and says about itself, and
  how it stops without losing work;
- `trainer`: `Trainer`, the loop that puts them together on accelerate (the only module importing it).
"""

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
