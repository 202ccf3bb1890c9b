"""`diffusion.cli.sample_files` through sample.py: what a 4-channel (RGBA) model writes, with real transparency
in its PNGs and on a checkerboard in its grids and GIFs; the input images of a model trained on another background
than white; models whose channels no image has."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion import cli
from diffusion.image import on_checkerboard
from diffusion.io.model_folder import write_model_folder
from diffusion.models import UNet, UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler


def model_folder(path: Path, channels: int, background: str = "white") -> Path:
    """A tiny unconditional model folder: in and out ``channels``, 8x8, random weights (torch seed 0)."""
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=channels,
        out_channels=channels,
        sample_size=(8, 8),
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        norm_groups=8,
    )
    write_model_folder(path, UNet(config), DDIMScheduler(), "ddim", [], background)
    return path


@pytest.fixture(scope="module")
def rgba_model(tmp_path_factory) -> Path:
    return model_folder(tmp_path_factory.mktemp("rgba") / "model", 4)


def test_pngs_of_an_rgba_model_keep_transparency_and_its_grid_shows_a_checkerboard(rgba_model, tmp_path):
    out, grid = tmp_path / "out", tmp_path / "grid.png"
    args = ["--model", str(rgba_model), "--num-images", "2", "--steps", "2", "--out", str(out), "--grid", str(grid)]
    assert cli.sample_main(args) == 0
    expected = DiffusionPipeline.from_pretrained(rgba_model)(num_images=2, num_inference_steps=2, seed=0)
    written = [Image.open(out / f"{seed}.png") for seed in (0, 1)]
    for image, pipeline_image in zip(written, expected, strict=True):
        assert image.mode == "RGBA" and image.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(pipeline_image))
    assert any((np.asarray(image)[:, :, 3] < 255).any() for image in written)  # some real transparency
    with Image.open(grid) as tiles:
        assert tiles.mode == "RGB" and tiles.size == (2 * 10 + 2, 10 + 2)  # 2 columns of 8x8 with 2px padding
        pixels = np.asarray(tiles)
    for i, image in enumerate(written):
        left = 2 + 10 * i
        np.testing.assert_array_equal(pixels[2:10, left : left + 8], np.asarray(on_checkerboard(image)))


def test_an_rgba_interpolation_is_a_checkerboard_strip_and_gif(rgba_model, tmp_path):
    out = tmp_path / "o"
    args = ["--model", str(rgba_model), "--steps", "2", "--out", str(out), "--interpolate", "0", "1", "--frames", "3"]
    assert cli.sample_main(args) == 0
    frames = DiffusionPipeline.from_pretrained(rgba_model).interpolate(0, 1, num_frames=3, num_inference_steps=2)
    with Image.open(out / "interpolation.png") as strip:
        assert strip.mode == "RGB" and strip.size == (3 * 10 + 2, 12)
        np.testing.assert_array_equal(np.asarray(strip)[2:10, 2:10], np.asarray(on_checkerboard(frames[0])))
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (8, 8)


def test_an_rgba_model_edits_an_rgba_init_image(rgba_model, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "in.png")
    out = tmp_path / "o"
    args = ["--model", str(rgba_model), "--steps", "2", "--num-images", "1", "--out", str(out)]
    assert cli.sample_main([*args, "--init-image", str(tmp_path / "in.png"), "--strength", "0"]) == 0
    with Image.open(out / "0.png") as edited:
        assert edited.mode == "RGBA"
        # strength 0 returns the image, alpha and all, as the model reads it: RGB 0 where alpha is 0
        np.testing.assert_array_equal(np.asarray(edited), pixels * (pixels[:, :, 3:] > 0))
        assert (pixels[:, :, 3] == 0).sum() == 1


@pytest.mark.parametrize(("background", "colour"), [("black", 0), ("white", 255), ("random", 255)])
def test_an_rgba_init_image_is_composited_on_the_models_background(tmp_path, background, colour):
    model = model_folder(tmp_path / "model", 3, background)
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:4] = (255, 255, 255, 0)  # transparent top half (white underneath)
    pixels[4:] = (10, 20, 30, 255)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    args = ["--model", str(model), "--steps", "2", "--num-images", "1", "--out", str(tmp_path / "o")]
    assert cli.sample_main([*args, "--init-image", str(tmp_path / "in.png"), "--strength", "0"]) == 0
    with Image.open(tmp_path / "o" / "0.png") as edited:  # strength 0 returns the image as the model reads it
        assert edited.mode == "RGB"
        assert np.asarray(edited)[:4].tolist() == [[[colour] * 3] * 8] * 4
        assert np.asarray(edited)[4:].tolist() == [[[10, 20, 30]] * 8] * 4


@pytest.mark.parametrize("flags", [["--num-images", "1"], ["--interpolate", "0", "1"]])
def test_a_model_whose_channels_no_image_has_is_refused_at_load_in_one_line(tmp_path, capsys, flags):
    model = model_folder(tmp_path / "model", 2)
    assert cli.sample_main(["--model", str(model), "--steps", "2", "--out", str(tmp_path / "o"), *flags]) == 2
    assert capsys.readouterr().err == (
        f"diffusion-sample: error: --model {model} makes 2-channel images, and diffusion-sample reads and writes "
        "images of 1 (L), 3 (RGB) or 4 (RGBA) channels: give another --model, or sample this one from Python with "
        "DiffusionPipeline and output_type='tensor'\n"
    )
