"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subset of the training timesteps.

Each step samples x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x̂_0) (eqs. 6-7), with x̂_0 the
model's estimate of x_0. Between inference timesteps t > t', the single-step quantities are the strided
ones α_t = ᾱ_t/ᾱ_{t'}, β_t = 1 - α_t, which equal the paper's when every timestep is used. The
semantics equal diffusers' `DDPMScheduler` for its `fixed_small` and `fixed_large` variance types.
Notation: see `diffusion.schedulers.base`.
"""

import dataclasses
from typing import Literal, get_args

import torch

from diffusion.config import check_choice
from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import Scheduler, SchedulerOutput, VPStep
from diffusion.schedulers.config import SchedulerConfig
from diffusion.schedulers.schedule import pred_original_sample

VarianceType = Literal["fixed_small", "fixed_large"]
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
MIN_VARIANCE = 1e-20  # diffusers clamps β̃_t to this (it takes logs elsewhere); it matters only at t' = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPMConfig(SchedulerConfig):
    """`SchedulerConfig` plus the variance of the noise each step adds."""

    # σ_t² of a step (Ho et al. 2020, sec. 3.2): fixed_small = β̃_t, the posterior variance (eq. 7),
    # optimal for deterministic x_0; fixed_large = β_t, optimal for x_0 ~ N(0, I).
    variance_type: VarianceType = "fixed_small"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("variance type", self.variance_type, VARIANCE_TYPES)


@dataclasses.dataclass(frozen=True, slots=True)
class DDPMStep(VPStep):
    """A `VPStep` plus the posterior q(x_{t'} | x_t, x_0) of eqs. 6-7, with the strided α_t = ᾱ_t/ᾱ_{t'}."""

    pred_original_sample_coeff: float  # √ᾱ_{t'}·β_t/(1-ᾱ_t), the weight of x̂_0 in μ̃_t
    current_sample_coeff: float  # √α_t·(1-ᾱ_{t'})/(1-ᾱ_t), the weight of x_t in μ̃_t
    posterior_variance: float  # β̃_t = (1-ᾱ_{t'})/(1-ᾱ_t)·β_t
    variance: float  # σ_t², per `variance_type`
    std_dev: float  # σ_t, the std of the noise z


class DDPMScheduler(Scheduler):
    """Ancestral sampler of Ho et al. 2020; stochastic, `generator` supplies its noise."""

    config_class = DDPMConfig
    config: DDPMConfig

    @property
    def stochastic(self) -> bool:
        """Ancestral sampling adds noise at every step but the last."""
        return True

    def posterior_variance(self, timestep: int | torch.Tensor) -> float:
        """β̃_t = (1-ᾱ_{t'})/(1-ᾱ_t)·β_t, the variance of q(x_{t'} | x_t, x_0) (Ho et al. 2020, eq. 7).

        Needs `set_timesteps`: t' is the previous inference timestep, β_t = 1 - ᾱ_t/ᾱ_{t'}.
        """
        return self.coefficients[self.step_index(timestep)].posterior_variance

    def variance(self, timestep: int | torch.Tensor) -> float:
        """σ_t², the variance of the noise `step` adds at `timestep`, per `config.variance_type`.

        fixed_small: max(β̃_t, 1e-20), as diffusers clamps it; fixed_large: β_t = 1 - ᾱ_t/ᾱ_{t'}.
        """
        return self.coefficients[self.step_index(timestep)].variance

    def _step_coefficients(self, index: int) -> DDPMStep:
        """μ̃_t's weights and σ_t of step `index` (eq. 7), from ᾱ_t and ᾱ_{t'}."""
        step = super()._step_coefficients(index)
        alpha_prod_t, alpha_prod_t_prev = step.alpha_prod_t, step.alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev  # the strided α_t and β_t
        current_beta_t = 1 - current_alpha_t
        posterior_variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
        if self.config.variance_type == "fixed_small":
            variance = max(posterior_variance, MIN_VARIANCE)
        else:
            variance = current_beta_t
        return DDPMStep(
            *dataclasses.astuple(step),
            pred_original_sample_coeff=alpha_prod_t_prev**0.5 * current_beta_t / (1 - alpha_prod_t),
            current_sample_coeff=current_alpha_t**0.5 * (1 - alpha_prod_t_prev) / (1 - alpha_prod_t),
            posterior_variance=posterior_variance,
            variance=variance,
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
        """One step of Ho et al. 2020, Algorithm 2, from t to the previous inference timestep t'.

        `generator` draws z. Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep)
        c = self.coefficients[i]
        # 1. x̂_0 from the model output at √ᾱ_t, √(1-ᾱ_t) (eq. 15 for ε; Salimans & Ho 2022 for v), then
        #    clip or threshold.
        alpha_t, sigma_t = self._vp_levels(sample)[i]
        x0 = pred_original_sample(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)
        # 2. Posterior mean μ̃_t(x_t, x̂_0) = √ᾱ_{t'}·β_t/(1-ᾱ_t)·x̂_0 + √α_t·(1-ᾱ_{t'})/(1-ᾱ_t)·x_t (eq. 7).
        prev_sample = c.pred_original_sample_coeff * x0 + c.current_sample_coeff * sample
        # 3. x_{t'} = μ̃_t + σ_t·z, z ~ N(0, I) (Algorithm 2, line 4). As in diffusers, z = 0 only at t = 0,
        #    so a final step from t > 0 still draws z: scaled by σ = 1e-10 for fixed_small, but by
        #    √(1-ᾱ_t) for fixed_large, which leaves noise in the result (prefer fixed_small when striding).
        if c.timestep > 0:
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + c.std_dev * noise
        return SchedulerOutput(prev_sample, x0)
