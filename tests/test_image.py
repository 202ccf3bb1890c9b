"""`diffusion.image`: PIL modes to the model's channels, tensors to images, grids, PNG and GIF files."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.image import make_grid, save_gif, save_png, to_mode, to_pil


def test_transparency_is_composited_on_white_and_high_bit_depth_is_scaled():
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), mode="RGBA")
    assert np.asarray(to_mode(rgba, 1)).tolist() == [[255, 0]]  # transparent black reads as white
    assert np.asarray(to_mode(rgba, 3)).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))  # mode I;16
    assert np.asarray(to_mode(sixteen, 1)).tolist() == [[0, 128, 255]]  # / 257, not clipped at 255


def test_tensors_in_0_1_become_rounded_8_bit_images_of_the_right_mode():
    gray = to_pil(torch.tensor([[[[0.0, 0.5, 1.0, 1.5]]]]))  # (1, 1, 1, 4); 1.5 clamps to 1
    assert gray[0].mode == "L" and np.asarray(gray[0]).tolist() == [[0, 128, 255, 255]]
    rgb = to_pil(torch.zeros(2, 3, 2, 2))
    assert [image.mode for image in rgb] == ["RGB", "RGB"] and rgb[0].size == (2, 2)


def test_a_grid_tiles_rows_with_padding():
    images = [Image.new("L", (3, 2), 10 * (i + 1)) for i in range(5)]
    grid = make_grid(images, nrow=3, padding=1)
    assert grid.size == (3 * 4 + 1, 2 * 3 + 1)  # 3 columns of 3 + 1, 2 rows of 2 + 1
    pixels = np.asarray(grid)
    assert pixels[1, 1] == 10 and pixels[1, 5] == 20 and pixels[4, 5] == 50 and pixels[0, 0] == 0
    with pytest.raises(ValueError, match="make_grid needs at least one image"):
        make_grid([])


def test_png_metadata_and_a_looping_gif_are_written(tmp_path):
    save_png(Image.new("L", (2, 2), 7), tmp_path / "a.png", {"seed": 3})
    with Image.open(tmp_path / "a.png") as png:
        assert png.text == {"seed": "3"} and np.asarray(png).tolist() == [[7, 7], [7, 7]]
    save_gif([Image.new("L", (2, 2), v) for v in (0, 255)], tmp_path / "a.gif", duration_ms=50)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 2 and gif.info["loop"] == 0 and gif.info["duration"] == 50


def test_to_mode_composites_on_the_background_or_keeps_alpha():
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [200, 100, 50, 255]]], dtype=np.uint8), mode="RGBA")
    assert np.asarray(to_mode(rgba, 3, (0, 0, 0))).tolist() == [[[0, 0, 0], [200, 100, 50]]]
    assert np.asarray(to_mode(rgba, 3, (10, 20, 30))).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    assert np.asarray(to_mode(rgba, 4)).tolist() == [[[0, 0, 0, 0], [200, 100, 50, 255]]]
    opaque = Image.fromarray(np.array([[[1, 2, 3]]], dtype=np.uint8), mode="RGB")
    assert np.asarray(to_mode(opaque, 4)).tolist() == [[[1, 2, 3, 255]]]
