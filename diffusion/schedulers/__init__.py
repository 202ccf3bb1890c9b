"""Noise schedules and samplers. Notation: see `diffusion.schedulers.base`.

Every scheduler follows one protocol (`set_timesteps`, `timesteps`, `step`, `add_noise`) and keeps
its knobs in its config, so `get_scheduler(name, config)` is all a pipeline needs.
"""

from collections.abc import Mapping
from typing import Any

from diffusion.config import check_choice
from diffusion.schedulers.base import Scheduler, SchedulerOutput, dynamic_threshold, randn_tensor
from diffusion.schedulers.betas import BETA_SCHEDULES, make_betas, rescale_zero_terminal_snr
from diffusion.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerConfig
from diffusion.schedulers.ddim import DDIMConfig, DDIMScheduler
from diffusion.schedulers.ddpm import VARIANCE_TYPES, DDPMConfig, DDPMScheduler
from diffusion.schedulers.schedule import NoiseSchedule

SCHEDULERS: dict[str, type[Scheduler]] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def get_scheduler(name: str, config: SchedulerConfig | Mapping[str, Any] | None = None) -> Scheduler:
    """Build the scheduler registered as `name`.

    Args:
        name: a key of `SCHEDULERS`.
        config: None (defaults), the scheduler's config, or a config dict (ours or diffusers'; keys the
            scheduler does not model are ignored, so one saved dict can build any scheduler).

    Raises:
        ValueError: for an unknown `name`, or invalid settings in a config dict.
        TypeError: for a config object of another scheduler's config class.
    """
    check_choice("scheduler", name, tuple(SCHEDULERS))
    cls = SCHEDULERS[name]
    if config is None or isinstance(config, SchedulerConfig):
        return cls(config)
    return cls.from_dict(config)


__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "SCHEDULERS",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "dynamic_threshold",
    "get_scheduler",
    "make_betas",
    "randn_tensor",
    "rescale_zero_terminal_snr",
]
