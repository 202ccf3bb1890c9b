"""The protocol every sampler follows, and the notation all scheduler modules share.

Names ↔ symbols (the one table; other modules refer here):

| name                   | symbol            | meaning                                                |
|------------------------|-------------------|--------------------------------------------------------|
| `num_train_timesteps`  | T                 | training timesteps, numbered t = 0..T-1                |
| `betas`                | β_t               | variance of q(x_t ∣ x_{t-1}) (Ho 2020, eq. 2)          |
| `alphas`               | α_t = 1 - β_t     |                                                        |
| `alphas_cumprod`       | ᾱ_t = ∏_{s≤t} α_s | q(x_t ∣ x_0) = N(√ᾱ_t·x_0, (1-ᾱ_t)·I) (Ho 2020, eq. 4) |
| `snr`                  | ᾱ_t / (1-ᾱ_t)     | signal-to-noise ratio (Kingma et al. 2021, eq. 2)      |
| `original_samples`     | x_0               | clean data                                             |
| `noise`                | ε ~ N(0, I)       | the noise mixed into x_0                               |
| `sample`               | x_t               | the noisy sample at timestep t                         |
| `model_output`         | ε̂, v̂ or x̂_0       | what the model predicts, per `prediction_type`         |
| `prediction_type`      |                   | `epsilon` (ε), `v_prediction` (v), `sample` (x_0)      |
| velocity               | v                 | √ᾱ_t·ε - √(1-ᾱ_t)·x_0 (Salimans & Ho 2022, sec. 4)     |
| `pred_original_sample` | x̂_0               | the model's estimate of x_0 at this step               |
| `prev_sample`          | x_{t'}            | the sample at the previous inference timestep t' < t   |
| `timesteps`            | t                 | where the model is evaluated, in order (int64, or      |
|                        |                   | float32 for σ-space samplers); t' = -1: final          |
| `num_inference_steps`  | n                 | steps; len(timesteps) = NFE (n, or 2n-1 for Heun)      |
| `eta`                  | η                 | DDIM stochasticity, σ_t(η) (Song et al. 2021, eq. 16)  |
| `variance`             | σ_t²              | variance of the noise added by a step                  |

When inference skips timesteps, "previous" is the previous *inference* timestep t', and the
single-step quantities are the strided ones: α_t = ᾱ_t / ᾱ_{t'} and β_t = 1 - α_t.

σ-space samplers (`diffusion.schedulers.sigmas`) add the variance-exploding view of the same process
(Karras et al. 2022): σ = √((1-ᾱ)/ᾱ), the sample x_t/√ᾱ_t = x_0 + σ·ε, and λ = -log σ (half the
log-SNR, Lu et al. 2022).

The one sampling loop, the same for every sampler (`step` is pure; a multistep history travels in
`state`, and `len(timesteps)` is the number of model evaluations, NFE)::

    scheduler.set_timesteps(n)
    sample, state = scheduler.init_noise_sigma * noise, None
    for t in scheduler.timesteps:
        model_output = model(scheduler.scale_model_input(sample, t), t)
        sample, _, state = scheduler.step(model_output, t, sample, generator, state=state)
"""

import abc
import math
import operator
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch

from diffusion.rng import Generators
from diffusion.schedulers.config import SchedulerConfig
from diffusion.schedulers.schedule import NoiseSchedule, Timesteps

FINAL = -1  # the previous timestep of the last inference step: "no timestep left, x_0"
SchedulerT = TypeVar("SchedulerT", bound="Scheduler")


class SchedulerOutput(NamedTuple):
    """What one `step` returns; both tensors have the shape of the `sample` passed in."""

    prev_sample: torch.Tensor  # x_{t'}: feed it back to the model at the next timestep
    pred_original_sample: torch.Tensor  # x̂_0 after clipping/thresholding, for previews or guidance
    # What the next `step` needs besides its arguments (multistep history, step index), or None for
    # single-step samplers. Pass it back as `step(..., state=output.state)`; `step` never mutates it.
    state: Any = None


def dynamic_threshold(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding of x̂_0 (Saharia et al. 2022, sec. 2.3), as diffusers' `_threshold_sample`.

    Per batch item, s = quantile(|x̂_0|, ratio) clamped to [1, max_value]; x̂_0 is clamped to [-s, s]
    and divided by s. With s = 1 this is plain clipping to [-1, 1]. Computed in at least float32.

    Args:
        sample: x̂_0, shape (b, ...).
        ratio: the quantile, in (0, 1].
        max_value: upper bound on s.

    Returns:
        thresholded x̂_0, shape and dtype of `sample`.
    """
    flat = sample.reshape(sample.shape[0], -1)  # (b, c*h*w)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # quantile needs float32 or float64
    s = torch.quantile(flat.abs(), ratio, dim=1)  # (b,)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)  # (b, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(sample.dtype)


def timestep_as_int(timestep: int | torch.Tensor) -> int:
    """A step's timestep as a Python int; it may be an int or a 0-d / 1-element integer tensor."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1 or timestep.is_floating_point() or timestep.dtype == torch.bool:
            raise ValueError(
                f"timestep must be an int or a 1-element integer tensor, "
                f"got shape {tuple(timestep.shape)} dtype {timestep.dtype}"
            )
        return int(timestep.item())
    try:
        return operator.index(timestep)
    except TypeError:
        raise ValueError(f"timestep must be an int, got {timestep!r}") from None


class Scheduler(abc.ABC):
    """A sampler: `set_timesteps(n)`, then `step` once per entry of `timesteps`; `add_noise` for training.

    Subclasses set `config_class` and implement `step`. `step` and `add_noise` are pure;
    `set_timesteps` is the only method that changes state, and it builds both the timesteps and the
    previous-timestep lookup that `step` uses.

    Attributes:
        config: the settings; a `config_class` instance.
        schedule: the `NoiseSchedule` built from `config`.
    """

    config_class: ClassVar[type[SchedulerConfig]] = SchedulerConfig
    # Model evaluations per step (Heun: 2, a predictor and a corrector); editing needs 1, so that a
    # loop can start, or jump back to, any entry of `timesteps`.
    evaluations_per_step: ClassVar[int] = 1

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if type(config) is not self.config_class:  # a subclass would carry settings this sampler ignores
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config)}")
        self.config = config
        self.schedule = NoiseSchedule(config)
        self._timesteps: torch.Tensor | None = None
        self._previous: dict[int, int] = {}  # timestep -> previous inference timestep (FINAL for the last)
        self._num_inference_steps: int | None = None

    @classmethod
    def from_config(cls: type[SchedulerT], config: SchedulerConfig) -> SchedulerT:
        """Build the scheduler from its config (a `config_class` instance)."""
        return cls(config)

    @classmethod
    def from_dict(cls: type[SchedulerT], d: Mapping[str, Any]) -> SchedulerT:
        """Build the scheduler from a config dict: ours (`config.to_dict()`) or a diffusers one."""
        return cls(cls.config_class.from_dict(d))

    @property
    def timesteps(self) -> torch.Tensor:
        """The inference timesteps, int64, descending, shape (num_inference_steps,)."""
        if self._timesteps is None:
            raise RuntimeError("no timesteps yet: call set_timesteps(num_inference_steps) first")
        return self._timesteps

    @property
    def num_inference_steps(self) -> int | None:
        """n, or None before `set_timesteps`."""
        return self._num_inference_steps

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: 1 for samplers that walk x_t itself."""
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: int | float | torch.Tensor) -> torch.Tensor:
        """The model's input at `timestep` for this sampler's `sample`: `sample` itself, unless the
        sampler walks a rescaled sample (σ-space samplers divide by √(σ²+1) to give back x_t)."""
        return sample

    def initial_state(self, step_index: int) -> Any:
        """The `state` for a loop that starts at entry `step_index` of `timesteps` rather than at the first
        (img2img, or a RePaint jump back): None for samplers that keep no state."""
        return None

    @property
    def stochastic(self) -> bool:
        """Whether `step` adds fresh noise, so that a sample depends on more than its initial noise."""
        return False

    def noise_level(self, step_index: int) -> tuple[float, float]:
        """(α, σ) of the sample this sampler walks before entry `step_index` of `timesteps`: x = α·x_0 + σ·ε.

        ``step_index = len(timesteps)`` is the end of sampling (α = √ᾱ_{t'} of the final step, 1 unless
        ``set_alpha_to_one`` is off). Editing uses it to noise an image to a step's level (img2img,
        inpainting) and to jump back up the grid (RePaint).
        """
        timesteps = self.timesteps
        if step_index == len(timesteps):
            alpha_cumprod = self.final_alpha_cumprod()
        else:
            alpha_cumprod = self.schedule.alphas_cumprod[int(timesteps[step_index])].item()
        return math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the n inference timesteps (see `spaced_timesteps`) and build their previous-timestep lookup.

        Args:
            num_inference_steps: n, in [1, num_train_timesteps].
            device: device of `timesteps`.

        Raises:
            ValueError: if n is out of range, or leading spacing with steps_offset passes T-1.
        """
        as_list = self.spaced_timesteps(num_inference_steps).tolist()
        self._previous = dict(zip(as_list, [*as_list[1:], FINAL], strict=True))
        self._timesteps = torch.tensor(as_list, dtype=torch.int64, device=device)
        self._num_inference_steps = len(as_list)

    def spaced_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The n inference timesteps of `config.timestep_spacing` (Lin et al. 2023, Table 2), int64, descending.

        With T = num_train_timesteps (values as in diffusers):
            leading:  arange(n)·(T // n), reversed, + steps_offset
            trailing: round(arange(T, 0, -T/n)) - 1, which starts at T-1
            linspace: round(linspace(0, T-1, n)), reversed

        Raises:
            ValueError: if n is out of range, or leading spacing with steps_offset passes T-1.
        """
        T = self.config.num_train_timesteps
        try:
            n = operator.index(num_inference_steps)
        except TypeError:
            raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}") from None
        if not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {n}")
        spacing = self.config.timestep_spacing
        if spacing == "leading":
            timesteps = np.arange(n, dtype=np.int64)[::-1] * (T // n) + self.config.steps_offset
        elif spacing == "trailing":
            # np.arange with a float step sometimes returns n + 1 values, the extra one ≈ 0 (-1 after the
            # shift; e.g. T = 1000, n = 61 in diffusers). The first n values are diffusers' values.
            timesteps = np.round(np.arange(T, 0, -T / n)[:n]).astype(np.int64) - 1
        else:
            assert spacing == "linspace", spacing
            timesteps = np.round(np.linspace(0, T - 1, n))[::-1].astype(np.int64)
        if timesteps[0] >= T:
            raise ValueError(
                f"leading spacing with steps_offset={self.config.steps_offset} and num_inference_steps={n} "
                f"gives timestep {timesteps[0]}, past the last training timestep {T - 1}"
            )
        assert len(timesteps) == n and timesteps[-1] >= 0 and (np.diff(timesteps) < 0).all(), timesteps
        return timesteps

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The inference timestep after `timestep`, looked up in the schedule; FINAL (-1) after the last.

        Raises:
            RuntimeError: before `set_timesteps`.
            ValueError: if `timestep` is not one of `timesteps`.
        """
        if self._timesteps is None:
            raise RuntimeError("no timesteps yet: call set_timesteps(num_inference_steps) first")
        t = timestep_as_int(timestep)
        if t not in self._previous:
            first, last = self._timesteps[0].item(), self._timesteps[-1].item()
            raise ValueError(
                f"timestep {t} is not one of the {len(self._previous)} timesteps set by set_timesteps "
                f"({first} ... {last})"
            )
        return self._previous[t]

    def final_alpha_cumprod(self) -> float:
        """ᾱ_{t'} at the final step (t' = FINAL): 1, i.e. the last step lands on x_0."""
        return 1.0

    def _alphas_cumprod_pair(self, timestep: int | torch.Tensor) -> tuple[float, float]:
        """(ᾱ_t, ᾱ_{t'}) in float64, t' looked up; ᾱ_{t'} is `final_alpha_cumprod()` after the last step."""
        timestep = timestep_as_int(timestep)
        prev = self.previous_timestep(timestep)
        alphas_cumprod = self.schedule.alphas_cumprod
        alpha_prod_t_prev = self.final_alpha_cumprod() if prev == FINAL else alphas_cumprod[prev].item()
        return alphas_cumprod[timestep].item(), alpha_prod_t_prev

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Timesteps) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (Ho et al. 2020, eq. 4); see `NoiseSchedule.add_noise`."""
        return self.schedule.add_noise(original_samples, noise, timesteps)

    def _process_pred_original_sample(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (which wins, as in diffusers) or clipping of x̂_0, per the config."""
        config = self.config
        if config.thresholding:
            return dynamic_threshold(pred_original_sample, config.dynamic_thresholding_ratio, config.sample_max_value)
        if config.clip_sample:
            return pred_original_sample.clamp(-config.clip_sample_range, config.clip_sample_range)
        return pred_original_sample

    @staticmethod
    def _check_shapes(model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} differs from sample shape {tuple(sample.shape)}"
            )

    @abc.abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: Any = None,
    ) -> SchedulerOutput:
        """Go from x_t to x_{t'}, the next inference timestep, given the model output at t.

        Args:
            model_output: ε̂, v̂ or x̂_0 per `config.prediction_type`, shape (b, ...).
            timestep: t, one of `timesteps`.
            sample: x_t (or its σ-space form), shape (b, ...).
            generator: source of the step's noise, see `randn_tensor`; unused by deterministic steps.
            state: the previous step's `SchedulerOutput.state`; None at the first step.

        Returns:
            `SchedulerOutput(prev_sample, pred_original_sample, state)`, tensors of shape (b, ...).

        Raises:
            RuntimeError: before `set_timesteps`.
            ValueError: for a timestep not in `timesteps` or mismatched shapes.
        """
