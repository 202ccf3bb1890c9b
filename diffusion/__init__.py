"""pixel-diffusion: train pixel-space diffusion models on a folder of images and sample from them."""

from .models import PRESETS, UNet, UNetConfig, preset
from .pipeline import DiffusionPipeline
from .schedulers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    DDIMConfig,
    DDIMScheduler,
    DDPMConfig,
    DDPMScheduler,
    DPMSolverConfig,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunConfig,
    HeunDiscreteScheduler,
    NoiseSchedule,
    Scheduler,
    SchedulerConfig,
    SigmaConfig,
    UniPCConfig,
    UniPCMultistepScheduler,
    get_scheduler,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DPMSolverConfig",
    "DPMSolverMultistepScheduler",
    "DiffusionPipeline",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunConfig",
    "HeunDiscreteScheduler",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerConfig",
    "SigmaConfig",
    "UNet",
    "UNetConfig",
    "UniPCConfig",
    "UniPCMultistepScheduler",
    "__version__",
    "get_scheduler",
    "preset",
]
