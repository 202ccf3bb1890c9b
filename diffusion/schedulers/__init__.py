"""Noise schedules and samplers. Notation: see `diffusion.schedulers.base`.

Every scheduler follows one protocol (`set_timesteps`, `timesteps`, `init_noise_sigma`,
`scale_model_input`, `step`, `add_noise`) and keeps its knobs in its config, so `get_scheduler(name,
config)` is all a pipeline needs. `SCHEDULERS` maps each name to its class; `ALIASES` names common
settings of one class (DPM-Solver++ 2M / 3M / SDE).
"""

from collections.abc import Mapping
from typing import Any

from diffusion.config import check_choice
from diffusion.rng import randn_tensor
from diffusion.schedulers.base import Scheduler, SchedulerOutput, StepState, dynamic_threshold
from diffusion.schedulers.betas import BETA_SCHEDULES, make_betas, rescale_zero_terminal_snr
from diffusion.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerConfig
from diffusion.schedulers.consistency import ConsistencyScheduler
from diffusion.schedulers.ddim import DDIMConfig, DDIMScheduler
from diffusion.schedulers.ddpm import VARIANCE_TYPES, DDPMConfig, DDPMScheduler
from diffusion.schedulers.dpmsolver import DPMSolverConfig, DPMSolverMultistepScheduler
from diffusion.schedulers.euler import EulerDiscreteScheduler
from diffusion.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from diffusion.schedulers.heun import HeunConfig, HeunDiscreteScheduler
from diffusion.schedulers.schedule import NoiseSchedule
from diffusion.schedulers.sigmas import SigmaConfig, SigmaScheduler
from diffusion.schedulers.unipc import UniPCConfig, UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "consistency": ConsistencyScheduler,
}
# Names for common settings of one scheduler: name -> (registered name, config fields it sets).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmsolver++2m": ("dpmsolver++", {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    "dpmsolver++3m": ("dpmsolver++", {"solver_order": 3, "algorithm_type": "dpmsolver++"}),
    "dpmsolver++2m-sde": ("dpmsolver++", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "dpmsolver++3m-sde": ("dpmsolver++", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
}
SCHEDULER_NAMES: tuple[str, ...] = (*SCHEDULERS, *ALIASES)


# Default sampler steps: at 20, DPM-Solver++ 3M SDE (the default sampler of the models we train) has the
# best quality of any sampler for its 20 model evaluations (docs/benchmarks.md, "Quality against sampling cost").
DEFAULT_STEPS = 20


def registered_name(scheduler: Scheduler) -> str:
    """The name `SCHEDULERS` registers ``scheduler``'s class under, or its class name if unregistered."""
    return next((name for name, cls in SCHEDULERS.items() if type(scheduler) is cls), type(scheduler).__name__)


def scheduler_name(scheduler: Scheduler) -> str:
    """The name of ``scheduler``: the alias its settings match, such as ``"dpmsolver++2m-sde"``, else its
    registered name."""
    name = registered_name(scheduler)
    settings = scheduler.config.to_dict()
    for alias, (base, fields) in ALIASES.items():
        if base == name and all(settings[k] == v for k, v in fields.items()):
            return alias
    return name


def resolve_scheduler_name(name: str) -> tuple[str, dict[str, Any]]:
    """(registered name, config fields) for a name of `SCHEDULER_NAMES`.

    Raises:
        ValueError: for an unknown name.
    """
    check_choice("scheduler", name, SCHEDULER_NAMES)
    return ALIASES.get(name, (name, {}))


def get_scheduler(name: str, config: SchedulerConfig | Mapping[str, Any] | None = None) -> Scheduler:
    """Build the scheduler called `name` (a key of `SCHEDULERS` or `ALIASES`).

    Args:
        name: one of `SCHEDULER_NAMES`; an alias's fields override those of `config`.
        config: None (defaults), the scheduler's config, or a config dict (ours or diffusers'; keys the
            scheduler does not model are ignored, so one saved dict can build any scheduler).

    Raises:
        ValueError: for an unknown `name`, or invalid settings in a config dict.
        TypeError: for a config object of another scheduler's config class.
    """
    name, fields = resolve_scheduler_name(name)
    cls = SCHEDULERS[name]
    if fields:
        config = {} if config is None else config.to_dict() if isinstance(config, SchedulerConfig) else config
        return cls.from_dict({**config, **fields})
    if config is None or isinstance(config, SchedulerConfig):
        return cls(config)
    return cls.from_dict(config)


__all__ = [
    "ALIASES",
    "BETA_SCHEDULES",
    "DEFAULT_STEPS",
    "PREDICTION_TYPES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "ConsistencyScheduler",
    "DDIMConfig",
    "DDIMScheduler",
    "DDPMConfig",
    "DDPMScheduler",
    "DPMSolverConfig",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunConfig",
    "HeunDiscreteScheduler",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SigmaConfig",
    "SigmaScheduler",
    "StepState",
    "UniPCConfig",
    "UniPCMultistepScheduler",
    "dynamic_threshold",
    "get_scheduler",
    "make_betas",
    "randn_tensor",
    "registered_name",
    "rescale_zero_terminal_snr",
    "resolve_scheduler_name",
    "scheduler_name",
]
