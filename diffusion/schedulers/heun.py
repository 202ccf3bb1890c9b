"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1), with the
optional churn of their Algorithm 2. Notation: `diffusion.schedulers.base` and `.sigmas`.

Each step from σ_i to σ_{i+1} > 0 evaluates the model twice: an Euler step to σ_{i+1}, then the model
at σ_{i+1}, and the average of the two slopes (the trapezoidal rule). The step to σ_n = 0 is a plain
Euler step (Algorithm 1, line 9), so n steps cost 2n - 1 model evaluations and `timesteps` lists every
evaluation: [t_0, t_1, t_1, t_2, t_2, ..., t_{n-1}, t_{n-1}], as in diffusers.

Churn (Algorithm 2): where S_tmin <= σ_i <= S_tmax, the sample is first raised to σ̂_i = σ_i·(1 + γ),
γ = min(S_churn/n, √2 - 1), by adding noise of std S_noise·√(σ̂_i² - σ_i²), and the step starts from
σ̂_i. Because γ depends only on the grid, σ̂_i is known in advance: the model is evaluated at σ̂_i (its
timestep among `timesteps`), and the noise is added at the end of the step before, so the one sampling
loop needs nothing extra; the first step's churn is part of the initial noise (`init_noise_sigma`). σ̂
is capped at the model's largest σ. (diffusers' Heun has no churn, and its Euler evaluates the model
at σ_i while stepping from σ̂_i.)

Without churn the semantics equal diffusers' `HeunDiscreteScheduler`, except where `.sigmas` says
otherwise (initial noise, Karras range).
"""

import dataclasses
import math

import numpy as np
import torch

from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.sigmas import SigmaConfig, SigmaScheduler, StepState, sigma_to_timestep, training_sigmas

MAX_GAMMA = math.sqrt(2) - 1  # γ <= √2 - 1: at most doubles the variance (Karras et al. 2022, Algorithm 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeunConfig(SigmaConfig):
    """`SigmaConfig` plus the churn of Karras et al. 2022, Algorithm 2 (off by default: Algorithm 1)."""

    s_churn: float = 0.0  # S_churn: total added stochasticity; γ_i = min(S_churn/n, √2 - 1); 0 = deterministic
    s_tmin: float = 0.0  # S_tmin: churn only where σ_i >= S_tmin
    s_tmax: float | None = None  # S_tmax: churn only where σ_i <= S_tmax; None = no upper bound (the paper's ∞)
    s_noise: float = 1.0  # S_noise: std multiplier of the added noise (slightly > 1 offsets detail loss)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            if not (value is None and name == "s_tmax") and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not self.s_churn >= 0:
            raise ValueError(f"s_churn must be >= 0, got {self.s_churn}")
        if not 0 <= self.s_tmin <= (math.inf if self.s_tmax is None else self.s_tmax):
            raise ValueError(f"expected 0 <= s_tmin <= s_tmax, got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}")
        if not self.s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0, got {self.s_noise}")


class HeunDiscreteScheduler(SigmaScheduler):
    """Second-order, deterministic unless `s_churn` > 0; 2n - 1 model evaluations for n steps."""

    config_class = HeunConfig
    config: HeunConfig
    evaluations_per_step = 2  # the predictor at σ_i, the corrector at σ_{i+1} (one fewer in all: the last step)

    @property
    def stochastic(self) -> bool:
        """Deterministic without churn."""
        return self.config.s_churn > 0

    ve_sample = True
    round_timesteps = False

    def churned_sigmas(self, sigmas: np.ndarray) -> np.ndarray:
        """σ̂_i = σ_i·(1 + γ_i), capped at the model's largest σ; σ̂_i = σ_i where churn does not apply."""
        config = self.config
        gamma = min(config.s_churn / len(sigmas), MAX_GAMMA)
        s_tmax = math.inf if config.s_tmax is None else config.s_tmax
        applies = (sigmas >= config.s_tmin) & (sigmas <= s_tmax)
        sigma_max = training_sigmas(self.schedule.alphas_cumprod)[-1]
        return np.where(applies, np.minimum(sigmas * (1 + gamma), np.maximum(sigma_max, sigmas)), sigmas)

    def build_grid(self, sigmas: np.ndarray, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Evaluations at σ̂_0, then σ_{i}, σ̂_{i} for i = 1..n-1: 2n - 1 of them."""
        hat = self.churned_sigmas(sigmas)  # (n,)
        self._first_level = float(sigmas[0])  # σ_0 before churn, for `init_noise_sigma`
        hat_timesteps = np.where(
            hat == sigmas, timesteps, sigma_to_timestep(hat, training_sigmas(self.schedule.alphas_cumprod))
        )
        grid = np.stack([sigmas, hat], axis=1).reshape(-1)[1:]  # (2n - 1,): σ̂_0, σ_1, σ̂_1, ...
        grid_timesteps = np.stack([timesteps, hat_timesteps], axis=1).reshape(-1)[1:]
        return grid, grid_timesteps

    @property
    def init_noise_sigma(self) -> float:
        """√(σ_0² + S_noise²·(σ̂_0² - σ_0²) + 1): the initial noise at σ_0 (see `SigmaScheduler`) plus the
        churn of the first step (Algorithm 2, lines 5-6), folded into one draw."""
        sigma_hat = self.sigmas[0]
        churn = self.config.s_noise**2 * (sigma_hat**2 - self._first_level**2)
        return math.sqrt(self._first_level**2 + churn + 1)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: StepState | None = None,
    ) -> SchedulerOutput:
        """One evaluation's worth of Heun: the Euler predictor, or the trapezoidal corrector (then churn).

        `sample` is the VE sample x = x_t/√ᾱ_t at this entry's σ; `generator` draws the churn noise
        (unused without churn). After a predictor, prev_sample is the Euler estimate at σ_{i+1}, where the
        model is evaluated next. Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        k = self.step_index(timestep, state)
        sigmas = self.sigmas
        sigma = sigmas[k]
        x0 = self._ve_pred_original_sample(model_output, sample, sigma)
        derivative = (sample - x0) / sigma  # d = (x - x̂_0)/σ (Algorithm 1, lines 4 and 7)

        if k % 2 == 0:  # even entries are σ̂_i (predictors), odd ones σ_{i+1} (correctors)
            # Predictor (line 5): x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i)·d_i. Stop here when σ_{i+1} = 0.
            dt = sigmas[k + 1] - sigma
            prev_sample = sample + dt * derivative
            if sigmas[k + 1] == 0:
                return SchedulerOutput(prev_sample, x0, self._state(k + 1))
            return SchedulerOutput(prev_sample, x0, self._state(k + 1, (sample, derivative), dt=dt))

        # Corrector (line 8): x_{i+1} = x̂_i + (σ_{i+1} - σ̂_i)·(d_i + d'_i)/2.
        if state is None or len(state.history) != 2:
            raise ValueError(f"step {k} is a Heun corrector: pass the state its predictor step returned")
        start, first_derivative = state.history
        prev_sample = start + state.get("dt") * (first_derivative + derivative) / 2
        # Churn for the next step (Algorithm 2, lines 5-6): raise σ_{i+1} to σ̂_{i+1}.
        sigma_hat = sigmas[k + 1]
        if sigma_hat > sigma:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=torch.float32
            )
            prev_sample = prev_sample + self.config.s_noise * math.sqrt(sigma_hat**2 - sigma**2) * noise.to(
                sample.dtype
            )
        return SchedulerOutput(prev_sample, x0, self._state(k + 1))
