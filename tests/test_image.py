"""`diffusion.image`: PIL modes to the model's channels, tensors to images, grids, PNG and GIF files."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.image import (
    BLACK,
    CHECKER_GREYS,
    CHECKER_SQUARE,
    WHITE,
    checkerboard,
    has_alpha,
    input_background,
    make_grid,
    on_checkerboard,
    save_gif,
    save_png,
    to_mode,
    to_pil,
)


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


def test_four_channels_drop_what_a_png_stores_under_full_transparency_as_a_resize_does(tmp_path):
    pixels = np.array([[[255, 255, 255, 0], [200, 100, 50, 255], [255, 255, 255, 128]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as png:
        assert np.asarray(png)[0, 0].tolist() == [255, 255, 255, 0]  # the file keeps white under alpha 0
        rgba = to_mode(png, 4)
    assert np.asarray(rgba).tolist() == [[[0, 0, 0, 0], [200, 100, 50, 255], [255, 255, 255, 128]]]
    # Pillow resizes RGBA premultiplied (as `diffusion.data.fit` does, bicubic): RGB 0 under alpha 0.
    wide = np.repeat(np.repeat(pixels, 4, axis=1), 2, axis=0)  # (2, 12, 4): 4 columns of each pixel
    resized = np.asarray(Image.fromarray(wide).resize((6, 2), Image.Resampling.BICUBIC))
    assert resized[:, 0].tolist() == [[0, 0, 0, 0]] * 2
    la = Image.fromarray(np.array([[[90, 0]]], dtype=np.uint8), mode="LA")  # grey 90 under alpha 0
    assert np.asarray(to_mode(la, 4)).tolist() == [[[0, 0, 0, 0]]]


@pytest.mark.parametrize("channels", [0, 2, 5])
def test_to_mode_refuses_a_channel_count_without_an_image_mode(channels):
    with pytest.raises(ValueError) as refused:
        to_mode(Image.new("RGB", (1, 1)), channels)
    assert str(refused.value) == f"images convert to 1 (L), 3 (RGB) or 4 (RGBA) channels, not {channels}"


def test_a_models_inputs_are_composited_on_its_background_and_on_white_for_random():
    assert (BLACK, WHITE) == ((0, 0, 0), (255, 255, 255))
    backgrounds = {name: input_background(name) for name in ("white", "black", "random", None)}
    assert backgrounds == {"white": WHITE, "black": BLACK, "random": WHITE, None: WHITE}


def test_four_channel_tensors_become_rgba_images_and_other_counts_are_refused():
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 1.0]], [[1.0, 1.0]], [[0.0, 0.2]]]])  # (1, 4, 1, 2)
    (image,) = to_pil(x)
    assert image.mode == "RGBA" and np.asarray(image).tolist() == [[[0, 128, 255, 0], [255, 255, 255, 51]]]
    with pytest.raises(ValueError, match=r"PIL images have 1 \(L\), 3 \(RGB\) or 4 \(RGBA\) channels, got a tensor "):
        to_pil(torch.zeros(1, 2, 4, 4))


def test_the_checkerboard_alternates_light_and_dark_squares():
    pixels = np.asarray(checkerboard((2 * CHECKER_SQUARE + 1, CHECKER_SQUARE + 1)))  # (h, w, 3)
    light, dark = CHECKER_GREYS
    assert pixels.shape == (CHECKER_SQUARE + 1, 2 * CHECKER_SQUARE + 1, 3) and (light, dark) == (204, 153)
    s = CHECKER_SQUARE
    assert [pixels[0, 0, 0], pixels[0, s - 1, 0], pixels[0, s, 0], pixels[0, 2 * s, 0]] == [light, light, dark, light]
    assert [pixels[s, 0, 0], pixels[s, s, 0]] == [dark, light]  # the next row of squares starts dark
    assert (pixels == pixels[:, :, :1]).all()  # grey: R = G = B


def test_an_rgba_grid_shows_transparency_on_a_checkerboard_and_is_rgb():
    s, (light, dark) = CHECKER_SQUARE, CHECKER_GREYS
    clear = Image.new("RGBA", (2 * s, s), (255, 0, 0, 0))  # fully transparent (red underneath)
    opaque = Image.new("RGBA", (2 * s, s), (10, 20, 30, 255))
    half = Image.new("RGBA", (2 * s, s), (0, 0, 0, 128))  # black at alpha 128/255 over the greys
    grid = make_grid([clear, opaque, half], nrow=3, padding=1)
    assert grid.mode == "RGB" and grid.size == (3 * (2 * s + 1) + 1, s + 2)
    pixels = np.asarray(grid).astype(int)  # (h, w, 3)
    tile = 2 * s + 1  # the x step from one image to the next
    assert pixels[1, 1].tolist() == [light] * 3 and pixels[1, 1 + s].tolist() == [dark] * 3  # the clear image
    assert pixels[1, 1 + tile].tolist() == [10, 20, 30] and pixels[s, tile + 2 * s].tolist() == [10, 20, 30]
    # "Over" a grey g: black at alpha 128/255 leaves round(g * 127 / 255): 102 and 76.
    half_pixels = [pixels[1, 1 + 2 * tile, 0], pixels[1, 1 + 2 * tile + s, 0]]
    assert half_pixels == [round(light * 127 / 255), round(dark * 127 / 255)] == [102, 76]
    assert pixels[0, 0].tolist() == [0, 0, 0]  # the padding stays black
    # Opaque RGBA and plain RGB images tile to the same grid; a grid of L images stays L.
    plain = make_grid([Image.new("RGB", (2, 2), (10, 20, 30))] * 2)
    assert np.array_equal(np.asarray(make_grid([Image.new("RGBA", (2, 2), (10, 20, 30, 255))] * 2)), np.asarray(plain))
    assert make_grid([Image.new("L", (2, 2), 9)]).mode == "L"


def test_on_checkerboard_composites_any_mode_with_alpha():
    light = CHECKER_GREYS[0]
    la = Image.new("LA", (1, 1), (7, 0))  # grey with alpha, fully transparent
    assert has_alpha(la) and not has_alpha(Image.new("RGB", (1, 1)))
    assert np.asarray(on_checkerboard(la)).tolist() == [[[light] * 3]]


def test_a_gif_of_rgba_frames_shows_them_on_the_checkerboard(tmp_path):
    s, (light, dark) = CHECKER_SQUARE, CHECKER_GREYS
    frames = [Image.new("RGBA", (2 * s, s), (0, 0, 0, 0)), Image.new("RGBA", (2 * s, s), (200, 40, 40, 255))]
    save_gif(frames, tmp_path / "a.gif")
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 2
        first = np.asarray(gif.convert("RGB"))
        gif.seek(1)
        second = np.asarray(gif.convert("RGB"))
    assert first[0, 0].tolist() == [light] * 3 and first[0, s].tolist() == [dark] * 3
    assert (second == [200, 40, 40]).all()
