"""pixel-diffusion: train pixel-space diffusion models on a folder of images and sample from them."""

from .models import PRESETS, UNet, UNetConfig, preset
from .pipeline import DiffusionPipeline
from .schedulers import (
    SCHEDULERS,
    DDIMConfig,
    DDIMScheduler,
    DDPMConfig,
    DDPMScheduler,
    NoiseSchedule,
    Scheduler,
    SchedulerConfig,
    get_scheduler,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DiffusionPipeline",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerConfig",
    "UNet",
    "UNetConfig",
    "__version__",
    "get_scheduler",
    "preset",
]
