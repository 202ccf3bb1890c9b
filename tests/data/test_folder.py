import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    find_image_files,
    fit,
    load_image,
    scan,
    to_tensor,
)
from diffusion.image import to_mode

EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"]
LOSSY = {".jpg", ".jpeg", ".webp"}  # formats whose decoded pixels may differ from what was saved


def _write(path: Path, image: Image.Image | np.ndarray, **save_args) -> Path:
    """Save an image (or a uint8/uint16 array) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **save_args)
    return path


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# find_image_files


def test_supported_extensions_are_exactly_the_documented_ones():
    assert set(EXTENSIONS) == IMAGE_EXTENSIONS


@pytest.mark.parametrize(
    "ext",
    [*EXTENSIONS, *(ext.upper() for ext in EXTENSIONS), ".Jpeg"],
)
def test_find_image_files_finds_every_supported_extension_recursively(tmp_path, ext):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / f"image{ext}").write_bytes(b"")  # only the name matters here; decoding is load_image's job
    for ignored in ("notes.txt", "image.png.bak", "README", "image.jpgx", "noext", ".png", "x.svg"):
        (deep / ignored).write_bytes(b"")
    assert find_image_files(tmp_path) == [deep / f"image{ext}"]


def test_find_image_files_orders_by_relative_path(tmp_path):
    # created out of order; expected order is the byte order of the relative posix paths
    names = ["z.png", "b/c/d.jpg", "b/a.gif", "a.PNG", "B.tiff", "b.png", "a/z.bmp", "a/a/a.webp"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    expected = ["B.tiff", "a.PNG", "a/a/a.webp", "a/z.bmp", "b.png", "b/a.gif", "b/c/d.jpg", "z.png"]
    found = find_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == expected
    assert find_image_files(str(tmp_path)) == found  # a str root gives the same list


@pytest.mark.parametrize("make_file", [False, True])
def test_find_image_files_missing_folder_names_it(tmp_path, make_file):
    missing = tmp_path / "no_such_folder"
    if make_file:  # a file is not a folder of images either
        missing.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        find_image_files(missing)


@pytest.mark.timeout(5)
def test_find_image_files_does_not_follow_a_symlink_loop(tmp_path):
    _write(tmp_path / "top.png", _noise(4, 4))
    _write(tmp_path / "sub" / "inner.png", _noise(4, 4))
    os.symlink(tmp_path, tmp_path / "sub" / "loop", target_is_directory=True)  # sub/loop -> sub's parent
    os.symlink(tmp_path / "sub", tmp_path / "link_to_sub", target_is_directory=True)
    assert find_image_files(tmp_path) == [tmp_path / "sub" / "inner.png", tmp_path / "top.png"]


# ---------------------------------------------------------------------------------------------------
# load_image / to_mode


@pytest.mark.parametrize("ext", [*EXTENSIONS, ".PNG"])
def test_load_image_decodes_every_supported_format(tmp_path, ext):
    colour = (0, 128, 255)
    path = _write(tmp_path / f"solid{ext}", Image.new("RGB", (7, 5), colour))
    image = load_image(path, channels=3)
    assert (image.mode, image.size) == ("RGB", (7, 5))
    tolerance = 8 if ext.lower() in LOSSY else 0
    assert np.abs(_pixels(image) - np.array(colour)).max() <= tolerance


@pytest.mark.parametrize(
    "mode, value, channels, expected_mode, expected",
    [
        # RGB -> L uses ITU-R 601 luma L = 0.299 R + 0.587 G + 0.114 B, rounded
        ("RGB", (200, 100, 50), 1, "L", round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)),
        ("RGB", (255, 255, 255), 1, "L", 255),
        ("RGB", (0, 0, 0), 1, "L", 0),
        ("RGB", (200, 100, 50), 3, "RGB", (200, 100, 50)),
        ("L", 77, 3, "RGB", (77, 77, 77)),
        ("L", 77, 1, "L", 77),
    ],
)
def test_load_image_converts_grey_and_colour(tmp_path, mode, value, channels, expected_mode, expected):
    path = _write(tmp_path / "solid.png", Image.new(mode, (6, 4), value))
    image = load_image(path, channels)
    assert (image.mode, image.size) == (expected_mode, (6, 4))
    want = np.broadcast_to(np.array(expected), (4, 6, channels) if channels == 3 else (4, 6))
    np.testing.assert_array_equal(_pixels(image), want)


@pytest.mark.parametrize("channels", [1, 3])
def test_palette_transparency_is_composited_on_white(tmp_path, channels):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)  # pixel 0 has index 0 (transparent), pixel 1 index 1
    path = _write(tmp_path / "palette.png", image, transparency=0)
    loaded = _pixels(load_image(path, channels))
    if channels == 3:
        np.testing.assert_array_equal(loaded, [[[255, 255, 255], [200, 100, 50]]])
    else:
        np.testing.assert_array_equal(loaded, [[255, round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)]])


@pytest.mark.parametrize("channels", [1, 3])
def test_rgba_is_composited_on_white(tmp_path, channels):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    loaded = _pixels(load_image(_write(tmp_path / "rgba.png", image), channels))
    # fully transparent -> white; opaque -> itself; alpha 128 over white -> 255 * (1 - 128/255) = 127
    if channels == 3:
        np.testing.assert_array_equal(loaded, [[[255, 255, 255], [10, 20, 30], [127, 127, 127]]])
    else:
        np.testing.assert_array_equal(loaded, [[255, round(0.299 * 10 + 0.587 * 20 + 0.114 * 30), 127]])


def test_grey_alpha_is_composited_on_white(tmp_path):
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (40, 255)])
    np.testing.assert_array_equal(_pixels(load_image(_write(tmp_path / "la.png", image), 1)), [[255, 40]])


@pytest.mark.parametrize(
    "mode, opaque, key, channels, expected",
    [
        ("RGB", (10, 20, 30), (1, 2, 3), 3, [[[10, 20, 30], [255, 255, 255]]]),
        ("L", 10, 7, 1, [[10, 255]]),
    ],
)
def test_colour_key_transparency_is_composited_on_white(tmp_path, mode, opaque, key, channels, expected):
    image = Image.new(mode, (2, 1), opaque)
    image.putpixel((1, 0), key)
    path = _write(tmp_path / "key.png", image, transparency=key)
    np.testing.assert_array_equal(_pixels(load_image(path, channels)), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_not_clipped(tmp_path, channels):
    # 16-bit -> 8-bit is v / 257 rounded: 65535 -> 255, 32896 -> 128, 257 -> 1, 0 -> 0
    array = np.array([[65535, 32896, 257, 0]], dtype=np.uint16)
    source = Image.fromarray(array)
    assert source.mode == "I;16"
    path = _write(tmp_path / "deep.png", source)
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"
    loaded = _pixels(load_image(path, channels))
    expected = np.array([[255, 128, 1, 0]])
    np.testing.assert_array_equal(loaded, expected if channels == 1 else np.repeat(expected[..., None], 3, 2))


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.uint16)), [[255, 128, 0]]),
        (Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.int32)), [[255, 128, 0]]),  # mode I
        (Image.fromarray(np.array([[200, 3, 0]], dtype=np.int32)), [[200, 3, 0]]),  # mode I, 8-bit range
        (Image.fromarray(np.array([[1.0, 0.5, 0.0]], dtype=np.float32)), [[255, 128, 0]]),  # mode F in [0, 1]
    ],
)
def test_to_mode_scales_high_bit_depth_grey(image, expected):
    converted = to_mode(image, 1)
    assert converted.mode == "L"
    np.testing.assert_array_equal(_pixels(converted), expected)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _write(tmp_path / "cmyk.jpg", Image.new("CMYK", (6, 4), (0, 255, 255, 0)), quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_image(path, 3)
    assert (image.mode, image.size) == ("RGB", (6, 4))
    assert np.abs(_pixels(image) - np.array([255, 0, 0])).max() <= 8  # JPEG: lossy


@pytest.mark.parametrize("channels", [1, 3])
def test_animated_gif_gives_the_first_frame(tmp_path, channels):
    first, second = Image.new("RGB", (5, 3), (255, 0, 0)), Image.new("RGB", (5, 3), (0, 0, 255))
    path = _write(tmp_path / "anim.gif", first, save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    image = load_image(path, channels)
    assert image.size == (5, 3)
    expected = np.array([255, 0, 0]) if channels == 3 else round(0.299 * 255)
    assert np.abs(_pixels(image) - expected).max() <= 2  # GIF palette quantisation


@pytest.mark.parametrize(
    "orientation, white_corner",
    [
        (6, "top-right"),  # displayed rotated 90 degrees clockwise: the top-left goes to the top-right
        (
            8,
            "bottom-left",
        ),  # displayed rotated 90 degrees anticlockwise: the top-left goes to the bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, white_corner):
    image = Image.new("RGB", (12, 6), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 3, 3))  # stored top-left corner is white
    exif = image.getexif()
    exif[274] = orientation
    path = _write(tmp_path / "rotated.jpg", image, exif=exif, quality=95)
    loaded = load_image(path, 1)
    assert loaded.size == (6, 12)  # (width, height) swapped
    pixels = _pixels(loaded)
    corners = {"top-right": pixels[:3, -3:], "bottom-left": pixels[-3:, :3], "top-left": pixels[:3, :3]}
    assert corners[white_corner].min() >= 200  # JPEG: lossy, so thresholds rather than exact values
    assert corners["top-left"].max() <= 55


# ---------------------------------------------------------------------------------------------------
# fit / to_tensor


@pytest.mark.parametrize("source", [(64, 64), (5, 7), (200, 3), (3, 200), (17, 9), (16, 16)])
@pytest.mark.parametrize("size", [(16, 16), (8, 24), (24, 8), (7, 5)])
def test_fit_gives_exactly_the_requested_size(source, size):
    image = Image.fromarray(_noise(source[1], source[0]))  # source is PIL (width, height)
    for crop_at in (None, (0.0, 0.0), (0.999, 0.999)):
        assert fit(image, size, crop_at).size == (size[1], size[0])


def test_fit_keeps_a_solid_colour():
    out = fit(Image.new("RGB", (40, 30), (12, 34, 56)), (8, 8), None)
    np.testing.assert_array_equal(_pixels(out), np.broadcast_to([12, 34, 56], (8, 8, 3)))


def test_fit_center_crop_picks_the_centre():
    halves = np.zeros((8, 16), dtype=np.uint8)
    halves[:, 8:] = 255  # left half black, right half white
    out = _pixels(fit(Image.fromarray(halves), (8, 8), None))
    # the centre 8 of 16 columns are 4..11, so the black/white edge is at output column 4
    np.testing.assert_array_equal(out, np.broadcast_to([0, 0, 0, 0, 255, 255, 255, 255], (8, 8)))


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize(
    "crop_at, first",
    [
        ((0.0, 0.0), 0),  # top-left
        ((0.999, 0.999), 12),  # bottom-right: the last of the 20 - 8 + 1 = 13 positions
        (None, 6),  # centre: 6 left over on each side
        ((0.5, 0.5), 6),
    ],
)
def test_fit_crop_at_positions_the_crop(axis, crop_at, first):
    ramp = np.broadcast_to(np.arange(20, dtype=np.uint8) * 10, (8, 20))  # column x holds 10 * x
    image = Image.fromarray(np.ascontiguousarray(ramp if axis == "x" else ramp.T))  # 8 x 20 or 20 x 8
    out = _pixels(fit(image, (8, 8), crop_at))  # no resize: one side already fits
    expected = np.broadcast_to(10 * np.arange(first, first + 8), (8, 8))
    np.testing.assert_array_equal(out, expected if axis == "x" else expected.T)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_tensor_is_float32_chw_in_minus_one_to_one(channels):
    values = np.array([[0, 255, 128, 1, 254]], dtype=np.uint8)  # height 1, width 5
    array = values if channels == 1 else np.stack([values, 255 - values, values], axis=-1)
    tensor = to_tensor(Image.fromarray(array))
    assert tensor.dtype == torch.float32
    assert tensor.shape == (channels, 1, 5)
    expected = torch.from_numpy(array.astype(np.float64)).reshape(1, 5, channels).permute(2, 0, 1)
    torch.testing.assert_close(tensor, (expected / 127.5 - 1).float(), rtol=0, atol=1e-6)
    assert tensor[0, 0, 0].item() == -1.0
    assert tensor[0, 0, 1].item() == 1.0


# ---------------------------------------------------------------------------------------------------
# scan / ImageFolder


def _good_and_bad_tree(root: Path) -> tuple[list[Path], list[Path]]:
    """3 good images in cat/ and dog/, 4 bad files (one alone in junk/); returns (good, bad), each sorted."""
    good = [
        _write(root / "cat" / "a.png", _noise(16, 16)),
        _write(root / "cat" / "b.jpg", _noise(20, 24)),
        _write(root / "dog" / "c.png", _noise(16, 32)),
    ]
    real_png = _write(root.parent / "source.png", _noise(32, 32)).read_bytes()
    real_jpg = _write(root.parent / "source.jpg", _noise(32, 32), quality=90).read_bytes()
    bad = {
        "cat/empty.png": b"",
        "cat/x.png": b"this is not an image\n",
        "dog/truncated.jpg": real_jpg[: len(real_jpg) // 2],
        "junk/truncated.png": real_png[: len(real_png) // 2],
    }
    for name, content in bad.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return good, [root / name for name in sorted(bad)]


def test_scan_skips_bad_files_and_warns_once(tmp_path, caplog):
    root = tmp_path / "data"
    good, bad = _good_and_bad_tree(root)
    caplog.set_level(logging.WARNING, logger="diffusion.data")
    report = scan(root, (16, 16), 3)
    assert report.files == good
    assert [path for path, _ in report.skipped] == bad
    reasons = dict(report.skipped)
    assert reasons[root / "cat" / "empty.png"].startswith("UnidentifiedImageError: cannot identify image file")
    assert reasons[root / "cat" / "x.png"].startswith("UnidentifiedImageError: cannot identify image file")
    assert reasons[root / "dog" / "truncated.jpg"].startswith("OSError: image file is truncated")
    assert reasons[root / "junk" / "truncated.png"].startswith("OSError: image file is truncated")
    assert report.class_names == ["cat", "dog"]  # junk/ holds no usable image
    assert report.labels == [0, 0, 1]
    assert report.upscaled == 0
    records = [r for r in caplog.records if r.name == "diffusion.data"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "skipped 4" in message
    assert all(str(path) in message for path in bad)


def test_a_validated_image_folder_labels_come_from_sorted_subfolders_of_usable_images(tmp_path):
    root = tmp_path / "data"
    _good_and_bad_tree(root)
    dataset = ImageFolder(root, (8, 8), 3, validate=True)
    assert len(dataset) == 3
    assert dataset.class_names == ["cat", "dog"]  # junk/ holds no usable image
    assert len(dataset.report.skipped) == 4
    labels = [dataset[(i, 0)][1] for i in range(len(dataset))]
    assert all(label.dtype == torch.int64 and label.shape == () for label in labels)
    assert [label.item() for label in labels] == [0, 0, 1]


def test_a_listed_image_folder_labels_every_image_file_by_its_subfolder(tmp_path):
    root = tmp_path / "data"
    good, bad = _good_and_bad_tree(root)
    dataset = ImageFolder(root, (8, 8), 3)
    assert dataset.report.files == sorted(good + bad)  # listed by name: nothing decoded yet
    assert dataset.report.skipped == [] and dataset.report.upscaled == 0
    assert dataset.class_names == ["cat", "dog", "junk"]
    names = [dataset.name(i) for i in range(len(dataset))]
    assert names == [
        "cat/a.png", "cat/b.jpg", "cat/empty.png", "cat/x.png", "dog/c.png", "dog/truncated.jpg", "junk/truncated.png"
    ]  # fmt: skip
    assert dataset.labels.tolist() == [0, 0, 0, 0, 1, 1, 2]
    # an undecodable file takes the next one that decodes, and its label: cat/empty.png -> dog/c.png,
    # junk/truncated.png -> cat/a.png (wrapping round)
    labels = [dataset[(i, 0)][1].item() for i in range(len(dataset))]
    assert labels == [0, 0, 1, 1, 1, 0, 0]


def test_images_at_the_top_level_mean_no_labels(tmp_path):
    _write(tmp_path / "top.png", _noise(8, 8))
    _write(tmp_path / "sub" / "inner.png", _noise(8, 8))
    report = scan(tmp_path, (8, 8), 1)
    assert report.labels is None
    assert report.class_names == ["sub"]
    dataset = ImageFolder(tmp_path, (8, 8), 1)
    assert [dataset[(i, 0)][1].item() for i in range(len(dataset))] == [-1, -1]


@pytest.mark.parametrize(
    "width, height, upscaled",
    [
        (8, 8, 1),
        (16, 8, 1),  # only too short
        (8, 16, 1),  # only too narrow
        (16, 16, 0),
        (40, 20, 0),
    ],
)
def test_scan_counts_and_warns_about_upscaled_images(tmp_path, caplog, width, height, upscaled):
    _write(tmp_path / "big.png", _noise(32, 32))
    _write(tmp_path / "maybe_small.png", _noise(height, width))
    caplog.set_level(logging.WARNING, logger="diffusion.data")
    report = scan(tmp_path, (16, 16), 3)
    assert report.upscaled == upscaled
    messages = [r.getMessage() for r in caplog.records if r.name == "diffusion.data"]
    expected = ["1 image(s) are smaller than 16x16 and will be upscaled"] if upscaled else []
    assert messages == expected


@pytest.mark.parametrize("contents", ["empty", "only_bad", "only_other_files"])
def test_no_usable_image_raises_when_validating(tmp_path, contents):
    root = tmp_path / "data"
    root.mkdir()
    if contents == "only_bad":
        _, bad = _good_and_bad_tree(root)
        for path in root.rglob("*"):
            if path.is_file() and path not in bad:
                path.unlink()
    elif contents == "only_other_files":
        (root / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"no readable images found under {re.escape(str(root))}"):
        scan(root, (8, 8), 3)
    with pytest.raises(ValueError, match="no readable images found under"):
        ImageFolder(root, (8, 8), 3, validate=True)


@pytest.mark.parametrize("contents", ["empty", "only_other_files"])
def test_a_folder_without_image_files_raises_when_listed(tmp_path, contents):
    root = tmp_path / "data"
    root.mkdir()
    if contents == "only_other_files":
        (root / "notes.txt").write_text("hello")
        (root / ".hidden.png").write_bytes(b"")  # what other tools leave does not count
    message = f"no image files found under {root} (searched recursively for .bmp, .gif, .jpeg, .jpg, .png, .tif"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        ImageFolder(root, (8, 8), 3)


def test_a_listed_folder_of_only_bad_files_raises_at_its_first_batch(tmp_path):
    root = tmp_path / "data"
    _, bad = _good_and_bad_tree(root)
    for path in root.rglob("*"):
        if path.is_file() and path not in bad:
            path.unlink()
    dataset = ImageFolder(root, (8, 8), 3)
    assert dataset.report.files == bad
    with pytest.raises(ValueError, match=f"^no item of {re.escape(str(root))} decodes"):
        dataset.batch([(0, 0)])


def test_scan_skips_decompression_bombs(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 100 pixels warns, > 200 is an error
    _write(tmp_path / "a_small.png", _noise(8, 8))  # 64 pixels
    _write(tmp_path / "b_warns.png", _noise(12, 12))  # 144 pixels
    _write(tmp_path / "c_error.png", _noise(16, 16))  # 256 pixels
    report = scan(tmp_path, (8, 8), 3)
    assert report.files == [tmp_path / "a_small.png"]
    assert [(p.name, why.split(":")[0]) for p, why in report.skipped] == [
        ("b_warns.png", "DecompressionBombWarning"),
        ("c_error.png", "DecompressionBombError"),
    ]


@pytest.mark.parametrize("channels", [0, 2, 5])
def test_image_folder_rejects_other_channel_counts(tmp_path, channels):
    _write(tmp_path / "a.png", _noise(8, 8))
    with pytest.raises(ValueError, match=f"channels must be 1, 3 or 4, got {channels}"):
        ImageFolder(tmp_path, (8, 8), channels)


def test_image_folder_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        ImageFolder(tmp_path / "nope", (8, 8), 3)


# ---------------------------------------------------------------------------------------------------
# ImageFolder items


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(16, 16), (8, 12), (12, 8)])
@pytest.mark.parametrize("random_crop", [False, True])
def test_item_shape_dtype_range_and_replay(tmp_path, channels, size, random_crop):
    _write(tmp_path / "a.png", _noise(20, 30))
    _write(tmp_path / "b.png", _noise(6, 5, seed=1))  # smaller than every size: upscaled
    dataset = ImageFolder(tmp_path, size, channels, random_crop=random_crop)
    for index in range(len(dataset)):
        for seed in (0, 1, 12345):
            image, label = dataset[(index, seed)]
            assert image.shape == (channels, *size)
            assert image.dtype == torch.float32
            assert image.min().item() >= -1.0 and image.max().item() <= 1.0
            assert label.item() == -1
            again, _ = dataset[(index, seed)]
            assert torch.equal(image, again)


def test_hflip_flips_for_some_seeds_and_only_left_right(tmp_path):
    _write(tmp_path / "a.png", _noise(16, 16))
    unflipped, _ = ImageFolder(tmp_path, (16, 16), 3, hflip=False)[(0, 0)]
    flipped = torch.flip(unflipped, dims=[2])
    assert not torch.equal(unflipped, flipped)  # the noise image is not mirror-symmetric
    dataset = ImageFolder(tmp_path, (16, 16), 3, hflip=True)
    outcomes = []
    for seed in range(32):
        image, _ = dataset[(0, seed)]
        assert torch.equal(image, unflipped) or torch.equal(image, flipped), seed
        outcomes.append(torch.equal(image, flipped))
    assert any(outcomes) and not all(outcomes)


def test_no_hflip_never_flips(tmp_path):
    _write(tmp_path / "a.png", _noise(16, 16))
    expected = to_tensor(Image.fromarray(_noise(16, 16)))  # fits exactly: no resize, no crop
    dataset = ImageFolder(tmp_path, (16, 16), 3, hflip=False)
    for seed in range(32):
        assert torch.equal(dataset[(0, seed)][0], expected), seed


@pytest.mark.parametrize("axis", ["x", "y"])
def test_random_crop_varies_with_the_seed_and_center_crop_does_not(tmp_path, axis):
    long_side = 48  # the short side is 16 = the target, so fit only crops: 33 possible offsets
    array = _noise(16, long_side) if axis == "x" else _noise(long_side, 16)
    _write(tmp_path / "a.png", array)
    source = torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0

    def crop(offset: int) -> torch.Tensor:
        return source[:, :, offset : offset + 16] if axis == "x" else source[:, offset : offset + 16, :]

    random = ImageFolder(tmp_path, (16, 16), 3, random_crop=True, hflip=False)
    offsets = []
    for seed in range(16):
        image, _ = random[(0, seed)]
        matches = [o for o in range(long_side - 16 + 1) if torch.equal(image, crop(o))]
        assert len(matches) == 1, seed  # every output is exactly one crop of the unresized image
        offsets += matches
    assert len(set(offsets)) >= 8  # 16 seeds over 33 offsets

    center = ImageFolder(tmp_path, (16, 16), 3, random_crop=False, hflip=False)
    for seed in range(16):
        assert torch.equal(center[(0, seed)][0], crop(16)), seed  # 16 left over on each side


def test_what_other_tools_leave_in_a_folder_is_passed_over_quietly(tmp_path, caplog):
    for name in ("a/1.png", "a/2.png", "b/3.png"):
        _write(tmp_path / name, _noise(4, 4))
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # Finder
    (tmp_path / "a" / "._1.png").write_bytes(b"\0\5\26\7 AppleDouble")  # a macOS resource fork on a non-Mac disk
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    _write(tmp_path / "__MACOSX" / "a" / "._2.png", _noise(4, 4))  # what macOS zips add: would be a class
    _write(tmp_path / "@eaDir" / "1.png" / "SYNOFILE_THUMB_S.jpg", _noise(4, 4))  # Synology thumbnails
    _write(tmp_path / "b" / ".ipynb_checkpoints" / "3-checkpoint.png", _noise(4, 4))
    _write(tmp_path / ".git" / "objects" / "x.png", _noise(4, 4))
    with caplog.at_level(logging.INFO, logger="diffusion.data"):
        report = scan(tmp_path, (4, 4), 3)
    assert [p.relative_to(tmp_path).as_posix() for p in report.files] == ["a/1.png", "a/2.png", "b/3.png"]
    assert report.class_names == ["a", "b"] and report.skipped == []
    assert [r.levelname for r in caplog.records] == ["INFO"]  # no warning about "unreadable" files
    assert caplog.records[0].getMessage() == (
        f"passed over 6 hidden or tool-made entries under {tmp_path}: .git, @eaDir, __MACOSX, .DS_Store, a/._1.png "
        "and 1 more"
    )
    assert [p.relative_to(tmp_path).as_posix() for p in report.passed_over] == [
        ".git", "@eaDir", "__MACOSX", ".DS_Store", "a/._1.png", "b/.ipynb_checkpoints"
    ]  # fmt: skip
