"""diffusion.data.prepare with transparency: RGBA stored with its alpha channel (``channels=4``) for training to
composite on the background it chooses, or 1 and 3 channels composited on ``background`` and recorded in the
manifest; a background given with 4 channels is refused."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_prepare import SIZE, counting_calls, stored_pixels  # tests/data is on sys.path

from diffusion.data import augmentation, open_images
from diffusion.data.prepare import prepare

pytest.importorskip("datasets")


def transparent_folder(root: Path) -> dict[str, np.ndarray]:
    """8x8 files with transparency (RGBA: a transparent corner, one pixel half so; LA of random alpha) and an
    opaque RGB one; their RGBA pixels as read (`diffusion.image.to_mode`: RGB 0 where alpha is 0)."""
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    rgba[:3, :3, 3], rgba[7, 7, 3] = 0, 128
    gray, alpha = rng.integers(0, 256, (8, 8), dtype=np.uint8), rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    root.mkdir()
    Image.fromarray(rgba).save(root / "a.png")
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(root / "b.png")
    Image.fromarray(rgb).save(root / "c.png")
    opaque = np.full((8, 8, 1), 255, dtype=np.uint8)
    files = {"a.png": rgba, "b.png": np.dstack([gray, gray, gray, alpha]), "c.png": np.dstack([rgb, opaque])}
    return {name: pixels * (pixels[:, :, 3:] > 0) for name, pixels in files.items()}


def test_four_channels_store_the_alpha_channel(tmp_path):
    files = transparent_folder(tmp_path / "images")
    manifest = prepare(tmp_path / "images", tmp_path / "out", size=SIZE, channels=4, workers=1)
    assert manifest["shape"] == [8, 8, 4] and manifest["settings"]["background"] is None
    np.testing.assert_array_equal(stored_pixels(tmp_path / "out", (8, 8, 4)), np.stack(list(files.values())))


@pytest.mark.parametrize(("background", "colour"), [("white", 255), ("black", 0), (None, 255)])
def test_one_and_three_channels_store_transparency_on_the_background(tmp_path, background, colour):
    files = transparent_folder(tmp_path / "images")
    manifest = prepare(tmp_path / "images", tmp_path / "out", size=SIZE, background=background, workers=1)
    assert manifest["settings"]["background"] == (background or "white")  # None: white, the default
    stored = stored_pixels(tmp_path / "out", (8, 8, 3))
    assert (stored[0, :3, :3] == colour).all()  # a.png's transparent corner
    np.testing.assert_array_equal(stored[0, 3:7, 3:7], files["a.png"][3:7, 3:7, :3])  # opaque: as in the file
    np.testing.assert_array_equal(stored[2], files["c.png"][:, :, :3])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("background", ["white", "black", "random"])
def test_an_rgba_preparation_gives_the_batches_of_its_folder_on_any_background(tmp_path, channels, background):
    transparent_folder(tmp_path / "images")
    prepare(tmp_path / "images", tmp_path / "out", size=SIZE, channels=4, workers=1)
    keys = [(i, seed) for seed in range(8) for i in range(3)]  # seeds that flip and seeds that do not
    folder = open_images(tmp_path / "images", SIZE, channels, background=background).batch(keys)
    prepared = open_images(tmp_path / "out", SIZE, channels, background=background).batch(keys)
    assert prepared.images.shape == (len(keys), channels, 8, 8)
    np.testing.assert_array_equal(prepared.images.numpy(), folder.images.numpy())  # pixel for pixel
    a_png = zip(keys[::3], prepared.images[::3], strict=True)  # item 0 of each seed
    corners = {tuple(image[:, 0, -1 if augmentation(seed)[1] else 0].tolist()) for (_, seed), image in a_png}
    assert len(corners) == (8 if background == "random" else 1)  # its transparent corner, flipped or not


def test_a_manifest_from_before_the_background_setting_was_prepared_on_white(tmp_path, monkeypatch):
    image_folder = tmp_path / "images"
    transparent_folder(image_folder)
    out = tmp_path / "prepared"
    manifest = prepare(image_folder, out, size=SIZE, workers=1)
    del manifest["settings"]["background"]  # as versions without the setting wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    calls = counting_calls(monkeypatch)

    assert prepare(image_folder, out, size=SIZE, workers=1) == manifest and calls == []  # the same preparation
    with pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=SIZE, background="black", workers=1)
    assert str(refused.value) == (
        f"{out} holds a dataset prepared with background white, not black: add --overwrite to replace it, or "
        "give another --out"
    )
    with pytest.raises(ValueError, match=r"composited on white, so --background black cannot apply: train it with "):
        open_images(out, SIZE, 3, background="black")
    assert len(open_images(out, SIZE, 3)) == 3


@pytest.mark.parametrize("background", ["white", "black"])
def test_any_background_given_with_four_channels_is_refused(tmp_path, background):
    transparent_folder(tmp_path / "images")
    with pytest.raises(ValueError) as refused:
        prepare(tmp_path / "images", tmp_path / "out", size=SIZE, channels=4, background=background, workers=1)
    assert str(refused.value) == (
        f"--background {background} has no effect with --channels 4, which keeps transparency as the alpha channel: "
        "leave --background out, or prepare at --channels 1 or 3"
    )
    assert not (tmp_path / "out").exists()


def test_an_rgba_file_already_at_the_prepared_size_stores_rgb_0_under_full_transparency(tmp_path):
    """As a resized one does (Pillow resizes RGBA premultiplied): what the PNG keeps under alpha 0 is dropped."""
    root = tmp_path / "images"
    root.mkdir()
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :4], pixels[:, 4:] = (255, 255, 255, 0), (10, 20, 30, 255)  # white under alpha 0, beside opaque
    Image.fromarray(pixels).save(root / "at-size.png")
    Image.fromarray(np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)).save(root / "twice.png")  # resized 16 -> 8
    prepare(root, tmp_path / "out", size=SIZE, channels=4, workers=1)
    at_size, resized = stored_pixels(tmp_path / "out", (8, 8, 4))  # (h, w, 4) each
    expected = np.zeros((8, 8, 4), dtype=np.uint8)
    expected[:, 4:] = (10, 20, 30, 255)
    np.testing.assert_array_equal(at_size, expected)
    clear = resized[:, :, 3] == 0
    assert clear[:, :3].all() and (resized[clear][:, :3] == 0).all()  # the resize's transparency: RGB 0 too
