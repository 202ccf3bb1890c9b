"""ConsistencyScheduler: multistep consistency sampling (Song et al. 2023, Algorithm 1) in closed form."""

import pytest
import torch

from diffusion.rng import generators, randn_tensor
from diffusion.schedulers import PREDICTION_TYPES, ConsistencyScheduler, SchedulerConfig, get_scheduler
from diffusion.schedulers.base import trailing_timesteps

SHAPE = (2, 1, 4, 4)


def x0_of(b: int) -> torch.Tensor:
    """A clean image per batch item, inside [-1, 1]."""
    return torch.linspace(-0.9, 0.9, b * 16).reshape(b, 1, 4, 4)


def output_for(x0: torch.Tensor, x_t: torch.Tensor, t: int, scheduler: ConsistencyScheduler) -> torch.Tensor:
    """The model output of `config.prediction_type` that a perfect model predicting ``x0`` at ``x_t`` gives."""
    alpha = scheduler.schedule.alphas_cumprod[t].sqrt().float()
    sigma = (1 - scheduler.schedule.alphas_cumprod[t]).sqrt().float()
    eps = (x_t - alpha * x0) / sigma
    return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[scheduler.config.prediction_type]


def test_registered_with_trailing_spacing_and_the_configured_prediction_type():
    scheduler = get_scheduler("consistency", {"prediction_type": "v_prediction"})
    assert isinstance(scheduler, ConsistencyScheduler) and scheduler.stochastic
    assert scheduler.config == SchedulerConfig(prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == trailing_timesteps(1000, 4).tolist() == [999, 749, 499, 249]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_one_step_returns_the_models_x0_for_every_prediction_type(prediction_type):
    scheduler = ConsistencyScheduler(SchedulerConfig(prediction_type=prediction_type))
    scheduler.set_timesteps(1)
    x0, x_t = x0_of(2), torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    t = int(scheduler.timesteps[0])
    out = scheduler.step(output_for(x0, x_t, t, scheduler), t, x_t, generator=torch.Generator().manual_seed(1))
    # ε prediction divides by √ᾱ_999 ≈ 6e-3, which magnifies float32 rounding of the output ~150 times.
    tolerance = 2e-4 if prediction_type == "epsilon" else 1e-5
    torch.testing.assert_close(out.prev_sample, x0, rtol=0, atol=tolerance)
    torch.testing.assert_close(out.pred_original_sample, out.prev_sample, rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_two_steps_renoise_x0_with_each_images_own_fresh_noise(prediction_type):
    scheduler = ConsistencyScheduler(SchedulerConfig(prediction_type=prediction_type))
    scheduler.set_timesteps(2)
    t, s = scheduler.timesteps.tolist()
    assert (t, s) == (999, 499)
    x0, x_t = x0_of(2), torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = scheduler.step(output_for(x0, x_t, t, scheduler), t, x_t, generator=generators([7, 8]))
    expected_noise = randn_tensor(SHAPE, generators([7, 8]))  # image i's ε from its own generator
    alpha_s, sigma_s = scheduler.schedule.alphas_cumprod[s].sqrt(), (1 - scheduler.schedule.alphas_cumprod[s]).sqrt()
    tolerance = 2e-4 if prediction_type == "epsilon" else 1e-5  # as above: ε at t = 999
    torch.testing.assert_close(
        out.prev_sample, (alpha_s * x0 + sigma_s * expected_noise).float(), rtol=0, atol=tolerance
    )
    # Image 1's sample does not depend on the batch it is in: alone, with generator 8, it is the same.
    alone = scheduler.step(output_for(x0[1:], x_t[1:], t, scheduler), t, x_t[1:], generator=generators([8]))
    torch.testing.assert_close(alone.prev_sample, out.prev_sample[1:], rtol=0, atol=1e-6)
    # The last step returns x̂_0 of the model at s.
    last = scheduler.step(output_for(x0, out.prev_sample, s, scheduler), s, out.prev_sample, generator=generators([9]))
    torch.testing.assert_close(last.prev_sample, x0, rtol=0, atol=1e-5)


def test_x0_is_clipped_as_the_config_says():
    scheduler = ConsistencyScheduler(SchedulerConfig(prediction_type="sample", clip_sample=True))
    scheduler.set_timesteps(1)
    x0 = torch.full(SHAPE, 3.0)
    out = scheduler.step(x0, 999, torch.zeros(SHAPE))
    torch.testing.assert_close(out.prev_sample, torch.ones(SHAPE), rtol=0, atol=0)
