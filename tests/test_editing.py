"""Editing: img2img, inpainting with RePaint resampling (`diffusion.editing`)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import DiffusionPipeline
from diffusion.editing import images_to_tensor, mask_to_tensor, renoise, start_index, visit_order
from diffusion.image import to_mode
from diffusion.schedulers import SCHEDULER_NAMES, get_scheduler, randn_tensor

EDITING_SAMPLERS = [name for name in SCHEDULER_NAMES if name != "heun"]


@pytest.fixture(scope="module")
def editing_pipeline(make_tiny_pipeline):
    """A new tiny pipeline whose scheduler is ``name`` with trailing spacing."""

    def make(name: str = "dpmsolver++") -> DiffusionPipeline:
        return make_tiny_pipeline(scheduler=get_scheduler(name, {"timestep_spacing": "trailing"}))

    return make


@pytest.fixture(scope="module")
def pipe(editing_pipeline):
    return editing_pipeline()


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), mode="L")


@pytest.fixture(scope="module")
def mask():
    array = np.zeros((8, 8), dtype=np.uint8)
    array[2:6, 1:5] = 255  # regenerate a 4x4 square
    return Image.fromarray(array, mode="L")


# ----- the pieces -----


def test_visit_order_is_repaint_resampling():
    assert visit_order(0, 5, 10, 1) == [0, 1, 2, 3, 4]
    assert visit_order(0, 6, 2, 3) == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 4, 5, 4, 5, 4, 5]
    assert visit_order(3, 8, 2, 2) == [3, 4, 3, 4, 5, 6, 5, 6, 7, 7]


def test_start_index_runs_the_last_strength_fraction_of_the_steps():
    assert [start_index(10, s) for s in (0.0, 0.25, 0.5, 0.8, 1.0)] == [10, 8, 5, 2, 0]


def test_renoise_is_the_forward_process_between_two_levels():
    """From x_b = α_b·x_0 + σ_b·ε, renoise gives α_a·x_0 plus noise of variance σ_a², for VP and VE levels."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    for low, high in [((0.9, math.sqrt(1 - 0.81)), (0.5, math.sqrt(0.75))), ((1.0, 0.3), (1.0, 2.0))]:
        x_low = low[0] * x0 + low[1] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_high = renoise(x_low, low, high, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        assert x_high.mean().item() == pytest.approx(high[0] * 0.7, abs=0.02)
        assert x_high.std().item() == pytest.approx(high[1], rel=0.01)


def test_masks_are_binarised_and_sized():
    m = mask_to_tensor(torch.tensor([[0.2, 0.6], [1.0, 0.5]]), (2, 2))
    assert m.tolist() == [[[[0.0, 1.0], [1.0, 0.0]]]]
    with pytest.raises(ValueError, match=r"the mask is 2x3 but the image is 2x2 \(height x width\); give a mask"):
        mask_to_tensor(Image.new("L", (3, 2)), (2, 2))


@pytest.mark.parametrize("name", EDITING_SAMPLERS)
def test_noise_level_is_the_level_add_noise_gives_at_each_step(name):
    """x = α·x_0 + σ·ε with (α, σ) = noise_level(i) is what add_noise gives at timesteps[i] (the VE
    sample for VE samplers), and the end of the grid is x_0 itself."""
    sampler = get_scheduler(name, {"timestep_spacing": "trailing"})
    sampler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.randn(2, 1, 4, 4, generator=g)
    for i, t in enumerate(sampler.timesteps.tolist()):
        alpha, sigma = sampler.noise_level(i)
        expected = sampler.add_noise(x0, eps, torch.tensor([int(t)] * 2))
        torch.testing.assert_close(alpha * x0 + sigma * eps, expected, rtol=1e-5, atol=1e-5)
    assert sampler.noise_level(10) == (1.0, 0.0)


@pytest.mark.parametrize("name", EDITING_SAMPLERS)
@pytest.mark.parametrize("resample", [1, 2])
def test_the_known_region_the_model_sees_is_the_image_noised_to_its_timestep(editing_pipeline, name, resample):
    """At every model call, RePaint jumps included, the known pixels of the model input x_t are
    √ᾱ_t·x_0 + √(1-ᾱ_t)·ε with ε ~ N(0, 1): pasting at another step's level would shift their mean
    (x_0 = 1 there) or scale their spread."""
    pipe = editing_pipeline(name)
    sampler = pipe.make_scheduler(name)
    alphas_cumprod = sampler.schedule.alphas_cumprod
    image = torch.ones(1, 1, 64, 64)  # white: x_0 = 1
    m = torch.zeros(64, 64)
    m[:, :8] = 1  # regenerate a strip; 3,584 known pixels
    stats = []

    def record(module, args):
        sample, timesteps = args[0], args[1]
        abar = alphas_cumprod[int(timesteps[0].round())].item()
        known = sample[0, 0, :, 8:]
        eps = (known - math.sqrt(abar)) / math.sqrt(1 - abar)
        stats.append((eps.mean().item(), eps.std().item()))

    handle = pipe.unet.register_forward_pre_hook(record)
    try:
        pipe(1, 8, sampler, image=image, mask_image=m, resample=resample, jump_length=3, seed=2, size=None)
    finally:
        handle.remove()
    assert len(stats) == len(visit_order(0, 8, 3, resample))
    for mean, std in stats:
        assert abs(mean) < 0.07 and abs(std - 1) < 0.07, stats  # 4 standard errors of 3,584 samples


def test_karras_grids_with_repeated_timesteps_edit_by_index(editing_pipeline):
    """Karras σ with many steps rounds some timesteps to the same integer; editing still starts and
    jumps by grid index."""
    pipe = editing_pipeline()
    sampler = pipe.make_scheduler("dpmsolver++", use_karras_sigmas=True)
    sampler.set_timesteps(100)
    assert len(set(sampler.timesteps.tolist())) < 100  # repeats exist
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(8, 8)
    m[:4] = 1
    out = pipe(1, 100, sampler, image=image, mask_image=m, strength=0.5, resample=2, output_type="tensor")
    torch.testing.assert_close(out[..., 4:, :], image[..., 4:, :], rtol=0, atol=1e-6)
    assert torch.isfinite(out).all()


# ----- img2img -----


def test_strength_0_returns_the_image_and_1_ignores_it(pipe, picture):
    out = pipe(2, 10, image=picture, strength=0.0)
    assert [np.array(o).tolist() for o in out] == [np.array(picture).tolist()] * 2
    plain = pipe(2, 10, output_type="tensor", seed=4)
    other = Image.fromarray(255 - np.array(picture))
    for image in (picture, other):
        torch.testing.assert_close(pipe(2, 10, image=image, strength=1.0, output_type="tensor", seed=4), plain)


@pytest.mark.parametrize("name", EDITING_SAMPLERS)
def test_img2img_starts_from_the_image_noised_to_the_level_strength_gives(pipe, picture, name):
    """With strength 0.5 of 10 steps, the model is first called at the 6th timestep, on
    α·x_0 + σ·ε (rescaled as the sampler's model input), with ε the seed's noise; 5 calls in all."""
    seen = []
    sampler = pipe.make_scheduler(name)
    pipe(1, 10, sampler, image=picture, strength=0.5, seed=9, callback=lambda i, t, s: seen.append((i, t)))
    assert [i for i, _ in seen] == [5, 6, 7, 8, 9]
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].clone()))
    try:
        pipe(1, 10, sampler, image=picture, strength=0.5, seed=9)
    finally:
        handle.remove()
    x0 = torch.from_numpy(np.array(picture, dtype=np.float32))[None, None] / 127.5 - 1
    noise = randn_tensor((1, 1, 8, 8), [torch.Generator().manual_seed(9)])
    alpha, sigma = sampler.noise_level(5)
    expected = sampler.scale_model_input(alpha * x0 + sigma * noise, sampler.timesteps[5])
    assert len(calls) == 5
    torch.testing.assert_close(calls[0], expected, rtol=0, atol=1e-6)


# ----- inpainting -----


@pytest.mark.parametrize("name", EDITING_SAMPLERS)
@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_keeps_every_unmasked_pixel(pipe, picture, mask, name, resample):
    out = pipe(2, 6, name, image=picture, mask_image=mask, resample=resample, jump_length=2, seed=1)
    keep = np.array(mask) == 0
    for image in out:
        assert np.array_equal(np.array(image)[keep], np.array(picture)[keep])  # exact after quantisation
        assert not np.array_equal(np.array(image)[~keep], np.array(picture)[~keep])  # the hole is new


@pytest.mark.parametrize("grey", [0, 127])  # black, and a grey that is not above one half
def test_a_mask_with_nothing_to_regenerate_is_refused(pipe, picture, grey):
    with pytest.raises(ValueError, match=r"^the mask has no white pixel \(above one half\), so inpainting would"):
        pipe(1, 4, image=picture, mask_image=Image.new("L", (8, 8), grey))


def test_repaint_resampling_costs_resample_times_the_evaluations(pipe, picture, mask):
    seen = []
    pipe(1, 6, image=picture, mask_image=mask, resample=3, jump_length=2, callback=lambda i, t, s: seen.append(i))
    assert seen == visit_order(0, 6, 2, 3) and len(seen) == 18


def test_inpainting_with_a_perfect_denoiser_blends_nothing_in_the_known_region(editing_pipeline):
    """A model that always predicts x̂_0 = the image makes the hole fill with the image itself."""
    pipe = editing_pipeline("ddim")
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x0 = image * 2 - 1
    alphas_cumprod = pipe.scheduler.schedule.alphas_cumprod

    def perfect(sample, timesteps, class_labels=None):
        abar = alphas_cumprod[timesteps.long()].float().reshape(-1, 1, 1, 1)
        return (sample - abar.sqrt() * x0) / (1 - abar).sqrt()

    pipe.unet.forward = perfect
    m = torch.zeros(8, 8)
    m[:4] = 1
    out = pipe(1, 20, image=image, mask_image=m, resample=2, jump_length=5, output_type="tensor")
    torch.testing.assert_close(out, image, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 1.5}, r"strength must be in \[0, 1\], got 1.5"),
        ({"strength": -0.1}, r"strength must be in \[0, 1\], got -0.1"),
        ({"mask_image": Image.new("L", (6, 8))}, r"the mask is 8x6 but the image is 8x8"),
        ({"image": None, "mask_image": Image.new("L", (8, 8))}, r"mask_image and strength need an image to edit"),
        ({"image": None, "strength": 0.5}, r"mask_image and strength need an image to edit"),
        ({"mask_image": Image.new("L", (8, 8)), "resample": 0}, r"jump_length and resample must be positive"),
        ({"scheduler": "heun"}, r"the heun sampler evaluates the model 2 times per step"),
        ({"image": torch.rand(1, 3, 8, 8)}, r"image tensor must have shape \(n, 1, h, w\)"),
        ({"image": torch.rand(1, 1, 8, 8) + 1}, r"image tensor values must be finite and in \[0, 1\]"),
        ({"image": "picture.png"}, r"image must be a PIL image, a list of them, or a tensor, got str"),
        ({"resample": 3}, r"resample and jump_length are RePaint settings for inpainting: give mask_image too"),
        ({"image": None, "latents": np.zeros((1, 1, 8, 8))}, r"latents must be a torch.Tensor, got ndarray"),
        ({"image": None, "latents": torch.zeros(2, 1, 8, 8)}, r"latents must have shape \(1, 1, 8, 8\)"),
        ({"size": (16, 16)}, r"size \(16, 16\) differs from the image's \(8, 8\)"),
    ],
)
def test_bad_editing_arguments_are_clear_errors(pipe, picture, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**({"num_images": 1, "num_inference_steps": 4, "image": picture} | kwargs))


# ----- inversion and interpolation -----


# ----- 4-channel (RGBA) models -----


@pytest.fixture(scope="module")
def rgba_pipe(make_tiny_pipeline):
    """A tiny RGBA pipeline (in and out channels 4) that edits with DPM-Solver++."""
    return make_tiny_pipeline(in_channels=4, out_channels=4, scheduler=get_scheduler("dpmsolver++", {}))


def test_rgba_inputs_keep_their_alpha_and_other_images_become_opaque():
    pixels = np.array([[[255, 0, 0, 0], [0, 255, 0, 51]]], dtype=np.uint8)  # (1, 2, 4)
    x = images_to_tensor(Image.fromarray(pixels, mode="RGBA"), 4)
    assert x.shape == (1, 4, 1, 2)
    torch.testing.assert_close(x[0, 3], torch.tensor([[-1.0, 51 / 127.5 - 1]]), rtol=0, atol=0)
    rgb = images_to_tensor(Image.new("RGB", (2, 1), (10, 20, 30)), 4)  # no alpha: opaque
    assert rgb.shape == (1, 4, 1, 2) and (rgb[0, 3] == 1).all()
    torch.testing.assert_close(rgb[0, :3, 0, 0], torch.tensor([10.0, 20.0, 30.0]) / 127.5 - 1, rtol=0, atol=0)
    grey = images_to_tensor(Image.new("L", (2, 1), 7), 4)[0, :, 0, 0]  # grey to RGB, opaque
    torch.testing.assert_close(grey, torch.tensor([7 / 127.5 - 1] * 3 + [1.0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"image tensor must have shape \(n, 4, h, w\) or \(4, h, w\)"):
        images_to_tensor(torch.rand(1, 3, 2, 2), 4)


def test_rgba_inputs_of_one_and_three_channel_models_are_composited_on_the_background_given():
    pixels = np.array([[[200, 0, 0, 0], [0, 255, 0, 255]]], dtype=np.uint8)  # transparent red, opaque green
    image = Image.fromarray(pixels)
    assert images_to_tensor(image, 3)[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # white by default
    black = images_to_tensor(image, 3, background=(0, 0, 0))[0]  # (3, 1, 2)
    assert black[:, 0, 0].tolist() == [-1.0, -1.0, -1.0] and black[:, 0, 1].tolist() == [-1.0, 1.0, -1.0]
    assert images_to_tensor(image, 1, background=(0, 0, 0))[0, 0, 0, 0].item() == -1.0


def test_img2img_and_inpainting_of_an_rgba_model_give_rgba_images(rgba_pipe, mask):
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA")
    read = np.asarray(to_mode(picture, 4))  # as the model reads it: RGB 0 under its one pixel of alpha 0
    assert (np.asarray(picture)[:, :, 3] == 0).sum() == 1 and (read[read[:, :, 3] == 0] == 0).all()
    unchanged = rgba_pipe(1, 4, image=picture, strength=0.0)
    assert unchanged[0].mode == "RGBA" and np.array_equal(np.asarray(unchanged[0]), read)
    edited = rgba_pipe(2, 4, image=picture, strength=0.5, seed=0)
    assert [(image.mode, image.size) for image in edited] == [("RGBA", (8, 8))] * 2
    inpainted = rgba_pipe(1, 4, image=picture, mask_image=mask, seed=0)  # an L mask, one for all 4 channels
    keep = np.asarray(mask) == 0
    assert inpainted[0].mode == "RGBA" and np.array_equal(np.asarray(inpainted[0])[keep], read[keep])
