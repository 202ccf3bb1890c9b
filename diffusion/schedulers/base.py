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

`set_timesteps` builds the grid once: `timesteps`, and for each entry i its coefficients
`coefficients[i]`, computed in float64 (as improved-diffusion computes its tables once). `step` finds
i with `step_index` (the one timestep check) and writes its update with them, citing the equation.

The one sampling loop, the same for every sampler (`step` is pure; a multistep history travels in
`state`, and `len(timesteps)` is the number of model evaluations, NFE)::

    scheduler.set_timesteps(n)
    sample, state = scheduler.init_noise_sigma * noise, None
    for t in scheduler.timesteps:
        model_output = model(scheduler.scale_model_input(sample, t), t)
        sample, _, state = scheduler.step(model_output, t, sample, generator, state=state)
"""

import abc
import dataclasses
import itertools
import math
import numbers
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
_GRIDS = itertools.count()  # a fresh token per set_timesteps call, so that a state names its grid


class SchedulerOutput(NamedTuple):
    """What one `step` returns; both tensors have the shape of the `sample` passed in."""

    prev_sample: torch.Tensor  # x_{t'}: feed it back to the model at the next timestep
    pred_original_sample: torch.Tensor  # x̂_0 after clipping/thresholding, for previews or guidance
    # What the next `step` needs besides its arguments (multistep history, step index), or None for
    # single-step samplers. Pass it back as `step(..., state=output.state)`; `step` never mutates it.
    state: Any = None


@dataclasses.dataclass(frozen=True)
class StepState:
    """The state a sampler that walks its grid by index passes from one `step` to the next.

    Attributes:
        grid: the token of the `set_timesteps` call that made the grid; a state is valid only there.
        step_index: index into `timesteps` of the step that *receives* this state.
        history: what earlier steps left, most recent last (x̂_0 predictions of multistep solvers, ...).
        extra: sampler-specific values (e.g. Heun's pending derivative), keyed by name.
    """

    grid: int
    step_index: int
    history: tuple[torch.Tensor, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        """The `extra` value called `name`, or None."""
        return dict(self.extra).get(name)


@dataclasses.dataclass(frozen=True, slots=True)
class VPStep:
    """One step of a sampler on integer timesteps, from t to the previous inference timestep t' (float64).

    DDIM and DDPM extend it with the weights of their updates.
    """

    timestep: int  # t
    prev_timestep: int  # t', FINAL after the last step
    alpha_prod_t: float  # ᾱ_t
    alpha_prod_t_prev: float  # ᾱ_{t'}; `final_alpha_cumprod()` at t' = FINAL


def trailing_timesteps(num_train_timesteps: int, n: int) -> np.ndarray:
    """The "trailing" spacing's n timesteps, from T - 1 down: round(arange(T, 0, -T/n)) - 1, as diffusers."""
    # np.arange with a float step sometimes returns n + 1 values, the extra one ≈ 0 (-1 after the shift; e.g.
    # T = 1000, n = 61 in diffusers). The first n values are diffusers' values.
    T = num_train_timesteps
    return np.round(np.arange(T, 0, -T / n)[:n]).astype(np.int64) - 1


def dynamic_threshold(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding of x̂_0 (Saharia et al. 2022, sec. 2.3), as diffusers' `_threshold_sample`.

    `sample` is x̂_0, shape (b, ...); `ratio`, the quantile, is in (0, 1]; `max_value` bounds the threshold.
    Returns the thresholded x̂_0, with the shape and dtype of `sample`.
    """
    flat = sample.reshape(sample.shape[0], -1)  # (b, c*h*w)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # quantile needs float32 or float64
    s = torch.quantile(flat.abs(), ratio, dim=1)  # (b,) s = quantile(|x̂_0|, ratio) per batch item
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)  # (b, 1) s ∈ [1, max_value]; s = 1 is clipping to [-1, 1]
    return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(sample.dtype)  # x̂_0 clamped to [-s, s], over s


class Scheduler(abc.ABC):
    """A sampler: `set_timesteps(n)`, then `step` once per entry of `timesteps`; `add_noise` for training.

    Subclasses set `config_class` and implement `step`, and `_step_coefficients` where their update has
    coefficients. `step` and `add_noise` are pure; `set_timesteps` is the only method that changes state,
    and it builds the timesteps, their index and the per-step coefficients that `step` reads.

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
        self._num_inference_steps: int | None = None
        self._timesteps: torch.Tensor | None = None
        self._timestep_list: list[int | float] = []  # `timesteps` on the host: no device sync per step
        self._step_of: dict[int | float, int] = {}  # timestep -> index of its first entry in `timesteps`
        self._coefficients: tuple[Any, ...] | None = None
        self._grid = -1  # token of the current grid, see `StepState.grid`
        self._vp_level_table: torch.Tensor | None = None  # (√ᾱ_t, √(1-ᾱ_t)) per step, float64, (n, 2)
        self._vp_levels_cast: dict[tuple[torch.dtype, torch.device], list[tuple[torch.Tensor, ...]]] = {}

    @classmethod
    def from_config(cls: type[SchedulerT], config: SchedulerConfig) -> SchedulerT:
        """Build the scheduler from its config (a `config_class` instance)."""
        return cls(config)

    @classmethod
    def from_dict(cls: type[SchedulerT], d: Mapping[str, Any]) -> SchedulerT:
        """Build the scheduler from a config dict: ours (`config.to_dict()`) or a diffusers one."""
        return cls(cls.config_class.from_dict(d))

    @staticmethod
    def _built(value: Any) -> Any:
        """`value`, an attribute `set_timesteps` builds; the one error for reading it before."""
        if value is None:
            raise RuntimeError("no timesteps yet: call set_timesteps(num_inference_steps) first")
        return value

    @property
    def timesteps(self) -> torch.Tensor:
        """The inference timesteps, int64, descending, shape (num_inference_steps,)."""
        return self._built(self._timesteps)

    @property
    def coefficients(self) -> tuple[Any, ...]:
        """What `step` reads for entry i of `timesteps`, built once by `set_timesteps` in float64."""
        return self._built(self._coefficients)  # a VPStep (DDIM, DDPM), a solver's record, or None (Euler, Heun)

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
        coefficients = self.coefficients
        if step_index == len(coefficients):
            alpha_cumprod = self.final_alpha_cumprod()
        else:
            alpha_cumprod = coefficients[step_index].alpha_prod_t
        return math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the n inference timesteps (see `spaced_timesteps`) and build each step's coefficients.

        Args:
            num_inference_steps: n, in [1, num_train_timesteps].
            device: device of `timesteps`.

        Raises:
            ValueError: if n is out of range, or leading spacing with steps_offset passes T-1.
        """
        timesteps = torch.tensor(self.spaced_timesteps(num_inference_steps).tolist(), dtype=torch.int64)  # (n,)
        # x̂_0 and ε̂ take √ᾱ_t and √(1-ᾱ_t) as tensors in the sample's dtype, as `NoiseSchedule` applies
        # them, so that a step gives the same bits as its methods (a Python float rounds differently).
        schedule = self.schedule
        levels = [schedule._sqrt_alphas_cumprod[timesteps], schedule._sqrt_one_minus_alphas_cumprod[timesteps]]
        self._vp_level_table = torch.stack(levels, dim=1)  # (n, 2)
        self._vp_levels_cast = {}
        self._set_grid(timesteps, device, num_inference_steps)

    def _set_grid(self, timesteps: torch.Tensor, device: str | torch.device | None, num_inference_steps: int) -> None:
        """Install `timesteps` (on the host; the entries `step` is called at), their index and each step's
        coefficients."""
        self._timesteps = timesteps.to(device)
        self._timestep_list = timesteps.tolist()
        self._step_of = {}
        for index, t in enumerate(self._timestep_list):
            self._step_of.setdefault(t, index)  # a repeated timestep (Heun) is looked up by `state`
        self._num_inference_steps = num_inference_steps
        self._grid = next(_GRIDS)
        self._coefficients = tuple(self._step_coefficients(index) for index in range(len(self._timestep_list)))

    def _step_coefficients(self, index: int) -> Any:
        """The coefficients of step `index` (see `coefficients`); here t, t', ᾱ_t and ᾱ_{t'}."""
        timesteps = self._timestep_list
        t, prev = timesteps[index], timesteps[index + 1] if index + 1 < len(timesteps) else FINAL
        alphas_cumprod = self.schedule.alphas_cumprod
        alpha_prod_t_prev = self.final_alpha_cumprod() if prev == FINAL else alphas_cumprod[prev].item()
        return VPStep(t, prev, alphas_cumprod[t].item(), alpha_prod_t_prev)

    def _vp_levels(self, like: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """(√ᾱ_t, √(1-ᾱ_t)) of each step as 0-d tensors in `like`'s dtype, on its device; cast once per grid.

        Raises:
            ValueError: for a non-float `like`.
        """
        key = (like.dtype, like.device)
        if key not in self._vp_levels_cast:
            if not like.is_floating_point():
                raise ValueError(f"samples must be a floating-point tensor, got dtype {like.dtype}")
            # Cast, then move: some devices lack float64. Indexing the rows later copies nothing. The cache
            # outlives the call that builds it (often under inference mode), so it holds ordinary tensors
            # that a later step with autograd may use.
            with torch.inference_mode(False):
                table = self._vp_level_table.to(dtype=like.dtype).to(device=like.device)  # (n, 2)
                self._vp_levels_cast[key] = [tuple(row) for row in table]
        return self._vp_levels_cast[key]

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
            timesteps = trailing_timesteps(T, n)
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

    def step_index(self, timestep: int | float | torch.Tensor, state: StepState | None = None) -> int:
        """The index in `timesteps` of the step at `timestep`: the one check of a step's timestep.

        `timestep` is an int or a 1-element integer tensor, or for a float grid (σ-space samplers with
        fractional timesteps) any number, compared as float32. A sampler that walks its grid by index
        passes its `state`, which names the entry (a timestep may repeat, as in Heun's grid); without
        one, the first entry equal to `timestep`.

        Raises:
            RuntimeError: before `set_timesteps`.
            ValueError: for a timestep of the wrong type or not in `timesteps`, or a `state` of another
                grid or for another step.
        """
        if not isinstance(timestep, numbers.Real | torch.Tensor):
            raise ValueError(f"timestep must be an int, got {timestep!r}")  # a wrong type comes first
        timesteps = self.timesteps
        if timesteps.is_floating_point():
            if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
                raise ValueError(f"timestep must have one element, got shape {tuple(timestep.shape)}")
            key = float(timestep.float().item() if isinstance(timestep, torch.Tensor) else np.float32(timestep))
        elif isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1 or timestep.is_floating_point() or timestep.dtype == torch.bool:
                raise ValueError(
                    f"timestep must be an int or a 1-element integer tensor, "
                    f"got shape {tuple(timestep.shape)} dtype {timestep.dtype}"
                )
            key = int(timestep.item())
        else:
            try:
                key = operator.index(timestep)
            except TypeError:
                raise ValueError(f"timestep must be an int, got {timestep!r}") from None
        as_list = self._timestep_list
        if state is None:
            if key not in self._step_of:
                raise ValueError(
                    f"timestep {key} is not one of the {len(as_list)} timesteps set by set_timesteps "
                    f"({as_list[0]} ... {as_list[-1]})"
                )
            return self._step_of[key]
        if not isinstance(state, StepState):
            raise ValueError(f"state must be the previous step's SchedulerOutput.state, got {type(state).__name__}")
        if state.grid != self._grid:
            raise ValueError(
                "state comes from another scheduler or an earlier set_timesteps call; start each sampling "
                "loop with state=None"
            )
        index = state.step_index
        if index >= len(as_list) or as_list[index] != key:
            expected = as_list[index] if index < len(as_list) else "none (all steps done)"
            raise ValueError(f"state expects timestep {expected} at step {index}, got {key}")
        return index

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The inference timestep after `timestep`, FINAL (-1) after the last; raises as `step_index`."""
        return self.coefficients[self.step_index(timestep)].prev_timestep

    def final_alpha_cumprod(self) -> float:
        """ᾱ_{t'} at the final step (t' = FINAL): 1, i.e. the last step lands on x_0."""
        return 1.0

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
