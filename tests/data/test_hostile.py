"""`diffusion.data` on a hostile folder: one folder holding every kind of bad and odd file we know of.

`scan` / `ImageFolder(validate=True)` must skip exactly the bad files, name each of them in the log with its
reason, and decode every good one to the right pixels; the listed `ImageFolder` keeps every file and its
batches replace each bad one by the next good one, naming it; training must run through all of them.
"""

import logging
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import ImageFolder, TrainingImages, load_image, scan
from diffusion.io.checkpoint import list_checkpoints
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import TrainConfig, Trainer

SIZE = (8, 8)  # (height, width) the folder is scanned and trained at
LATIN1_NAME = os.fsdecode(b"caf\xe9.png")  # "café" in Latin-1: not UTF-8, so the str holds a surrogate
BAD_LATIN1_NAME = os.fsdecode(b"empty-\xff.png")
UNICODE_NAME = "café-猫.png"
DEEP = np.array([[65535, 32768], [257, 0]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)  # 8x8, 16-bit
PALETTE = [10, 20, 30, 200, 100, 50]  # index 0 (transparent), index 1


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny 8-bit grey PNG whose header claims ``width`` x ``height``: a decompression bomb for free.

    The single IDAT row is far too short for the claimed size; it never gets decoded, because the pixel
    count alone must make `load_image` refuse the file.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, grey, deflate, no filter, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9)) + chunk(b"IEND", b"")


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(image: Image.Image, path: Path, **save_args) -> bytes:
    image.save(path, **save_args)
    return path.read_bytes()


@dataclass
class Hostile:
    root: Path
    good: list[str]  # names (relative to root) that must be kept, sorted as `scan` orders them
    bad: list[str]  # names that must be skipped, sorted likewise
    locked_readable: bool  # whether the chmod-000 file could be opened by this process


def _sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _build(root: Path) -> Hostile:
    """Write the catalogue; every file is at the top level of ``root``."""
    root.mkdir()
    scratch = root.parent / "scratch"
    scratch.mkdir()
    real_png = _save(Image.fromarray(_noise(32, 32)), scratch / "real.png")
    real_jpg = _save(Image.fromarray(_noise(32, 32)), scratch / "real.jpg", quality=90)
    bad = {
        "empty.png": b"",
        "empty.jpg": b"",
        "truncated.png": real_png[: len(real_png) // 2],
        "truncated.jpg": real_jpg[: len(real_jpg) // 2],
        "text.png": b"this is a text file, not an image\n",
        # 1e10 pixels, over 2 * Image.MAX_IMAGE_PIXELS: PIL raises DecompressionBombError
        "bomb.png": _png_header_only(100_000, 100_000),
        # 1e8 pixels, between MAX_IMAGE_PIXELS (89,478,485) and twice it: PIL only warns, load_image refuses
        "bomb_warning.png": _png_header_only(10_000, 10_000),
        BAD_LATIN1_NAME: b"",  # the log must still be able to name it
    }
    for name, content in bad.items():
        (root / name).write_bytes(content)
    os.symlink("loop_b.png", root / "loop_a.png")  # a.png -> b.png -> a.png: opening either fails (ELOOP)
    os.symlink("loop_a.png", root / "loop_b.png")
    os.symlink(root, root / "up", target_is_directory=True)  # a directory link to its own parent
    (root / ".png").write_text("text\n")  # a dot file with no extension (pathlib): neither kept nor skipped

    deep = Image.fromarray(DEEP)
    assert deep.mode == "I;16"
    deep.save(root / "deep16.png")
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red in CMYK
    palette = Image.new("P", (2, 1))
    palette.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    palette.putpixel((1, 0), 1)
    palette.save(root / "palette.png", transparency=0)
    first, second = Image.new("RGB", (5, 3), (255, 0, 0)), Image.new("RGB", (5, 3), (0, 0, 255))
    first.save(root / "anim.gif", save_all=True, append_images=[second], duration=100, loop=0)
    rotated = Image.new("RGB", (12, 6), (0, 0, 0))
    rotated.paste((255, 255, 255), (0, 0, 3, 3))  # stored top-left corner is white
    exif = rotated.getexif()
    exif[274] = 6  # Orientation: display rotated 90 degrees clockwise
    rotated.save(root / "rotated.jpg", exif=exif, quality=95)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "tiny.png")
    Image.fromarray(_noise(3, 4000, seed=1)).save(root / "wide.png")
    Image.fromarray(_noise(8, 8, seed=2)).save(root / LATIN1_NAME)
    Image.fromarray(_noise(8, 8, seed=3)).save(root / UNICODE_NAME)
    Image.fromarray(_noise(8, 8, seed=4)).save(root / "locked.png")
    os.chmod(root / "locked.png", 0)
    # Tests run as root here, and root reads a chmod-000 file anyway: whether it is good or bad depends on
    # who runs the test, so the expectation is computed by trying to open it.
    try:
        (root / "locked.png").open("rb").close()
        locked_readable = True
    except PermissionError:
        locked_readable = False

    good = ["deep16.png", "cmyk.jpg", "palette.png", "anim.gif", "rotated.jpg", "tiny.png", "wide.png"]
    good += [LATIN1_NAME, UNICODE_NAME]
    bad_names = [*bad, "loop_a.png", "loop_b.png"]
    (good if locked_readable else bad_names).append("locked.png")
    return Hostile(root, sorted(good, key=_sort_key), sorted(bad_names, key=_sort_key), locked_readable)


@pytest.fixture
def hostile(tmp_path):
    catalogue = _build(tmp_path / "data")
    yield catalogue
    os.chmod(catalogue.root / "locked.png", 0o644)  # let pytest clean tmp_path up as any user


def _display(name: str) -> str:
    """How the log writes a name: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------------
# scan / ImageFolder


def test_an_unreadable_file_is_skipped_even_where_root_could_read_it(hostile, monkeypatch):
    """CI runs as root, which reads chmod-000 files: make the open fail as it does for any other user."""
    real_open = Image.open

    def open_as_a_user(path, *args, **kwargs):
        if Path(path).name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("diffusion.data.files.Image.open", open_as_a_user)
    report = scan(hostile.root, SIZE, 3)
    reasons = {p.name: why for p, why in report.skipped}
    assert reasons["locked.png"] == f"PermissionError: [Errno 13] Permission denied: '{hostile.root / 'locked.png'}'"
    assert len(report.files) == 9 and len(report.skipped) == len(hostile.bad) + hostile.locked_readable


@pytest.mark.timeout(10)
@pytest.mark.parametrize("channels", [1, 3])
def test_scan_keeps_exactly_the_good_files_and_names_every_bad_one(hostile, caplog, channels):
    caplog.set_level(logging.WARNING, logger="diffusion.data")
    report = scan(hostile.root, SIZE, channels)

    assert [p.relative_to(hostile.root).as_posix() for p in report.files] == hostile.good
    assert len(report.files) == (10 if hostile.locked_readable else 9)
    assert [p.relative_to(hostile.root).as_posix() for p, _ in report.skipped] == hostile.bad
    reasons = {p.name: why for p, why in report.skipped}
    assert reasons["bomb.png"].startswith("DecompressionBombError: Image size (10000000000 pixels) exceeds")
    assert reasons["bomb_warning.png"].startswith("DecompressionBombWarning: Image size (100000000 pixels) exceeds")
    for name in ("empty.png", "empty.jpg", "text.png", BAD_LATIN1_NAME):
        assert reasons[name].startswith("UnidentifiedImageError: cannot identify image file"), name
    for name in ("truncated.png", "truncated.jpg"):
        assert reasons[name].startswith("OSError: image file is truncated"), name
    for name in ("loop_a.png", "loop_b.png"):
        assert reasons[name].startswith("OSError: [Errno 40] Too many levels of symbolic links"), name
    if not hostile.locked_readable:
        assert reasons["locked.png"].startswith("PermissionError: [Errno 13] Permission denied")
    # smaller than 8x8 along some side: tiny (1x1), cmyk (6x4), palette (2x1), anim (5x3), wide (4000x3)
    # and rotated (6 wide once rotated)
    assert report.upscaled == 6
    records = [r for r in caplog.records if r.name == "diffusion.data"]
    skipped = [r.getMessage() for r in records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1
    head, *lines = skipped[0].splitlines()
    assert head == f"skipped {len(hostile.bad)} unreadable file(s) under {hostile.root}:"
    assert len(lines) == len(hostile.bad)  # one line per skipped file, in scan order, with its reason
    for line, name in zip(lines, hostile.bad, strict=True):
        assert line.startswith(f"  {_display(str(hostile.root / name))} ("), line
        assert line.endswith(f"{reasons[name]})")
    assert "\\xff" in skipped[0]
    skipped[0].encode("utf-8")  # no lone surrogates: any log handler can write it


def test_every_good_file_gives_a_sensible_tensor(hostile):
    dataset = ImageFolder(hostile.root, SIZE, 3, hflip=False, validate=True)
    assert len(dataset) == len(hostile.good)
    for index, path in enumerate(dataset.report.files):
        image, label = dataset[(index, 0)]
        assert image.shape == (3, *SIZE) and image.dtype == torch.float32, path
        assert torch.isfinite(image).all() and image.min() >= -1 and image.max() <= 1, path
        assert label.item() == -1  # every file is at the top level: no classes
    tensors = {p.name: dataset[(i, 0)][0] for i, p in enumerate(dataset.report.files)}

    # 16-bit: v -> round(v / 257) in 8 bits, so 65535 -> 255 (white) and 32768 -> 128, not clipped to 255
    expected = np.rint(DEEP / 257.0) / 127.5 - 1.0
    torch.testing.assert_close(tensors["deep16.png"], torch.from_numpy(expected).float().expand(3, 8, 8))
    assert tensors["deep16.png"][:, 0, 0].tolist() == [1.0] * 3
    torch.testing.assert_close(tensors["deep16.png"][:, 0, 7], torch.full((3,), 128 / 127.5 - 1))
    # 1x1: upscaled, a solid colour stays itself
    torch.testing.assert_close(
        tensors["tiny.png"], (torch.tensor([10.0, 200.0, 30.0]) / 127.5 - 1).view(3, 1, 1).expand(3, 8, 8)
    )
    # names are only names: the pixels are the ones written (8x8 PNG, so no resize)
    for name, seed in ((LATIN1_NAME, 2), (UNICODE_NAME, 3)):
        torch.testing.assert_close(
            tensors[name], torch.from_numpy(_noise(8, 8, seed)).permute(2, 0, 1).float() / 127.5 - 1.0
        )


@pytest.mark.timeout(10)
def test_a_listed_folder_replaces_each_bad_file_by_the_next_good_one_and_names_it(hostile):
    dataset = ImageFolder(hostile.root, SIZE, 3, hflip=False)
    names = [p.relative_to(hostile.root).as_posix() for p in dataset.report.files]
    assert names == sorted(hostile.good + hostile.bad, key=_sort_key)  # listed by name, nothing decoded
    assert dataset.report.skipped == [] and dataset.report.upscaled == 0
    validated = ImageFolder(hostile.root, SIZE, 3, hflip=False, validate=True)
    reasons = {p.relative_to(hostile.root).as_posix(): why for p, why in validated.report.skipped}
    good_index = {p.relative_to(hostile.root).as_posix(): i for i, p in enumerate(validated.report.files)}

    keys = [(i, i) for i in range(len(dataset))]
    batch = dataset.batch(keys)
    expected_skipped = []
    for (index, seed), image, label in zip(keys, batch.images, batch.labels, strict=True):
        used = index
        while names[used] in reasons:  # the next index, wrapping round, whose file decodes
            if (_display(names[used]), reasons[names[used]]) not in expected_skipped:  # named when first met
                expected_skipped.append((_display(names[used]), reasons[names[used]]))
            used = (used + 1) % len(names)
        assert torch.equal(image, validated.batch([(good_index[names[used]], seed)]).images[0]), names[index]
        assert label.item() == -1
    assert batch.skipped == tuple(expected_skipped)
    assert {name for name, _ in batch.skipped} == {_display(name) for name in hostile.bad}
    "".join(f"{name} {why}" for name, why in batch.skipped).encode("utf-8")  # any log handler can write them

    again = dataset.batch(keys)  # the bad files are passed over now, without decoding them again
    assert torch.equal(again.images, batch.images) and again.skipped == ()


def test_odd_good_files_decode_to_the_right_pixels(hostile):
    root = hostile.root
    deep = np.asarray(load_image(root / "deep16.png", 1), dtype=np.int64)
    np.testing.assert_array_equal(deep, np.rint(DEEP / 257.0))  # 65535 -> 255, 32768 -> 128, 257 -> 1

    cmyk = load_image(root / "cmyk.jpg", 3)
    assert (cmyk.mode, cmyk.size) == ("RGB", (6, 4))
    assert np.abs(np.asarray(cmyk, dtype=np.int64) - [255, 0, 0]).max() <= 8  # JPEG: lossy

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns about palette transparency converted the wrong way
        palette = np.asarray(load_image(root / "palette.png", 3), dtype=np.int64)
    np.testing.assert_array_equal(palette, [[[255, 255, 255], PALETTE[3:]]])  # transparent -> white

    with Image.open(root / "anim.gif") as raw:
        assert raw.n_frames == 2
    anim = load_image(root / "anim.gif", 3)
    assert anim.size == (5, 3)
    assert np.abs(np.asarray(anim, dtype=np.int64) - [255, 0, 0]).max() <= 2  # first frame: red

    rotated = load_image(root / "rotated.jpg", 1)
    assert rotated.size == (6, 12)  # stored 12x6, displayed rotated: (width, height) swapped
    pixels = np.asarray(rotated, dtype=np.int64)
    assert pixels[:3, -3:].min() >= 200  # the stored top-left white corner is now top-right
    assert pixels[:3, :3].max() <= 55 and pixels[-3:, :3].max() <= 55  # JPEG: thresholds, not values

    wide = load_image(root / "wide.png", 3)
    np.testing.assert_array_equal(np.asarray(wide), _noise(3, 4000, seed=1))
    if hostile.locked_readable:
        np.testing.assert_array_equal(np.asarray(load_image(root / "locked.png", 3)), _noise(8, 8, seed=4))


# ---------------------------------------------------------------------------------------------------
# training


TINY = {"base_channels": 16, "channel_mult": (1, 2), "norm_groups": 8, "attention_levels": (1,)}


@pytest.mark.timeout(60)
def test_training_runs_through_the_hostile_folder(hostile, tmp_path, monkeypatch):
    met = []  # the (name, reason) of every bad file a training batch met
    batch = TrainingImages.batch

    def recording(self, keys):
        made = batch(self, keys)
        met.extend(made.skipped)
        return made

    monkeypatch.setattr(TrainingImages, "batch", recording)
    files = len(hostile.good) + len(hostile.bad)
    config = TrainConfig(
        data=str(hostile.root),
        out=str(tmp_path / "out"),
        preset="tiny",
        channels=3,
        image_size=SIZE,
        batch_size=files,  # one step is one epoch: every file is drawn once
        warmup_steps=0,
        max_steps=1,
        checkpoint_every=1,
        sample_every=0,
        log_every=1,
    )
    model_dir = Trainer(config, TINY).train()
    assert model_dir == tmp_path / "out" / "model"
    pipe = DiffusionPipeline.from_pretrained(model_dir)  # a complete model folder, loadable
    assert (pipe.unet.config.in_channels, tuple(pipe.unet.config.sample_size)) == (3, SIZE)
    assert [step for step, _ in list_checkpoints(tmp_path / "out")] == [1]
    assert {name for name, _ in met} == {_display(name) for name in hostile.bad}
