"""`diffusion.data.images`: how every source makes a batch (`TrainingImages.batch`), read through a folder.

The seed of each key drives the crop and flip (`augment.augmentation`); an item that does not decode is
replaced by the next index that does, the same way every time, and named in `Batch.skipped`.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import Batch, ImageFolder, augmentation, background_colour, crop, scan, to_unit

SEEDS = range(16)  # enough seeds that both flip outcomes and several crop positions occur


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _chw(pixels: np.ndarray) -> torch.Tensor:
    """(h, w, c) uint8 -> (c, h, w), as a batch holds it."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """a/0.png and b/3.png decode; a/1.png (empty), b/2.png (text) and b/4.png (truncated) do not."""
    root = tmp_path / "data"
    _write(root / "a" / "0.png", _noise(8, 8, seed=0))
    _write(root / "b" / "3.png", _noise(8, 8, seed=3))
    (root / "a" / "1.png").write_bytes(b"")
    (root / "b" / "2.png").write_text("not an image\n")
    whole = _write(tmp_path / "whole.png", _noise(32, 32, seed=4)).read_bytes()
    (root / "b" / "4.png").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (8, 12), (12, 8)])
def test_a_batch_is_uint8_bchw_with_int64_labels(tmp_path, channels, size):
    _write(tmp_path / "cat" / "a.png", _noise(20, 30))
    _write(tmp_path / "dog" / "b.png", _noise(6, 5, seed=1))  # smaller than every size: upscaled
    dataset = ImageFolder(tmp_path, size, channels, random_crop=True)
    batch = dataset.batch([(0, 0), (1, 1), (0, 2)])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (3, channels, *size) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous()
    assert batch.labels.shape == (3,) and batch.labels.dtype == torch.int64
    assert batch.labels.tolist() == [0, 1, 0]
    assert batch.skipped == ()


def test_an_item_is_the_batch_of_its_one_key_in_minus_one_to_one(tmp_path):
    _write(tmp_path / "a.png", _noise(8, 8))
    dataset = ImageFolder(tmp_path, (8, 8), 3)
    for seed in SEEDS:
        image, label = dataset[(0, seed)]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.shape == () and label.item() == -1  # top level: no classes
        assert torch.equal(image, to_unit(dataset.batch([(0, seed)]).images[0]))
        assert image.min().item() >= -1.0 and image.max().item() <= 1.0


@pytest.mark.parametrize("random_crop", [False, True])
def test_the_crop_and_flip_are_the_ones_the_seed_says(tmp_path, random_crop):
    array = _noise(16, 40)  # 16 high: fit only crops, so every output is a window of the written pixels
    _write(tmp_path / "a.png", array)
    dataset = ImageFolder(tmp_path, (16, 16), 3, random_crop=random_crop, hflip=True)
    batch = dataset.batch([(0, seed) for seed in SEEDS])
    flips = []
    for seed, image in zip(SEEDS, batch.images, strict=True):
        crop_at, flip = augmentation(seed)
        window = crop(array, (16, 16), crop_at if random_crop else None)
        expected = window[:, ::-1] if flip else window
        assert torch.equal(image, _chw(expected)), seed
        flips.append(flip)
    assert any(flips) and not all(flips)  # both outcomes are checked


def test_no_hflip_never_flips(tmp_path):
    array = _noise(16, 16)
    _write(tmp_path / "a.png", array)
    batch = ImageFolder(tmp_path, (16, 16), 3, hflip=False).batch([(0, seed) for seed in SEEDS])
    assert torch.equal(batch.images, _chw(array).expand(len(SEEDS), 3, 16, 16))


def test_the_same_keys_give_the_same_bytes_whatever_else_is_in_the_batch(tmp_path):
    _write(tmp_path / "a.png", _noise(20, 30))
    _write(tmp_path / "b.png", _noise(12, 9, seed=1))
    keys = [(1, 7), (0, 3), (1, 123456789)]
    first = ImageFolder(tmp_path, (8, 8), 3, random_crop=True).batch(keys)
    again = ImageFolder(tmp_path, (8, 8), 3, random_crop=True).batch(keys)  # another instance, as a worker has
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    alone = ImageFolder(tmp_path, (8, 8), 3, random_crop=True).batch([keys[1]])
    assert torch.equal(alone.images[0], first.images[1])


def test_an_undecodable_item_is_replaced_by_the_next_one_that_decodes(mixed):
    dataset = ImageFolder(mixed, (8, 8), 3, hflip=False)
    assert [dataset.name(i) for i in range(len(dataset))] == ["a/0.png", "a/1.png", "b/2.png", "b/3.png", "b/4.png"]
    assert dataset.labels.tolist() == [0, 0, 1, 1, 1]
    reasons = {p.relative_to(mixed).as_posix(): why for p, why in scan(mixed, (8, 8), 3).skipped}
    assert reasons["a/1.png"].startswith("UnidentifiedImageError: cannot identify image file")
    assert reasons["b/2.png"].startswith("UnidentifiedImageError: cannot identify image file")
    assert reasons["b/4.png"].startswith("OSError: image file is truncated")

    batch = dataset.batch([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
    good = {0: _chw(_noise(8, 8, seed=0)), 3: _chw(_noise(8, 8, seed=3))}
    # 1 -> 3 (past 2), 2 -> 3, 4 -> 0 (wrapping round); each takes its replacement's label
    for item, used in zip(batch.images, [0, 3, 3, 3, 0], strict=True):
        assert torch.equal(item, good[used])
    assert batch.labels.tolist() == [0, 1, 1, 1, 0]
    named = ["a/1.png", "b/2.png", "b/4.png"]  # in the order met, each once: then passed over without decoding
    assert batch.skipped == tuple((name, reasons[name]) for name in named)

    again = dataset.batch([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
    assert torch.equal(again.images, batch.images) and again.skipped == ()
    fresh = ImageFolder(mixed, (8, 8), 3, hflip=False)  # another process (a worker, a resume) meets them anew
    assert fresh.batch([(4, 4)]).skipped == (("b/4.png", reasons["b/4.png"]),)


def test_an_undecodable_item_keeps_its_own_augmentation_seed(mixed):
    dataset = ImageFolder(mixed, (8, 8), 3, hflip=True)
    seed = next(s for s in SEEDS if augmentation(s)[1])  # one that flips
    replaced = dataset.batch([(1, seed)])
    assert torch.equal(replaced.images[0], dataset.batch([(3, seed)]).images[0])
    assert torch.equal(replaced.images[0], _chw(_noise(8, 8, seed=3)[:, ::-1]))


def test_a_source_where_nothing_decodes_raises(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("not an image\n")
    dataset = ImageFolder(tmp_path, (8, 8), 3)
    assert len(dataset) == 2  # listing does not decode
    with pytest.raises(ValueError, match=f"^no item of {re.escape(str(tmp_path))} decodes: check the files"):
        dataset.batch([(1, 0)])
    with pytest.raises(ValueError, match="no item of"):
        dataset[(0, 0)]


# ----- transparency: the background of 1 and 3 channels, the alpha channel of 4 -----


def _rgba(seed: int = 0) -> np.ndarray:
    """An 8x8 RGBA noise image: fully transparent in its top-left 3x3 corner, half at (7, 7), opaque elsewhere."""
    array = np.dstack([_noise(8, 8, seed), np.full((8, 8), 255, dtype=np.uint8)])
    array[:3, :3, 3] = 0
    array[7, 7, 3] = 128
    return array


def _on(colour: tuple[int, int, int], channels: int) -> tuple[int, ...]:
    """``colour`` as the pixel of an image of ``channels``: RGB, or PIL's luma of it (ITU-R 601-2)."""
    return colour if channels == 3 else (Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0)),)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("background", ["white", "black", "random"])
def test_transparent_pixels_are_the_background_colour_of_each_item(tmp_path, channels, background):
    array = _rgba()
    _write(tmp_path / "a.png", array)
    dataset = ImageFolder(tmp_path, (8, 8), channels, hflip=False, background=background)
    batch = dataset.batch([(0, seed) for seed in SEEDS])
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    for seed, image in zip(SEEDS, batch.images, strict=True):
        colour = named[background] if background in named else background_colour("random", seed)
        corner = torch.tensor(_on(colour, channels), dtype=torch.uint8)[:, None, None].expand(channels, 3, 3)
        assert torch.equal(image[:, :3, :3], corner), seed
        if channels == 3:  # opaque pixels are the file's
            assert torch.equal(image[:, 3:7, 3:7], _chw(array[3:7, 3:7, :3]))
    corners = {tuple(image[:, 0, 0].tolist()) for image in batch.images}
    assert len(corners) == (len(SEEDS) if background == "random" else 1)  # 16 seeds, 16 colours (and lumas)


def test_a_random_background_is_the_seeds_in_any_batch_and_instance(tmp_path):
    _write(tmp_path / "a.png", _rgba())
    keys = [(0, 5), (0, 9), (0, 5)]
    batch = ImageFolder(tmp_path, (8, 8), 3, hflip=False, background="random").batch(keys)
    again = ImageFolder(tmp_path, (8, 8), 3, hflip=False, background="random").batch([keys[1]])
    assert batch.images[:, :, 0, 0].tolist() == [list(background_colour("random", seed)) for _, seed in keys]
    assert torch.equal(batch.images[0], batch.images[2]) and torch.equal(again.images[0], batch.images[1])
    assert background_colour("random", 5) != background_colour("random", 9)


def test_an_undecodable_item_is_replaced_on_its_own_keys_background(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    _write(tmp_path / "b.png", _rgba())
    dataset = ImageFolder(tmp_path, (8, 8), 3, hflip=False, background="random")
    replaced = dataset.batch([(0, 3)])
    assert replaced.skipped[0][0] == "a.png"
    assert torch.equal(replaced.images[0], dataset.batch([(1, 3)]).images[0])
    assert replaced.images[0, :, 0, 0].tolist() == list(background_colour("random", 3))


def test_four_channels_keep_the_files_alpha_and_an_opaque_file_gets_255(tmp_path):
    rgba, rgb = _rgba(), _noise(8, 8, seed=1)
    _write(tmp_path / "a.png", rgba)
    _write(tmp_path / "b.png", rgb)
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    palette.save(tmp_path / "c.png", transparency=0)  # palette entry 0 (the top-left pixel) is transparent
    batch = ImageFolder(tmp_path, (8, 8), 4, hflip=False).batch([(0, 0), (1, 1), (2, 2)])
    assert batch.images.shape == (3, 4, 8, 8) and batch.images.dtype == torch.uint8
    clear = rgba.copy()
    clear[:3, :3] = 0  # RGB 0 where alpha is 0, as a resize leaves it (`diffusion.image.to_mode`)
    assert torch.equal(batch.images[0], _chw(clear))  # alpha 0, 128 and 255 as in the file
    assert torch.equal(batch.images[1], _chw(np.dstack([rgb, np.full((8, 8), 255, dtype=np.uint8)])))
    alpha = batch.images[2, 3]
    assert alpha[0, 0].item() == 0 and alpha.flatten()[1:].tolist() == [255] * 63
    assert batch.images[2, :3, 0, 1].tolist() == [1, 254, 0]  # entry 1 of the palette
