"""Euler's method on the probability-flow ODE in σ (Karras et al. 2022, sec. 3 and eq. 4), as k-diffusion's
`sample_euler`. Notation: `diffusion.schedulers.base` and `.sigmas`.

In the VE view x = x_0 + σ·ε the ODE is dx/dσ = (x - x̂_0(x, σ))/σ; one Euler step goes from σ_i to
σ_{i+1}. The last step (σ_{n} = 0) lands on x̂_0. Semantics equal diffusers' `EulerDiscreteScheduler`
without churn, `interpolation_type="linear"`, `timestep_type="discrete"`, `final_sigmas_type="zero"`,
except where `.sigmas` says otherwise (initial noise, Karras range).
"""

import torch

from diffusion.schedulers.base import Generators, SchedulerOutput
from diffusion.schedulers.sigmas import SigmaScheduler, StepState


class EulerDiscreteScheduler(SigmaScheduler):
    """First-order, deterministic; one model evaluation per step."""

    ve_sample = True
    round_timesteps = False

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: StepState | None = None,
    ) -> SchedulerOutput:
        """One Euler step from σ_i to σ_{i+1} (Karras et al. 2022, Algorithm 1 without its correction).

        `sample` is the VE sample x = x_t/√ᾱ_t; deterministic (`generator` unused).
        Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep, state)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        # 1. x̂_0 and the ODE's slope d = (x - x̂_0)/σ (Karras et al. 2022, eq. 4 with s = 1).
        x0 = self._ve_pred_original_sample(model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        # 2. x_{i+1} = x_i + (σ_{i+1} - σ_i)·d.
        prev_sample = sample + (sigma_next - sigma) * derivative
        return SchedulerOutput(prev_sample, x0, self._state(i + 1))
