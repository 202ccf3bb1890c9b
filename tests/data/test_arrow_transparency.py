"""`diffusion.data.arrow.ArrowImages` and transparency: a prepared dataset's RGBA pixels composited on each
item's background at 1 and 3 channels, kept at 4, with RGB zeroed under alpha 0 where the manifest says an
earlier version stored a file's own; composited pixels refused at another background or at 4 channels, in one
line naming a way out that works.

Datasets are made in the test as in test_arrow.py, whose helpers these are.
"""

import numpy as np
import pytest
from PIL import Image
from test_arrow import ORIGIN, SEEDS, SOURCE, _hwc, _noise, _prepared  # tests/data is on sys.path

from diffusion.data import augmentation, background_colour, crop, to_pixels
from diffusion.data.arrow import ArrowImages
from diffusion.image import to_mode

pytest.importorskip("datasets")


def _rgba_noise(height: int, width: int, seed: int) -> np.ndarray:
    """RGBA noise whose alpha takes every value, 0 and 255 included."""
    return _noise(height, width, 4, seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("background", ["black", "random"])
def test_prepared_rgba_with_random_crop_is_composited_on_each_items_background(channels, background):
    pixels = np.stack([_rgba_noise(12, 16, seed=s) for s in range(2)])  # stored 12x16 RGBA, trained at 8x8
    dataset = ArrowImages(
        _prepared(pixels), SOURCE, (8, 8), channels, random_crop=True, background=background, shape=(12, 16, 4),
        composited_on=None,
    )  # fmt: skip
    keys = [(i, seed) for i in range(2) for seed in SEEDS]
    for (i, seed), got in zip(keys, _hwc(dataset.batch(keys).images), strict=True):
        crop_at, flip = augmentation(seed)
        colour = (0, 0, 0) if background == "black" else background_colour("random", seed)
        window = to_pixels(to_mode(Image.fromarray(crop(pixels[i], (8, 8), crop_at)), channels, colour))
        np.testing.assert_array_equal(got, window[:, ::-1] if flip else window, err_msg=f"item {i}, seed {seed}")


def test_prepared_rgba_at_four_channels_is_as_stored():
    pixels = np.stack([_rgba_noise(8, 8, seed=s) for s in range(2)])
    dataset = ArrowImages(_prepared(pixels), SOURCE, (8, 8), 4, hflip=False, shape=(8, 8, 4), composited_on=None)
    np.testing.assert_array_equal(_hwc(dataset.batch([(0, 0), (1, 1)]).images), pixels)


def _stale_rgba(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(``(n, h, w, 4)`` RGBA noise, a third of it fully transparent over RGB 1..255, as an earlier preparation
    stored a file's pixels; the same with RGB 0 under alpha 0, as `diffusion.image.to_mode` gives them)."""
    stale = np.stack([_rgba_noise(height, width, seed=s) for s in range(n)])
    stale[:, :, :, :3] |= 1  # no RGB 0 by chance
    stale[:, :, :, 3] *= np.random.default_rng(9).random((n, height, width)) > 1 / 3
    return stale, stale * (stale[:, :, :, 3:] > 0)


@pytest.mark.parametrize(("stored", "random_crop"), [((8, 8), False), ((8, 12), False), ((12, 16), True)])
def test_stale_rgb_under_alpha_0_is_zeroed_at_four_channels(stored, random_crop):
    """At the size, cropped without a resize (8x12 covers 8x8 as it is), and a random window."""
    stale, zeroed = _stale_rgba(3, *stored)
    clear = stale[:, :, :, 3] == 0
    assert clear.mean() > 0.2 and (stale[clear][:, :3] > 0).all()
    options = {"random_crop": random_crop, "shape": (*stored, 4), "composited_on": None}
    dataset = ArrowImages(_prepared(stale), SOURCE, (8, 8), 4, stale_rgb=True, **options)
    keys = [(i, seed) for i in range(3) for seed in SEEDS]
    got = _hwc(dataset.batch(keys).images)  # (b, 8, 8, 4)
    expected = _hwc(ArrowImages(_prepared(zeroed), SOURCE, (8, 8), 4, **options).batch(keys).images)
    np.testing.assert_array_equal(got, expected)
    assert (got[got[:, :, :, 3] == 0][:, :3] == 0).all() and (got[:, :, :, 3] == 0).sum() > 0.2 * got[..., 3].size
    if stored == (8, 8):  # the pixels themselves: RGB 0 exactly where alpha is 0, the rest as stored
        flips = [augmentation(seed)[1] for _, seed in keys]
        stored_order = [zeroed[i][:, ::-1] if flip else zeroed[i] for (i, _), flip in zip(keys, flips, strict=True)]
        np.testing.assert_array_equal(got, np.stack(stored_order))
        for i in range(3):
            np.testing.assert_array_equal(dataset.pixels(i), zeroed[i])  # what preparing from it stores
            np.testing.assert_array_equal(dataset.pixels(i)[~clear[i]], stale[i][~clear[i]])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("stored", "random_crop"), [((8, 8), False), ((12, 16), False), ((12, 16), True)])
def test_stale_rgb_under_alpha_0_composites_as_zeroed_rgb_does(channels, stored, random_crop):
    """At 1 and 3 channels nothing is zeroed: compositing, and a resize, already ignore RGB under alpha 0."""
    stale, zeroed = _stale_rgba(3, *stored)
    options = {"random_crop": random_crop, "background": "random", "shape": (*stored, 4), "composited_on": None}
    keys = [(i, seed) for i in range(3) for seed in SEEDS]
    dataset = ArrowImages(_prepared(stale), SOURCE, (8, 8), channels, stale_rgb=True, **options)
    assert not dataset.zero_transparent_rgb
    expected = ArrowImages(_prepared(zeroed), SOURCE, (8, 8), channels, **options).batch(keys).images
    np.testing.assert_array_equal(dataset.batch(keys).images.numpy(), expected.numpy())


@pytest.mark.parametrize(
    ("channels", "background", "message"),
    [
        (
            4,
            "white",
            "src was prepared with 3 channel(s), its transparency composited on white: prepare /data/faces again "
            "with diffusion-prepare --channels 4 to train with --channels 4",
        ),
        (
            3,
            "black",
            "src was prepared with its transparency composited on white, so --background black cannot apply: train it "
            "with --background white, or prepare /data/faces again with diffusion-prepare --channels 4 to choose the "
            "background at training time",
        ),
        (
            3,
            "random",
            "src was prepared with its transparency composited on white, so --background random cannot apply: train "
            "it with --background white, or prepare /data/faces again with diffusion-prepare --channels 4 to choose "
            "the background at training time",
        ),
    ],
)
def test_prepared_composited_pixels_refuse_another_background_or_four_channels(channels, background, message):
    pixels = np.stack([_noise(8, 8, seed=s) for s in range(2)])
    with pytest.raises(ValueError) as refused:
        ArrowImages(
            _prepared(pixels), SOURCE, (8, 8), channels, background=background, shape=(8, 8, 3), prepared_from=ORIGIN
        )
    assert str(refused.value) == message
    on_black = ArrowImages(
        _prepared(pixels), SOURCE, (8, 8), 3, background="black", shape=(8, 8, 3), composited_on="black"
    )
    np.testing.assert_array_equal(on_black.pixels(1), pixels[1])  # composited on black, trained on black
