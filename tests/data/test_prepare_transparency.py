"""diffusion.data.prepare with transparency: RGBA stored with its alpha channel (``channels=4``) for training to
composite on the background it chooses, or 1 and 3 channels composited on ``background`` and recorded in the
manifest; a background given with 4 channels, and a random one, are refused; an RGBA preparation of an earlier
version, which stored the files' RGB under alpha 0, reads as its folder does."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_prepare import SIZE, counting_calls, interrupt_after_first_shard, stored_pixels  # tests/data: sys.path

from diffusion.data import augmentation, background_colour, open_images
from diffusion.data.manifest import RGB_0_UNDER_ALPHA_0
from diffusion.data.prepare import PARTIAL, prepare
from diffusion.data.shards import SHARD, _dataset, shard_path
from diffusion.io.files import sha256_of

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
    assert manifest[RGB_0_UNDER_ALPHA_0] is True
    np.testing.assert_array_equal(stored_pixels(tmp_path / "out", (8, 8, 4)), np.stack(list(files.values())))


@pytest.mark.parametrize(("background", "colour"), [("white", 255), ("black", 0), (None, 255)])
def test_one_and_three_channels_store_transparency_on_the_background(tmp_path, background, colour):
    files = transparent_folder(tmp_path / "images")
    manifest = prepare(tmp_path / "images", tmp_path / "out", size=SIZE, background=background, workers=1)
    assert manifest["settings"]["background"] == (background or "white")  # None: white, the default
    assert RGB_0_UNDER_ALPHA_0 not in manifest  # nothing transparent is stored
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


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_a_random_background_is_refused_naming_the_preparation_that_trains_with_it(tmp_path, channels):
    transparent_folder(tmp_path / "images")
    with pytest.raises(ValueError) as refused:
        prepare(tmp_path / "images", tmp_path / "out", size=SIZE, channels=channels, background="random", workers=1)
    assert str(refused.value) == (
        "--background random is drawn per item at training time, so a preparation cannot store it: prepare with "
        "--channels 4 and no --background, then train with --channels 1 or 3 and --background random"
    )
    assert not (tmp_path / "out").exists()
    prepare(tmp_path / "images", tmp_path / "out", size=SIZE, channels=4, workers=1)  # the way out, followed
    batch = open_images(tmp_path / "out", SIZE, 3, background="random", hflip=False).batch([(0, 1), (0, 2)])
    corners = [tuple(image[:, 0, 0].tolist()) for image in batch.images]  # a.png's transparent corner
    assert corners == [background_colour("random", 1), background_colour("random", 2)] and len(set(corners)) == 2


def earlier_rgba_preparation(image_folder: Path, out: Path) -> np.ndarray:
    """``out`` as an earlier version prepared ``image_folder`` at 4 channels: each file's RGBA as it holds it, RGB
    under alpha 0 included, and a manifest without `RGB_0_UNDER_ALPHA_0`; the stored pixels."""
    names = sorted(path.name for path in image_folder.iterdir())
    stored = np.stack([np.array(Image.open(image_folder / name).convert("RGBA")) for name in names])
    _dataset(stored, None, names, None).save_to_disk(str(out))  # the rows as every version writes them
    settings = {"source": str(image_folder.resolve()), "size": list(SIZE), "channels": 4, "background": None}
    manifest = {"format": "pixel-diffusion-prepared", "version": 1, "complete": True, "created_by": "pixel-diffusion"}
    manifest |= {"settings": settings | {"image_column": None, "label_column": None}, "shape": [*SIZE, 4]}
    manifest |= {"class_names": None, "counts": {"found": 3, "prepared": 3, "skipped": 0}, "skipped": []}
    files = sorted(out.glob("data-*.arrow"))
    manifest["files"] = {path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in files}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return stored


def test_an_earlier_versions_rgba_preparation_reads_rgb_0_under_alpha_0_as_its_folder_does(tmp_path, monkeypatch):
    files = transparent_folder(tmp_path / "images")
    out = tmp_path / "earlier"
    stored = earlier_rgba_preparation(tmp_path / "images", out)
    clear = stored[:, :, :, 3] == 0  # (3, 8, 8)
    assert clear[0, :3, :3].all() and (stored[clear][:, :3] > 0).any()  # the files' own RGB under alpha 0

    keys = [(i, seed) for seed in range(8) for i in range(3)]  # seeds that flip and seeds that do not
    got = open_images(out, SIZE, 4).batch(keys).images.permute(0, 2, 3, 1).numpy()  # (b, h, w, 4)
    flipped = [augmentation(seed)[1] for _, seed in keys]
    expected = np.stack([stored[i][:, ::-1] if flip else stored[i] for (i, _), flip in zip(keys, flipped, strict=True)])
    transparent = expected[:, :, :, 3] == 0
    assert (got[transparent] == 0).all()  # RGB 0 where alpha is 0
    np.testing.assert_array_equal(got[~transparent], expected[~transparent])  # the rest as stored
    np.testing.assert_array_equal(got, open_images(tmp_path / "images", SIZE, 4).batch(keys).images.permute(0, 2, 3, 1))

    calls = counting_calls(monkeypatch)  # the same command keeps it as it is: nothing decoded, nothing refused
    assert RGB_0_UNDER_ALPHA_0 not in prepare(tmp_path / "images", out, size=SIZE, channels=4, workers=1)
    assert calls == []
    again = prepare(out, tmp_path / "again", size=SIZE, channels=4, workers=1)  # prepared from it: zeroed
    assert again[RGB_0_UNDER_ALPHA_0] is True
    np.testing.assert_array_equal(stored_pixels(tmp_path / "again", (8, 8, 4)), np.stack(list(files.values())))


@pytest.mark.parametrize("begun_by_earlier_version", [False, True])
def test_a_preparation_finished_after_an_earlier_version_began_it_is_zeroed_when_read(
    tmp_path, monkeypatch, begun_by_earlier_version
):
    files = transparent_folder(tmp_path / "images")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_after_first_shard(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare(tmp_path / "images", out, size=SIZE, channels=4, workers=1, shard_size=1)
    begun = json.loads((out / "manifest.json").read_text())
    assert begun[RGB_0_UNDER_ALPHA_0] is True and begun["complete"] is False
    if begun_by_earlier_version:  # whose first shard (a.png) kept the file's RGB under alpha 0
        del begun[RGB_0_UNDER_ALPHA_0]
        (out / "manifest.json").write_text(json.dumps(begun))
        shard = shard_path(out / PARTIAL, 0)
        committed = (shard / SHARD).read_text()
        shutil.rmtree(shard)
        raw = np.array(Image.open(tmp_path / "images" / "a.png").convert("RGBA"))  # (h, w, 4) as the file holds it
        _dataset(raw[None], None, ["a.png"], None).save_to_disk(str(shard))
        (shard / SHARD).write_text(committed)
        kept = stored_pixels(shard, (8, 8, 4))[0]
        assert (kept[:3, :3, 3] == 0).all() and (kept[:3, :3, :3] > 0).any()  # the file's RGB under alpha 0

    manifest = prepare(tmp_path / "images", out, size=SIZE, channels=4, workers=1)
    assert (RGB_0_UNDER_ALPHA_0 in manifest) is not begun_by_earlier_version
    stored = stored_pixels(out, (8, 8, 4))  # (3, h, w, 4)
    clear = stored[:, :, :, 3] == 0
    assert bool((stored[clear][:, :3] > 0).any()) is begun_by_earlier_version  # kept from the earlier shard
    batch = open_images(out, SIZE, 4, hflip=False).batch([(i, 0) for i in range(3)])
    got = batch.images.permute(0, 2, 3, 1).numpy()  # (3, h, w, 4)
    assert (got[clear][:, :3] == 0).all()  # RGB exactly 0 where alpha is 0
    np.testing.assert_array_equal(got[~clear], stored[~clear])  # the rest as stored
    np.testing.assert_array_equal(got, np.stack(list(files.values())))


@pytest.mark.parametrize(("channels", "background"), [(4, "white"), (3, "random"), (3, "black")])
def test_a_prepared_dataset_that_cannot_train_so_names_its_source_to_prepare_again(tmp_path, channels, background):
    """Preparing the prepared dataset itself again would store the same pixels, and be refused the same way."""
    transparent_folder(tmp_path / "images")
    prepared = tmp_path / "rgb"
    prepare(tmp_path / "images", prepared, size=SIZE, channels=3, workers=1)
    way_out = f"prepare {(tmp_path / 'images').resolve()} again with diffusion-prepare --channels 4 to "
    with pytest.raises(ValueError, match=f"^{re.escape(str(prepared))} was prepared with .* {re.escape(way_out)}"):
        open_images(prepared, SIZE, channels, background=background)
    with pytest.raises(ValueError, match=re.escape(way_out)):
        prepare(prepared, tmp_path / "loop", size=SIZE, channels=4, workers=1)

    prepare(tmp_path / "images", tmp_path / "rgba", size=SIZE, channels=4, workers=1)  # the way out, followed
    batch = open_images(tmp_path / "rgba", SIZE, channels, background=background).batch([(0, 0)])
    assert batch.images.shape == (1, channels, 8, 8)
