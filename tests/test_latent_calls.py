"""`diffusion.latent_calls`: a seed's initial noise, and an interpolation as the `__call__` that samples its frames."""

import re

import pytest
import torch

from diffusion.latent_calls import interpolation_arguments, seed_noise


def test_seed_noise_is_the_noise_that_sampling_with_the_seed_starts_from(tiny_pipeline):
    config = tiny_pipeline.unet.config
    noise = seed_noise(config, 7, None)
    assert noise.shape == (1, 8, 8) and noise.dtype == torch.float32
    # Sampling from it as latents gives the image of seed 7 (DDIM at eta 0 draws no further noise).
    from_seed = tiny_pipeline(1, 2, "ddim", seed=7, output_type="tensor")
    from_noise = tiny_pipeline(1, 2, "ddim", latents=noise[None], output_type="tensor")
    torch.testing.assert_close(from_noise, from_seed, rtol=0, atol=0)
    torch.testing.assert_close(tiny_pipeline.noise_for_seed(7), noise, rtol=0, atol=0)
    assert seed_noise(config, 7, (16, 8)).shape == (1, 16, 8)
    with pytest.raises(ValueError, match=re.escape("seeds must be integers in [0, 2**64 - 1], got -1")):
        seed_noise(config, -1, None)


def test_an_interpolation_is_the_call_that_samples_its_frames(tiny_conditional_pipeline):
    pipe = tiny_conditional_pipeline
    kwargs = {"class_labels": "random", "eta": 0.0, "batch_size": 2}
    call = {"self": pipe, "start": 3, "end": 5, "num_frames": 4, "num_inference_steps": 2, "scheduler": "ddim"}
    arguments = interpolation_arguments(pipe, call | {"kwargs": kwargs})
    assert kwargs == {"class_labels": "random", "eta": 0.0, "batch_size": 2}  # the caller's dict is left as it was
    assert sorted(arguments) == [
        "batch_size",
        "class_labels",
        "latents",
        "num_images",
        "num_inference_steps",
        "scheduler",
        "size",
    ]
    assert (arguments["num_images"], arguments["num_inference_steps"], arguments["size"]) == (4, 2, (8, 8))
    assert pipe.scheduler_name(arguments["scheduler"]) == "ddim" and arguments["scheduler"].config.eta == 0.0
    assert arguments["class_labels"] == int(pipe.random_class_labels(1, [3])[0])  # the start seed's, for every frame
    latents = arguments["latents"]  # (num_frames, c, h, w), from the start seed's noise to the end seed's
    assert latents.shape == (4, 1, 8, 8)
    torch.testing.assert_close(latents[0], seed_noise(pipe.unet.config, 3, None), rtol=0, atol=0)
    torch.testing.assert_close(latents[-1], seed_noise(pipe.unet.config, 5, None), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^interpolation needs a deterministic sampler, and ddpm adds fresh noise"):
        interpolation_arguments(pipe, call | {"scheduler": "ddpm", "kwargs": {}})
