"""`diffusion.request`: a call's arguments resolved once, its batches, and what each batch starts from."""

import pytest
import torch

from diffusion.request import build_request
from diffusion.rng import randn_tensor

CALL = dict(
    num_images=5, num_inference_steps=4, scheduler="ddim", eta=None, seed=7, generator=None, batch_size=2,
    size=None, class_labels=None, guidance_scale=None, guidance_rescale=0.0, image=None, strength=None,
    mask_image=None, jump_length=10, resample=1, latents=None, output_type="tensor", progress=False, callback=None,
)  # fmt: skip


def test_batches_cover_every_image_once_and_start_from_each_images_seed(tiny_pipeline):
    request = build_request(tiny_pipeline, CALL)
    assert [(rows.start, rows.stop) for rows in request.batches()] == [(0, 2), (2, 4), (4, 5)]
    assert request.num_batches == 3 and request.order == [0, 1, 2, 3] and request.shape == (1, 8, 8)
    _, labels, x, edit = request.start(slice(2, 4), torch.device("cpu"))
    expected = randn_tensor((2, 1, 8, 8), [torch.Generator().manual_seed(s) for s in (9, 10)])
    assert labels is None and edit is None and torch.equal(x, expected)  # images 2 and 3: seeds 9 and 10


def test_an_img2img_batch_starts_from_the_image_noised_to_its_first_entry(tiny_pipeline):
    image = torch.full((1, 8, 8), 0.75)  # x_0 = 0.5 in [-1, 1]
    request = build_request(tiny_pipeline, CALL | {"image": image, "strength": 0.5})
    assert request.order == [2, 3] and request.edit.start == 2
    _, _, x, edit = request.start(slice(0, 2), torch.device("cpu"))
    alpha, sigma = request.sampler.noise_level(2)
    noise = randn_tensor((2, 1, 8, 8), [torch.Generator().manual_seed(s) for s in (7, 8)])
    torch.testing.assert_close(x, alpha * 0.5 + sigma * noise, rtol=0, atol=1e-6)
    assert edit.mask is None


def test_arguments_are_checked_before_any_work(tiny_pipeline):
    with pytest.raises(ValueError, match=r"^give seed or generator, not both$"):
        build_request(tiny_pipeline, CALL | {"generator": torch.Generator()})
    with pytest.raises(ValueError, match=r"^resample and jump_length are RePaint settings for inpainting"):
        build_request(tiny_pipeline, CALL | {"resample": 2})
