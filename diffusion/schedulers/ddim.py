"""DDIM sampling (Song et al. 2021): the generalised, non-Markovian reverse process of eq. 12.

η = 0 gives the deterministic DDIM sampler, η = 1 the DDPM posterior variance (eq. 16). The previous
timestep t' comes from the lookup `set_timesteps` builds, so every spacing is exact (diffusers' DDIM
recomputes it as t - T//n, which is wrong for "linspace" and for "trailing" when n does not divide T).
Otherwise the semantics equal diffusers' `DDIMScheduler` with `use_clipped_model_output=False`.
Notation: see `diffusion.schedulers.base`.
"""

import dataclasses

import torch

from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import Scheduler, SchedulerOutput, VPStep
from diffusion.schedulers.config import SchedulerConfig
from diffusion.schedulers.schedule import pred_epsilon, pred_original_sample

_ROUNDING = 1e-12  # float64 slack when checking that 1 - ᾱ_t' - σ_t² >= 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIMConfig(SchedulerConfig):
    """`SchedulerConfig` plus DDIM's stochasticity and its final-step convention."""

    # η of eq. 16 in [0, 1]: 0 = deterministic DDIM, 1 = DDPM's σ_t (> 1 can make σ_t² > 1 - ᾱ_t', eq. 12).
    # A step() argument in diffusers; here a setting, so one sampling loop serves every sampler.
    eta: float = 0.0
    # ᾱ_{t'} at the last step (t' = -1): 1 (x_{t'} is x̂_0) if True, else ᾱ_0 (one step short of x_0).
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.eta > 1:
            raise ValueError(f"eta must be at most 1 (DDPM's noise; more has no meaning in eq. 12), got {self.eta}")


@dataclasses.dataclass(frozen=True, slots=True)
class DDIMStep(VPStep):
    """A `VPStep` plus the weights of eq. 12 for the step from t to t'."""

    variance: float  # σ_t(η)² = η²·(1-ᾱ_{t'})/(1-ᾱ_t)·(1 - ᾱ_t/ᾱ_{t'}) (eq. 16)
    sqrt_alpha_prod_prev: float  # √ᾱ_{t'}, the weight of x̂_0
    direction: float  # √(1-ᾱ_{t'}-σ_t²), the weight of ε̂ ("direction pointing to x_t")
    std_dev: float  # σ_t(η), the std of the fresh noise ε_t


class DDIMScheduler(Scheduler):
    """Sampler of Song et al. 2021; deterministic when `config.eta` is 0."""

    config_class = DDIMConfig
    config: DDIMConfig

    @property
    def stochastic(self) -> bool:
        """Deterministic at η = 0."""
        return self.config.eta > 0

    def final_alpha_cumprod(self) -> float:
        """ᾱ after the last step: 1, or ᾱ_0 when `set_alpha_to_one` is False (as in diffusers)."""
        return 1.0 if self.config.set_alpha_to_one else self.schedule.alphas_cumprod[0].item()

    def variance(self, timestep: int | torch.Tensor) -> float:
        """σ_t(η)² of eq. 16: η²·(1-ᾱ_{t'})/(1-ᾱ_t)·(1 - ᾱ_t/ᾱ_{t'}). Needs `set_timesteps`."""
        return self.coefficients[self.step_index(timestep)].variance

    def _step_coefficients(self, index: int) -> DDIMStep:
        """σ_t(η) of eq. 16 and the weights of eq. 12, from ᾱ_t and ᾱ_{t'} of step `index`."""
        step = super()._step_coefficients(index)
        alpha_prod_t, alpha_prod_t_prev = step.alpha_prod_t, step.alpha_prod_t_prev
        posterior_variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        variance = self.config.eta**2 * posterior_variance
        # The direction's variance 1 - ᾱ_{t'} - σ_t² is >= 0 for η <= 1 (`DDIMConfig` refuses more) up to
        # rounding, which is clamped.
        direction_variance = 1 - alpha_prod_t_prev - variance
        assert direction_variance >= -_ROUNDING, (self.config.eta, step.timestep, variance)
        return DDIMStep(
            *dataclasses.astuple(step),
            variance=variance,
            sqrt_alpha_prod_prev=alpha_prod_t_prev**0.5,
            direction=max(direction_variance, 0.0) ** 0.5,
            std_dev=variance**0.5,
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: None = None,
    ) -> SchedulerOutput:
        """One step of eq. 12 of Song et al. 2021, from t to the previous inference timestep t'.

        `generator` draws ε_t when `config.eta` > 0. Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep)
        c = self.coefficients[i]
        # 1. "predicted x_0" of eq. 12 and the ε̂ it implies, from the model output at √ᾱ_t, √(1-ᾱ_t)
        #    (before clipping, as diffusers does by default), then clip or threshold x̂_0.
        alpha_t, sigma_t = self._vp_levels(sample)[i]
        x0 = pred_original_sample(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        eps = pred_epsilon(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)
        # 2. x_{t'} = √ᾱ_{t'}·x̂_0 + √(1-ᾱ_{t'}-σ_t²)·ε̂ + σ_t·ε_t (eq. 12, σ_t of eq. 16); noise whenever η > 0.
        prev_sample = c.sqrt_alpha_prod_prev * x0 + c.direction * eps
        if self.config.eta > 0:
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + c.std_dev * noise
        return SchedulerOutput(prev_sample, x0)
