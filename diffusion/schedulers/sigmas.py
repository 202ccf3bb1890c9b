"""The σ grid that fast samplers walk, and the base class of those samplers. Notation: `diffusion.schedulers.base`.

A discrete VP schedule (ᾱ_t, t = 0..T-1) is also a variance-exploding one (Karras et al. 2022, sec. 2 and
Table 1): σ_t = √((1-ᾱ_t)/ᾱ_t), with x_t/√ᾱ_t = x_0 + σ_t·ε. Inference walks n + 1 noise levels
σ_0 > ... > σ_{n-1} > σ_n = 0, where the model is evaluated at the first n. They are either the σ of the
spaced timesteps (`Scheduler.spaced_timesteps`), or Karras et al.'s spacing (eq. 5, ρ = 7) between the
smallest and largest σ the model was trained on, with each σ mapped back to a fractional timestep by
interpolating log σ (as k-diffusion and diffusers do).

Two kinds of sampler share the grid:

- exponential integrators (DPM-Solver++, UniPC) step the VP sample x_t itself, using α_t = 1/√(σ²+1),
  σ_t = σ·α_t and λ_t = log(α_t/σ_t) = -log σ;
- Karras-style ODE/SDE solvers (Euler, Heun) step the VE sample x_t/√ᾱ_t. Their initial noise has
  std √(σ_0² + 1) and the model sees x/√(σ²+1) = x_t (`init_noise_sigma`, `scale_model_input`).

Differences from diffusers, on purpose: the Karras range is always the model's full range [σ(0), σ(T-1)]
(diffusers' Euler and Heun use the ends of the spaced grid instead unless `sigma_min`/`sigma_max` are
set); the initial noise of VE samplers is √(σ_0² + 1) for every spacing (diffusers uses σ_0 for
"linspace" and "trailing"); and DPM-Solver++/UniPC share the base's timestep spacing, which equals
diffusers' for "trailing" (our default) but not for "linspace" or "leading", where diffusers' multistep
schedulers space n + 1 points and drop the last.
"""

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion.schedulers.base import Scheduler, StepState
from diffusion.schedulers.config import SchedulerConfig
from diffusion.schedulers.schedule import Timesteps, pred_original_sample

KARRAS_RHO = 7.0  # ρ of Karras et al. 2022, eq. 5 (the paper's choice for every data set)
MIN_ALPHA_CUMPROD = 2.0**-24  # ᾱ floor, so that a zero-terminal-SNR schedule has a finite σ_{T-1} (as diffusers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SigmaConfig(SchedulerConfig):
    """`SchedulerConfig` plus the choice of σ grid."""

    # σ_i spaced as in Karras et al. 2022, eq. 5 (ρ = 7) between the model's smallest and largest σ,
    # instead of the σ of the spaced timesteps; `timestep_spacing` is then unused.
    use_karras_sigmas: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.use_karras_sigmas, bool):
            raise ValueError(f"use_karras_sigmas must be true or false, got {self.use_karras_sigmas!r}")


def check_solver_order(order: object) -> None:
    """Raise ValueError unless `order` is 1, 2 or 3, the orders of DPM-Solver++ and UniPC (no bools, no floats)."""
    if type(order) is not int or order not in (1, 2, 3):  # `type`, not isinstance: True is an int
        raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")


def training_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """σ_t = √((1-ᾱ_t)/ᾱ_t) for t = 0..T-1, float64, ascending; ᾱ is floored at 2^-24 (zero terminal SNR)."""
    alphas_cumprod = alphas_cumprod.double().clamp(min=MIN_ALPHA_CUMPROD).numpy()
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)  # (T,)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """n noise levels from sigma_max down to sigma_min, Karras et al. 2022, eq. 5:
    σ_i = (σ_max^{1/ρ} + i/(n-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ. A single level is sigma_max."""
    ramp = np.linspace(0, 1, n)  # (n,)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_timestep(sigmas: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Fractional timesteps in [0, T-1], float64 (n,), of `sigmas` (n,), given `table` = σ_t (T,), increasing."""
    log_table = np.log(table)  # (T,)
    # t linear in log σ between table entries (as k-diffusion, diffusers); np.interp maps σ outside to 0 or T-1
    return np.interp(np.log(np.maximum(sigmas, 1e-10)), log_table, np.arange(len(table), dtype=np.float64))


def vp_coefficients(sigma: float) -> tuple[float, float, float]:
    """(α_t, σ_t, λ_t) of the VP process at VE noise level σ: 1/√(σ²+1), σ/√(σ²+1), -log σ (λ = +inf at σ = 0)."""
    alpha = 1 / math.sqrt(sigma**2 + 1)
    return alpha, sigma * alpha, (math.inf if sigma == 0 else -math.log(sigma))


class SigmaScheduler(Scheduler):
    """Base of samplers that walk the σ grid; `set_timesteps` builds `timesteps` and `sigmas` together.

    Subclasses choose `ve_sample` (True: they step the VE sample x_t/√ᾱ_t and rescale the model input)
    and `round_timesteps` (True: fractional Karras timesteps are rounded to integers for the model).

    Attributes (after `set_timesteps`):
        timesteps: where the model is evaluated, shape (NFE,): int64 when `round_timesteps`, else
            float32 (possibly fractional), as diffusers gives them.
        sigmas: the σ of each entry of `timesteps` followed by the final σ = 0, float64, shape (NFE + 1,).
    """

    config_class: ClassVar[type[SchedulerConfig]] = SigmaConfig
    config: SigmaConfig
    ve_sample: ClassVar[bool] = False
    round_timesteps: ClassVar[bool] = True

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        super().__init__(config)
        self._sigmas: np.ndarray | None = None

    @property
    def sigmas(self) -> np.ndarray:
        """σ of each inference timestep, then 0; float64, shape (len(timesteps) + 1,)."""
        return self._built(self._sigmas)

    def sigma_grid(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The n noise levels and their (possibly fractional) timesteps, both float64, shape (n,).

        Raises:
            ValueError: for n out of range (see `spaced_timesteps`).
        """
        timesteps = self.spaced_timesteps(num_inference_steps).astype(np.float64)  # validates n
        table = training_sigmas(self.schedule.alphas_cumprod)  # (T,)
        if not self.config.use_karras_sigmas:
            return table[timesteps.astype(np.int64)], timesteps
        sigmas = karras_sigmas(table[0], table[-1], len(timesteps))
        return sigmas, sigma_to_timestep(sigmas, table)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the σ grid (`sigma_grid`), then `timesteps` and `sigmas` from it (see `build_grid`).

        Raises:
            ValueError: for n out of range (see `spaced_timesteps`).
        """
        sigmas, timesteps = self.sigma_grid(num_inference_steps)
        if self.round_timesteps:
            timesteps = np.round(timesteps)
        sigmas, timesteps = self.build_grid(sigmas, timesteps)
        dtype = torch.int64 if self.round_timesteps else torch.float32
        self._sigmas = np.append(sigmas, 0.0)  # σ_n = 0: the last step lands on x̂_0
        self._set_grid(torch.tensor(timesteps, dtype=dtype), device, num_inference_steps)
        if self.ve_sample:  # fractional timesteps: distinct σ have distinct t (rounding could merge them)
            steps = enumerate(self._timestep_list)
            assert all(sigmas[self._step_of[t]] == sigmas[i] for i, t in steps), "one timestep, two noise levels"

    def _step_coefficients(self, index: int) -> Any:
        return None  # the step reads `sigmas` alone; solvers with more coefficients build their own

    def build_grid(self, sigmas: np.ndarray, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the model is evaluated, from the n noise levels: (sigmas, timesteps), float64, same length."""
        return sigmas, timesteps  # once per level; a sampler that evaluates more per level (Heun) overrides this

    @property
    def init_noise_sigma(self) -> float:
        """√(σ_0² + 1) for VE samplers (x_T/√ᾱ_T has variance σ_0² + Var(x_0) ≈ σ_0² + 1), else 1."""
        return math.sqrt(self.sigmas[0] ** 2 + 1) if self.ve_sample else 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: int | float | torch.Tensor) -> torch.Tensor:
        """The model's input x_t: `sample` rescaled for VE samplers, else itself; raises as `sigma_of`."""
        if not self.ve_sample:
            return sample
        return sample / math.sqrt(self.sigma_of(timestep) ** 2 + 1)  # x_t = x/√(σ²+1), σ of `timestep`

    def sigma_of(self, timestep: int | float | torch.Tensor) -> float:
        """σ at `timestep`'s first entry; RuntimeError before `set_timesteps`, ValueError if not in `timesteps`."""
        return float(self.sigmas[self.step_index(timestep)])

    def initial_state(self, step_index: int) -> StepState:
        """A state naming entry `step_index` of this grid, with no history; see `Scheduler.initial_state`."""
        return self._state(step_index)  # no history: multistep solvers warm up again from this entry

    def noise_level(self, step_index: int) -> tuple[float, float]:
        """(α, σ) of the walked sample before entry `step_index`, from the σ grid: (1, σ_i) for VE samplers,
        the VP coefficients of σ_i otherwise; see `Scheduler.noise_level`."""
        sigma = float(self.sigmas[step_index])
        if self.ve_sample:
            return 1.0, sigma
        alpha_t, sigma_t, _ = vp_coefficients(sigma)
        return alpha_t, sigma_t

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """Not defined on a σ grid, where a timestep may repeat (Heun) or be fractional: use `sigmas`."""
        raise NotImplementedError(
            f"{type(self).__name__} steps by index along its σ grid: use sigmas[i + 1], not previous_timestep"
        )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Timesteps) -> torch.Tensor:
        """The sample this sampler walks at integer `timesteps`: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε for VP
        samplers, x_t/√ᾱ_t = x_0 + σ_t·ε for VE ones (e.g. to start sampling from a noised image)."""
        noisy = self.schedule.add_noise(original_samples, noise, timesteps)
        if not self.ve_sample:
            return noisy
        alphas_cumprod = self.schedule.alphas_cumprod.clamp(min=MIN_ALPHA_CUMPROD)
        return noisy / self.schedule._gather(alphas_cumprod.sqrt(), timesteps, original_samples)

    def _ve_pred_original_sample(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """x̂_0 at noise level σ from the VE sample x = x_t/√ᾱ_t (x_t = α_t·x), clipped or thresholded."""
        alpha_t, sigma_t, _ = vp_coefficients(sigma)
        x0 = pred_original_sample(model_output, alpha_t * sample, alpha_t, sigma_t, self.config.prediction_type)
        return self._process_pred_original_sample(x0)

    def _state(self, step_index: int, history: tuple[torch.Tensor, ...] = (), **extra: Any) -> StepState:
        """The state for the step at `step_index` of the current grid."""
        return StepState(self._grid, step_index, history, tuple(extra.items()))

    @staticmethod
    def _history(state: StepState | None, latest: torch.Tensor, keep: int) -> tuple[torch.Tensor, ...]:
        """The last `keep` entries of the history with `latest` appended."""
        history = () if state is None else state.history
        return (*history, latest)[-keep:] if keep > 0 else ()
