"""diffusion.data.prepare: rows, manifest and checksums of a prepared dataset; parallel decoding; resuming an
interrupted preparation; the folders it refuses."""

import hashlib
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion.data import open_images
from diffusion.data.prepare import prepare

prepare_module = importlib.import_module("diffusion.data.prepare")

datasets = pytest.importorskip("datasets")

SIZE = (8, 8)
# The folder `image_folder` writes, in the order a folder source lists it; "b/bad.png" does not decode.
FOLDER_NAMES = ["a/0.png", "a/1.png", "a/2.png", "b/0.jpg", "b/1.jpg", "b/bad.png"]
GOOD_NAMES = [name for name in FOLDER_NAMES if name != "b/bad.png"]


def random_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of images larger than `SIZE` and of other aspect ratios, and one truncated PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in GOOD_NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(rng, 12, 10 + len(name) % 5).save(root / name)
    (root / "b" / "bad.png").write_bytes((root / "a" / "0.png").read_bytes()[:60])
    return root


def expected_pixels(source: Path, size: tuple[int, int] = SIZE, channels: int = 3) -> np.ndarray:
    """The oracle: each item as the shared reader fits it, in order, undecodable ones left out."""
    images = open_images(source, size, channels)
    decodable = [i for i in range(len(images)) if images.name(i) != "b/bad.png"]
    return np.stack([images.pixels(i) for i in decodable])  # (n, h, w, c)


def stored_pixels(out: Path, shape: tuple[int, int, int]) -> np.ndarray:
    return np.array(datasets.load_from_disk(str(out))["image"], dtype=np.uint8).reshape(-1, *shape)


def counting_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices `pixels` decodes from now on, in this process (``workers=1``)."""
    calls: list[int] = []
    real_open = prepare_module.open_images

    def open_counting(*args, **kwargs):
        images = real_open(*args, **kwargs)
        real_pixels = images.pixels

        def pixels(index: int) -> np.ndarray:
            calls.append(index)
            return real_pixels(index)

        images.pixels = pixels
        return images

    monkeypatch.setattr(prepare_module, "open_images", open_counting)
    return calls


def interrupt_after_first_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    real_commit = prepare_module._commit_shard

    def commit_then_stop(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_commit_shard", commit_then_stop)


def test_folder_rows_manifest_and_checksums(image_folder, tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare(image_folder, out, size=SIZE, workers=1)

    assert manifest["format"] == "pixel-diffusion-prepared" and manifest["version"] == 1
    assert manifest["complete"] is True and manifest["created_by"] == "pixel-diffusion 0.1.0"
    assert manifest["settings"] == {
        "source": str(image_folder.resolve()),
        "size": [8, 8],
        "channels": 3,
        "image_column": None,
        "label_column": None,
    }
    assert manifest["shape"] == [8, 8, 3] and manifest["class_names"] == ["a", "b"]
    assert manifest["counts"] == {"found": 6, "prepared": 5, "skipped": 1}
    [skipped] = manifest["skipped"]
    assert skipped["source"] == "b/bad.png" and skipped["reason"].startswith("OSError: ")
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not (out / "partial").exists()

    dataset = datasets.load_from_disk(str(out))
    assert dataset.features["image"] == datasets.List(datasets.Value("uint8"), length=8 * 8 * 3)
    assert str(dataset.data.schema.field("image").type) == "fixed_size_list<item: uint8>[192]"
    assert dataset.features["label"].names == ["a", "b"]
    assert dataset["path"] == GOOD_NAMES and dataset["label"] == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(stored_pixels(out, (8, 8, 3)), expected_pixels(image_folder))

    arrow_files = sorted(p.name for p in out.glob("data-*.arrow"))
    assert sorted(manifest["files"]) == arrow_files == ["data-00000-of-00001.arrow"]
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_prepared_dataset_reads_back_through_open_images(image_folder, tmp_path):
    prepare(image_folder, tmp_path / "prepared", size=SIZE, workers=1)
    images = open_images(tmp_path / "prepared", SIZE, 3)

    assert [images.name(i) for i in range(len(images))] == GOOD_NAMES
    assert images.labels.tolist() == [0, 0, 0, 1, 1] and images.class_names == ["a", "b"]
    read_back = np.stack([images.pixels(i) for i in range(len(images))])
    np.testing.assert_array_equal(read_back, expected_pixels(image_folder))


def test_grayscale_unlabelled_folder_has_no_label_column(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        random_image(rng, 10, 16).save(root / f"{i}.png")
    manifest = prepare(root, tmp_path / "out", size=(6, 4), channels=1, workers=1)

    assert manifest["shape"] == [6, 4, 1] and manifest["class_names"] is None
    assert manifest["counts"] == {"found": 3, "prepared": 3, "skipped": 0} and manifest["skipped"] == []
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    assert dataset.column_names == ["image", "path"]
    assert dataset["path"] == ["0.png", "1.png", "2.png"]
    np.testing.assert_array_equal(stored_pixels(tmp_path / "out", (6, 4, 1)), expected_pixels(root, (6, 4), 1))


def test_huggingface_dataset_source(tmp_path):
    rng = np.random.default_rng(2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    pictures = [random_image(rng, 9 + i, 13) for i in range(4)]
    source = tmp_path / "hf"
    datasets.Dataset.from_dict({"image": pictures, "label": [1, 0, 1, 1]}, features=features).save_to_disk(source)

    manifest = prepare(source, tmp_path / "out", size=SIZE, workers=1)

    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["counts"] == {"found": 4, "prepared": 4, "skipped": 0}
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    assert dataset.features["label"].names == ["cat", "dog"] and dataset["label"] == [1, 0, 1, 1]
    assert dataset["path"] == ["row 0", "row 1", "row 2", "row 3"]
    np.testing.assert_array_equal(stored_pixels(tmp_path / "out", (8, 8, 3)), expected_pixels(source))


def test_parallel_output_equals_in_process(image_folder, tmp_path):
    one = prepare(image_folder, tmp_path / "one", size=SIZE, workers=1, shard_size=2)
    two = prepare(image_folder, tmp_path / "two", size=SIZE, workers=2, shard_size=2)

    single = prepare(image_folder, tmp_path / "single", size=SIZE, workers=2, shard_size=1)  # b/bad.png's is empty

    assert two == one and single == one  # rows, skip list and the data files' checksums
    assert datasets.load_from_disk(str(tmp_path / "two"))["path"] == GOOD_NAMES


def test_resume_keeps_finished_shards(image_folder, tmp_path, monkeypatch):
    whole = prepare(image_folder, tmp_path / "whole", size=SIZE, workers=1)
    out = tmp_path / "resumed"
    calls = counting_calls(monkeypatch)
    with monkeypatch.context() as patch:
        interrupt_after_first_shard(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare(image_folder, out, size=SIZE, workers=1, shard_size=2)
    assert calls == [0, 1]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["shard-00000"]

    calls.clear()
    resumed = prepare(image_folder, out, size=SIZE, workers=1)  # the interrupted run's shard size is kept
    assert calls == [2, 3, 4, 5]  # the first shard is not decoded again
    assert resumed == whole
    assert datasets.load_from_disk(str(out))["path"] == GOOD_NAMES


def test_interrupted_preparation_refuses_other_settings_and_listing(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    with monkeypatch.context() as patch:
        interrupt_after_first_shard(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare(image_folder, out, size=SIZE, workers=1, shard_size=2)

    with pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=(16, 16), workers=1)
    assert str(refused.value) == (
        f"{out} holds an interrupted preparation with size 8x8, not 16x16: add --overwrite to start again, "
        "or give another --out"
    )

    random_image(np.random.default_rng(3), 12, 12).save(image_folder / "a" / "new.png")
    with pytest.raises(ValueError, match="interrupted preparation of another listing") as refused:
        prepare(image_folder, out, size=SIZE, workers=1)
    assert "\n" not in str(refused.value) and "--overwrite" in str(refused.value)

    manifest = prepare(image_folder, out, size=SIZE, workers=1, overwrite=True)
    assert manifest["counts"] == {"found": 7, "prepared": 6, "skipped": 1}


def test_complete_folder_is_kept_or_refused(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    first = prepare(image_folder, out, size=SIZE, workers=1)
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = counting_calls(monkeypatch)

    assert prepare(image_folder, out, size=SIZE, workers=1) == first
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files

    with pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=SIZE, channels=1, workers=1)
    assert str(refused.value) == (
        f"{out} holds a dataset prepared with channels 3, not 1: add --overwrite to replace it, or give another --out"
    )
    replaced = prepare(image_folder, out, size=SIZE, channels=1, workers=1, overwrite=True)
    assert replaced["shape"] == [8, 8, 1] and calls == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_folder_is_refused_and_kept(image_folder, tmp_path, overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=SIZE, workers=1, overwrite=overwrite)
    assert str(refused.value) == (
        f"--out {out} is not empty and holds no prepared dataset; give a new or empty folder "
        "(nothing in it is removed, --overwrite included)"
    )
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_no_decodable_image_is_an_error_and_leaves_nothing(image_folder, tmp_path):
    source = tmp_path / "broken"
    source.mkdir()
    (source / "bad.png").write_bytes((image_folder / "a" / "0.png").read_bytes()[:60])
    out = tmp_path / "prepared"
    with pytest.raises(ValueError, match=r"^no item of .*broken decodes \(the first, bad.png: OSError: ") as refused:
        prepare(source, out, size=SIZE, workers=1)
    assert "\n" not in str(refused.value)
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    ("size", "channels", "rows"),
    [
        ((8, 8), 3, 1000),  # the row limit
        ((1024, 1024), 3, 85),  # 256 MiB // 3 MiB per image
        ((16384, 16384), 3, 1),  # one image over the byte limit: still one row per shard
    ],
)
def test_default_shard_size(size, channels, rows):
    assert prepare_module._default_shard_size(size, channels) == rows


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": (8, 0)}, "size must be (height, width) in positive integers, got (8, 0)"),
        ({"size": SIZE, "channels": 4}, "channels must be 1 or 3, got 4"),
        ({"size": SIZE, "workers": 0}, "workers must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(image_folder, tmp_path, arguments, message):
    with pytest.raises(ValueError) as refused:
        prepare(image_folder, tmp_path / "out", **arguments)
    assert str(refused.value) == message
    assert not (tmp_path / "out").exists()
