"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1). Notation:
`diffusion.schedulers.base`.

A consistency model maps any x_t of a trajectory to its x_0 in one evaluation. Sampling with n steps
evaluates it at the n inference timesteps: at each, x̂_0 is the model's prediction (clipped or thresholded
per the config), and the next sample is x̂_0 noised afresh to the next timestep t',
x_{t'} = √ᾱ_{t'}·x̂_0 + √(1-ᾱ_{t'})·ε; the last step returns x̂_0 itself. NFE = n.
"""

import torch

from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import Scheduler, SchedulerOutput
from diffusion.schedulers.config import SchedulerConfig
from diffusion.schedulers.schedule import pred_original_sample


class ConsistencyScheduler(Scheduler):
    """Song et al. 2023, Algorithm 1: x̂_0 at each step, re-noised with fresh noise from `generator`."""

    config_class = SchedulerConfig
    config: SchedulerConfig

    @property
    def stochastic(self) -> bool:
        """Every step but the last draws fresh noise."""
        return True

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: None = None,
    ) -> SchedulerOutput:
        """One step of Algorithm 1 from t to the next inference timestep t' (x̂_0 itself after the last).

        `generator` draws ε. Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep)
        levels = self._vp_levels(sample)
        # 1. x̂_0 = f_θ(x_t, t) from the model output at √ᾱ_t, √(1-ᾱ_t), then clip or threshold.
        alpha_t, sigma_t = levels[i]
        x0 = pred_original_sample(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)
        if i + 1 == len(levels):
            return SchedulerOutput(x0, x0)  # the last step: x̂_0 is the sample
        # 2. x_{t'} = √ᾱ_{t'}·x̂_0 + √(1-ᾱ_{t'})·ε, ε ~ N(0, I) fresh (Algorithm 1, line 5).
        alpha_prev, sigma_prev = levels[i + 1]
        noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
        return SchedulerOutput(alpha_prev * x0 + sigma_prev * noise, x0)
