"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`, after Karras et al. 2022 and Song et
al. 2021): an Euler step down to σ_down, then fresh noise back up to σ_{i+1}. Notation:
`diffusion.schedulers.base` and `.sigmas`.

σ_up = √(σ_{i+1}²·(σ_i² - σ_{i+1}²)/σ_i²) and σ_down = √(σ_{i+1}² - σ_up²) split the next level into a
deterministic and a stochastic part, so that the marginal at σ_{i+1} is right (the DDPM ancestral step
in VE form). Semantics equal diffusers' `EulerAncestralDiscreteScheduler` except where `.sigmas` says
otherwise (initial noise, Karras range); "sample" prediction is supported too.
"""

import math

import torch

from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.sigmas import SigmaScheduler, StepState


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """First-order, stochastic; one model evaluation per step."""

    ve_sample = True
    round_timesteps = False
    stochastic = True  # noise σ_up at every step

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: StepState | None = None,
    ) -> SchedulerOutput:
        """One ancestral step from σ_i to σ_{i+1}.

        `sample` is the VE sample x = x_t/√ᾱ_t; `generator` draws the ancestral noise.
        Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep, state)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        # 1. Split σ_{i+1}² = σ_down² + σ_up².
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        # 2. Euler step to σ_down along d = (x - x̂_0)/σ.
        x0 = self._ve_pred_original_sample(model_output, sample, sigma)
        prev_sample = sample + (sigma_down - sigma) * (sample - x0) / sigma
        # 3. Add noise of std σ_up, drawn every step (σ_up = 0 at the last) so that each step draws the
        #    same amount from the generator as diffusers does.
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        prev_sample = prev_sample + sigma_up * noise.to(sample.dtype)
        return SchedulerOutput(prev_sample, x0, self._state(i + 1))
