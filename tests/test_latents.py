"""`diffusion.latents`: DDIM inversion and interpolation between initial noises."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import DiffusionPipeline
from diffusion.latents import ddim_invert, slerp
from diffusion.schedulers import get_scheduler


@pytest.fixture(scope="module")
def pipe(make_tiny_pipeline):
    return make_tiny_pipeline(scheduler=get_scheduler("dpmsolver++", {"timestep_spacing": "trailing"}))


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), mode="L")


def test_slerp_keeps_endpoints_exactly_and_the_norm_of_orthogonal_noises():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([3 / math.sqrt(2), 3 / math.sqrt(2)]))
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel: linear


def test_inversion_with_a_constant_noise_lands_on_the_first_timesteps_level():
    """With ε̂ ≡ ε, every x̂_0 of the upward DDIM steps is x_0 itself, so inversion ends at
    √ᾱ_t·x_0 + √(1-ᾱ_t)·ε for the first sampling timestep t (Song et al. 2021, eq. 12 with η = 0)."""
    sampler = get_scheduler("ddim", {"timestep_spacing": "trailing"})
    sampler.set_timesteps(5)
    x0, eps = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    calls = []

    def epsilon(x, t):
        calls.append(t)
        return eps

    latents = ddim_invert(epsilon, sampler, x0, fixed_point_iterations=1)
    a = sampler.schedule.alphas_cumprod[int(sampler.timesteps[0])].item()
    torch.testing.assert_close(latents, math.sqrt(a) * x0 + math.sqrt(1 - a) * eps)
    assert calls == [t for t in sampler.timesteps.tolist()[::-1] for _ in range(2)]  # up the grid, 2 per step


@pytest.fixture(scope="module")
def trained():
    """The shipped model: a tiny trained one (1.1M parameters), in float32."""
    return DiffusionPipeline.from_pretrained()


@pytest.mark.parametrize("steps, iterations, mean, worst", [(100, 0, 0.025, 0.5), (50, 1, 0.01, 0.15)])
def test_ddim_inversion_reconstructs_its_input(trained, steps, iterations, mean, worst):
    """Images the model can make (its own samples) invert and regenerate closely. The bounds, in [0, 1],
    are about twice the errors bench/inversion.py recorded for 8 images (docs/benchmarks.md; 100 plain
    steps: 0.0113 mean, 0.298 max; 50 steps with one fixed-point iteration: 0.0046 mean, 0.067 max)."""
    images = trained(4, 20, "dpmsolver++3m-sde", seed=0, output_type="tensor")
    latents = trained.invert(images, steps, fixed_point_iterations=iterations)
    assert latents.shape == (4, 1, 28, 28)
    assert 0.8 < latents.std().item() < 1.2  # unit variance, like sampling noise
    again = trained(4, steps, "ddim", eta=0.0, latents=latents, output_type="tensor")
    error = (again - images).abs()
    assert error.mean().item() < mean and error.max().item() < worst
    if iterations:
        assert torch.equal(trained.invert(images, steps, fixed_point_iterations=iterations), latents)  # deterministic


def test_bad_inversion_arguments_are_clear_errors(pipe, picture):
    for bad in (-1, 0.0, True):
        with pytest.raises(ValueError, match=r"fixed_point_iterations must be an integer >= 0, got"):
            pipe.invert(picture, 4, fixed_point_iterations=bad)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 1000\]"):
        pipe.invert(picture, 0)
    with pytest.raises(ValueError, match=r"image must be a PIL image"):
        pipe.invert(None, 4)


def test_interpolation_endpoints_are_the_two_sources(pipe):
    frames = pipe.interpolate(3, 8, num_frames=5, num_inference_steps=6, output_type="tensor")
    assert frames.shape == (5, 1, 8, 8)
    for frame, seed in ((frames[0], 3), (frames[-1], 8)):
        alone = pipe(1, 6, "ddim", seed=seed, output_type="tensor")[0]
        torch.testing.assert_close(frame, alone, rtol=0, atol=1e-5)
    assert (frames[2] - frames[0]).abs().max() > 0.01  # the middle differs from both ends
    big = pipe.interpolate(torch.randn(1, 16, 12), torch.randn(1, 16, 12), num_frames=3, num_inference_steps=2)
    assert [frame.size for frame in big] == [(12, 16)] * 3  # the latents' size, not the model's
    latents = torch.stack([pipe.noise_for_seed(3), pipe.noise_for_seed(8)])
    again = pipe.interpolate(latents[0], latents[1], num_frames=5, num_inference_steps=6, output_type="tensor")
    torch.testing.assert_close(again, frames, rtol=0, atol=0)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((1, 2), {"num_frames": 1}, r"num_frames must be an integer >= 2"),
        ((1, 2), {"scheduler": "dpmsolver++3m-sde"}, r"interpolation needs a deterministic sampler, and dpmsolver"),
        ((1, 2), {"scheduler": "ddim", "eta": 1.0}, r"interpolation needs a deterministic sampler, and ddim"),
        ((1, 2), {"seed": 3}, r"interpolate takes no seed"),
        ((1, "b"), {}, r"start and end must be seeds \(ints\) or latents \(tensors\), got 'b'"),
        ((torch.zeros(1, 8, 8), torch.zeros(1, 4, 4)), {}, r"start and end must be latents of one \(c, h, w\) shape"),
    ],
)
def test_bad_interpolation_arguments_are_clear_errors(pipe, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.interpolate(*args, **kwargs)


def test_interpolating_random_classes_keeps_the_start_seeds_class(make_tiny_pipeline):
    pipe = make_tiny_pipeline(("a", "b", "c", "d", "e"))
    frames = pipe.interpolate(3, 9, num_frames=4, num_inference_steps=2, class_labels="random", output_type="tensor")
    label = int(pipe.random_class_labels(1, [3])[0])
    expected = pipe.interpolate(3, 9, num_frames=4, num_inference_steps=2, class_labels=label, output_type="tensor")
    torch.testing.assert_close(frames, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="draws the start seed's class; start is a latent"):
        pipe.interpolate(torch.zeros(1, 8, 8), 9, num_frames=2, class_labels="random")
