"""`SchedulerConfig`: the settings every scheduler shares, saved as JSON beside the weights.

Field names equal diffusers' where they overlap, so that a diffusers `scheduler_config.json` loads with
`from_dict`. The mapping (defaults in parentheses):

| diffusers                           | ours                            | note                            |
|-------------------------------------|---------------------------------|---------------------------------|
| `beta_schedule="squaredcos_cap_v2"` | `beta_schedule="cosine"`        | renamed; other names equal      |
| `timestep_spacing` (see below)      | `timestep_spacing` ("trailing") | missing key: diffusers' default |
| `clip_sample` (see below)           | `clip_sample` (False)           | missing key: diffusers' default |
| `trained_betas`                     | -                               | must be null, else ValueError   |
| `variance_type` (DDPM)              | `DDPMConfig.variance_type`      | fixed_small, fixed_large only   |
| `_class_name`, `_diffusers_version` | -                               | ignored                         |
| keys no field models                | -                               | ignored (logged)                |

A key missing from a diffusers dict means the default of the dict's diffusers class (its
``_class_name``); `_DIFFUSERS_DEFAULTS` lists, per class, where those differ from ours:

| diffusers class                                                | missing key means                     |
|----------------------------------------------------------------|---------------------------------------|
| DDPMScheduler, DDIMScheduler                                   | "leading", `clip_sample=True`         |
| DPMSolverMultistepScheduler, UniPCMultistepScheduler           | "linspace", no clipping (no such key) |
| EulerDiscreteScheduler, EulerAncestralDiscreteScheduler        | "linspace", no clipping (no such key) |
| HeunDiscreteScheduler                                          | as Euler; betas from 0.00085 to 0.012 |
| any other class (PNDM, LMS, DEIS, KDPM2, ...), or none         | our defaults: only what the dict says |

Another class's defaults are not guessed: diffusers' classes share no default spacing, and a class
without `clip_sample` never clips, so such a dict gets ours ("trailing", no clipping) for what it lacks.

The other fields (`num_train_timesteps`, `beta_start`, `beta_end`, `rescale_betas_zero_snr`,
`prediction_type`, `steps_offset`, `clip_sample_range`, `thresholding`, `dynamic_thresholding_ratio`,
`sample_max_value`, DDIM's `set_alpha_to_one`, the solvers' `solver_order`, `solver_type`,
`use_karras_sigmas`, ...) have the same names, meanings and defaults as in diffusers but for those
listed; `tests/schedulers/test_scheduler_config.py` checks the table against diffusers' classes. One
meaning differs: diffusers' multistep schedulers (DPM-Solver++, UniPC) space "linspace" and "leading"
over n + 1 points and drop the last, ours over n as every other scheduler (`Scheduler.spaced_timesteps`),
so only "trailing" (or Karras σs) gives them diffusers' timesteps; `diffusion.io.diffusers_folder` warns on import.
"""

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from diffusion.config import check_choice
from diffusion.io.files import read_json, write_json
from diffusion.schedulers.betas import BETA_SCHEDULES, BetaScheduleName

logger = logging.getLogger(__name__)

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
TimestepSpacing = Literal["leading", "trailing", "linspace"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)

# diffusers' spellings of our names, applied by `from_dict`.
_DIFFUSERS_BETA_SCHEDULE_NAMES = {"squaredcos_cap_v2": "cosine"}
# diffusers' defaults where they differ from ours, per diffusers class: a diffusers dict of that class
# that lacks the key meant these. Only keys the class has; a class without `clip_sample` never clips.
# A class not listed gets none: its missing keys take ours.
_DIFFUSERS_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {"timestep_spacing": "leading", "clip_sample": True},
    "DDIMScheduler": {"timestep_spacing": "leading", "clip_sample": True},
    "DPMSolverMultistepScheduler": {"timestep_spacing": "linspace"},
    "UniPCMultistepScheduler": {"timestep_spacing": "linspace"},
    "EulerDiscreteScheduler": {"timestep_spacing": "linspace"},
    "EulerAncestralDiscreteScheduler": {"timestep_spacing": "linspace"},
    "HeunDiscreteScheduler": {"timestep_spacing": "linspace", "beta_start": 0.00085, "beta_end": 0.012},
}
# diffusers keys we do not model but can honour only at one value.
_DIFFUSERS_REQUIRED_VALUES: dict[str, Any] = {"trained_betas": None}

ConfigT = TypeVar("ConfigT", bound="SchedulerConfig")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Settings shared by all schedulers; subclasses add their own knobs (eta, variance type, ...).

    Raises:
        ValueError: from `__post_init__` when a value is out of range or not an allowed choice.
    """

    # Noise schedule.
    num_train_timesteps: int = 1000  # T: timesteps 0..T-1 were seen in training
    beta_start: float = 1e-4  # β of timestep 0 (linear, scaled_linear, sigmoid; Ho et al. 2020)
    beta_end: float = 0.02  # β of timestep T-1 (linear, scaled_linear, sigmoid)
    beta_schedule: BetaScheduleName = "linear"  # how β_t goes from beta_start to beta_end; see betas.py
    rescale_betas_zero_snr: bool = False  # make ᾱ_{T-1} = 0 (Lin et al. 2023); pair with v_prediction
    # What the model predicts: ε (Ho et al. 2020), v = √ᾱ·ε - √(1-ᾱ)·x0 (Salimans & Ho 2022), or x0.
    prediction_type: PredictionType = "epsilon"
    # Inference timesteps (Lin et al. 2023, Table 2). trailing starts at T-1, the others may not.
    timestep_spacing: TimestepSpacing = "trailing"
    steps_offset: int = 0  # added to every "leading" timestep (as diffusers does); other spacings ignore it
    # Processing of the predicted x0 at each step; thresholding wins when both are on, as in diffusers.
    clip_sample: bool = False  # clamp x̂0 to [-clip_sample_range, clip_sample_range]
    clip_sample_range: float = 1.0  # bound used by clip_sample
    thresholding: bool = False  # dynamic thresholding of x̂0 (Saharia et al. 2022, sec. 2.3)
    dynamic_thresholding_ratio: float = 0.995  # percentile of |x̂0| that sets the threshold s
    sample_max_value: float = 1.0  # upper bound on the threshold s (its lower bound is 1)

    def __post_init__(self) -> None:
        check_choice("beta schedule", self.beta_schedule, BETA_SCHEDULES)
        check_choice("prediction type", self.prediction_type, PREDICTION_TYPES)
        check_choice("timestep spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        for name in ("num_train_timesteps", "steps_offset"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"expected 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset must be >= 0, got {self.steps_offset}")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
        if not 0 < self.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {self.dynamic_thresholding_ratio}")
        if self.sample_max_value <= 0:
            raise ValueError(f"sample_max_value must be > 0, got {self.sample_max_value}")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict; `from_dict` of it gives back an equal config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[ConfigT], d: Mapping[str, Any]) -> ConfigT:
        """Build a config from `to_dict` output or from a diffusers scheduler config dict.

        A dict with keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) is taken to
        come from diffusers: its missing keys mean the defaults of its diffusers class (``_class_name``),
        not ours, for the classes the module docstring lists, and those ``_`` keys are ignored. Keys no
        field models are ignored; see the module docstring for the mapping.

        Raises:
            ValueError: for a diffusers setting we cannot honour (e.g. `trained_betas` not null) or
                any invalid field value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        from_diffusers = any(key.startswith("_") for key in d)
        kwargs: dict[str, Any] = {}
        if from_diffusers:
            defaults = _DIFFUSERS_DEFAULTS.get(str(d.get("_class_name")), {})  # another class: none guessed
            kwargs.update({k: v for k, v in defaults.items() if k in names})
        for key, value in d.items():
            if key in names:
                kwargs[key] = value
            elif key in _DIFFUSERS_REQUIRED_VALUES:
                if value != _DIFFUSERS_REQUIRED_VALUES[key]:
                    raise ValueError(
                        f"cannot honour the diffusers setting {key}={value!r}; "
                        f"only {key}={_DIFFUSERS_REQUIRED_VALUES[key]!r} is supported"
                    )
            elif not key.startswith("_"):
                # A diffusers dict holds many keys we do not model; `diffusion.io.diffusers_folder` refuses one
                # whose value differs from what we implement, so they are not news. A key in one of ours may be a typo.
                level = logging.DEBUG if from_diffusers else logging.INFO
                logger.log(level, "%s.from_dict ignores the key %r", cls.__name__, key)
        if "beta_schedule" in kwargs:
            name = kwargs["beta_schedule"]
            kwargs["beta_schedule"] = _DIFFUSERS_BETA_SCHEDULE_NAMES.get(name, name)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON to `path` (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Read a config `save` wrote, or a diffusers `scheduler_config.json`; FileNotFoundError, ValueError."""
        return cls.from_dict(read_json(path))  # FileNotFoundError: no file; ValueError: bad JSON or settings
