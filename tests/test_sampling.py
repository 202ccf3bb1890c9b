"""The sampling loop: the plain protocol loop, its hooks, and an analytic check of where it lands."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffusion.sampling import sampling_loop
from diffusion.schedulers import SCHEDULER_NAMES, get_scheduler, randn_tensor


class TrueNoise:
    """A perfect ε-predictor for one known x_0: ε̂(x_t, t) = (x_t - √ᾱ_t·x_0) / √(1-ᾱ_t); records its calls."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        self.x0, self.alphas_cumprod, self.timesteps = x0, alphas_cumprod, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        self.timesteps.append(int(t))
        a = self.alphas_cumprod[int(t)].item()
        return (x - math.sqrt(a) * self.x0) / math.sqrt(1 - a)


@pytest.mark.parametrize("start", [0, 3])
def test_ddim_with_the_true_noise_lands_on_x0_from_any_start(start):
    scheduler = get_scheduler("ddim", {"timestep_spacing": "trailing"})
    scheduler.set_timesteps(6)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    denoiser = TrueNoise(x0, scheduler.schedule.alphas_cumprod)
    alpha, sigma = scheduler.noise_level(start)
    x = alpha * x0 + sigma * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sampling_loop(denoiser, scheduler, x, None, None, list(range(start, 6)))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)
    assert denoiser.timesteps == scheduler.timesteps.tolist()[start:]  # one evaluation per visited entry


def test_the_loop_is_the_protocol_loop_written_out():
    """k-diffusion's shape: scale_model_input, the denoiser, step, with the multistep state carried along."""
    scheduler = get_scheduler("dpmsolver++3m-sde")
    scheduler.set_timesteps(5)

    def denoiser(x, t, labels):
        return torch.tanh(x) * (1 + t.float() / 1000)

    noise = randn_tensor((2, 1, 4, 4), [torch.Generator().manual_seed(s) for s in (0, 1)])
    gens = [torch.Generator().manual_seed(s) for s in (10, 11)]
    out = sampling_loop(denoiser, scheduler, noise * scheduler.init_noise_sigma, None, gens, list(range(5)))
    gens = [torch.Generator().manual_seed(s) for s in (10, 11)]
    x, state = noise * scheduler.init_noise_sigma, None
    for t in scheduler.timesteps:
        model_output = denoiser(scheduler.scale_model_input(x, t.item()), t, None)
        x, _, state = scheduler.step(model_output, t.item(), x, generator=gens, state=state)
    assert torch.equal(out, x)


def test_hooks_see_every_step_and_a_visit_order_that_goes_back_renoises():
    scheduler = get_scheduler("ddim", {"timestep_spacing": "trailing"})
    scheduler.set_timesteps(4)
    order = [0, 1, 0, 1, 2, 3]  # RePaint: the first run of two steps done twice
    levels, calls, seen = [], [], []

    def denoiser(x, t, labels):
        seen.append(int(t))
        return torch.zeros_like(x)  # ε̂ = 0: a step only rescales x

    def after_step(x, level):
        levels.append(level)
        return x

    x = torch.ones(1, 1, 2, 2)
    sampling_loop(denoiser, scheduler, x, None, torch.Generator().manual_seed(0), order, after_step,
           lambda i, t, x: calls.append((i, t)))  # fmt: skip
    timesteps = scheduler.timesteps.tolist()
    assert seen == [timesteps[i] for i in order]
    assert calls == [(i, timesteps[i]) for i in order]
    assert levels == [1, 2, 1, 2, 3, 4]
    # With ε̂ = 0, DDIM scales x by √(ᾱ_t'/ᾱ_t) per step, and the jump back from entry 2 to entry 0 adds
    # noise: the result is not the plain four-step product.
    plain = sampling_loop(denoiser, scheduler, x, None, None, list(range(4)))
    assert not torch.equal(sampling_loop(denoiser, scheduler, x, None, torch.Generator().manual_seed(0), order), plain)
    torch.testing.assert_close(plain, x / math.sqrt(scheduler.schedule.alphas_cumprod[timesteps[0]].item()))


class HostSyncs(TorchDispatchMode):
    """Counts `aten::_local_scalar_dense`, the op behind `.item()` and `if tensor:`: on an accelerator,
    each one makes the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_a_sampling_step_never_waits_for_the_host(name):
    """Every sampler's step, and the loop around it, reads nothing back from the device: a call of 6 steps
    waits exactly as often as a call of 3 (its set-up only)."""
    scheduler = get_scheduler(name)

    def denoiser(x, t, labels):
        return torch.tanh(x) * (1 + t.float() / 1000)

    counts = []
    for steps in (3, 6):
        scheduler.set_timesteps(steps)
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        x = torch.randn(2, 1, 4, 4) * scheduler.init_noise_sigma
        with HostSyncs() as syncs:
            sampling_loop(denoiser, scheduler, x, None, gens, list(range(len(scheduler.timesteps))))
        counts.append(syncs.count)
    assert counts[0] == counts[1] == 0
