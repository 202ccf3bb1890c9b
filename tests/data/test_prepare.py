"""diffusion.data.prepare and diffusion.data.shards: rows, manifest and checksums of a prepared dataset;
parallel decoding; resuming an interrupted preparation; the folders it refuses, the sources whose change it
detects, the damaged files it finds, the lock that keeps a second preparation out."""

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion.data import open_images
from diffusion.data.prepare import prepare

prepare_module = importlib.import_module("diffusion.data.prepare")
shards_module = importlib.import_module("diffusion.data.shards")

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
    real_commit = shards_module.commit_shard

    def commit_then_stop(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(shards_module, "commit_shard", commit_then_stop)


def save_huggingface_dataset(folder: Path, seed: int, rows: int = 4) -> None:
    """A ``save_to_disk`` folder of ``rows`` random 9x13 PIL images (no file path) labelled cat or dog."""
    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    pictures = [random_image(rng, 9 + i, 13) for i in range(rows)]
    labels = [int(i % 3 != 1) for i in range(rows)]
    datasets.Dataset.from_dict({"image": pictures, "label": labels}, features=features).save_to_disk(folder)


@contextlib.contextmanager
def locked_by(out: Path, pid: str) -> Iterator[None]:
    """Hold ``out``'s lock as another diffusion-prepare would, with ``pid`` written in it."""
    fcntl = pytest.importorskip("fcntl")
    out.mkdir(exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(pid)
        lock.flush()
        yield


def test_folder_rows_manifest_and_checksums(image_folder, tmp_path):
    out = tmp_path / "prepared"
    manifest = prepare(image_folder, out, size=SIZE, workers=1)

    assert manifest["format"] == "pixel-diffusion-prepared" and manifest["version"] == 1
    assert manifest["complete"] is True and manifest["created_by"] == "pixel-diffusion 0.1.0"
    assert manifest["settings"] == {
        "source": str(image_folder.resolve()),
        "size": [8, 8],
        "channels": 3,
        "background": "white",
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
    source = tmp_path / "hf"
    save_huggingface_dataset(source, seed=2)

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
    assert not out.exists()  # created by this run, and left as it was found: absent


@pytest.mark.parametrize(
    ("size", "channels", "rows"),
    [
        ((8, 8), 3, 1000),  # the row limit
        ((1024, 1024), 3, 85),  # 256 MiB // 3 MiB per image
        ((16384, 16384), 3, 1),  # one image over the byte limit: still one row per shard
    ],
)
def test_default_shard_size(size, channels, rows):
    assert shards_module.default_shard_size(size, channels) == rows


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": (8, 0)}, "size must be (height, width) in positive integers, got (8, 0)"),
        ({"size": SIZE, "channels": 2}, "channels must be 1, 3 or 4, got 2"),
        ({"size": SIZE, "background": "blue"}, "background must be white or black, got 'blue'"),
        (
            {"size": SIZE, "channels": 4, "background": "black"},
            "--background black has no effect with --channels 4, which keeps transparency as the alpha channel: "
            "leave --background out, or prepare at --channels 1 or 3",
        ),
        ({"size": SIZE, "workers": 0}, "workers must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(image_folder, tmp_path, arguments, message):
    with pytest.raises(ValueError) as refused:
        prepare(image_folder, tmp_path / "out", **arguments)
    assert str(refused.value) == message
    assert not (tmp_path / "out").exists()


def test_huggingface_rows_are_named_by_their_file_path(image_folder, tmp_path):
    """A row whose Image keeps a file path is named by it, in the ``path`` column and the skip list; a row
    of bytes alone is ``row N``."""
    rows = [str(image_folder / "a" / "0.png"), str(image_folder / "b" / "bad.png")]
    rows += [Image.open(image_folder / "a" / "1.png").convert("RGB"), str(image_folder / "b" / "0.jpg")]
    source = tmp_path / "hf"
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": rows}, features=features).save_to_disk(source)  # keeps the file names

    manifest = prepare(source, tmp_path / "out", size=SIZE, workers=1)

    assert [entry["source"] for entry in manifest["skipped"]] == ["bad.png"]
    assert datasets.load_from_disk(str(tmp_path / "out"))["path"] == ["0.png", "row 2", "0.jpg"]


def test_resume_refuses_a_changed_huggingface_dataset_of_as_many_rows(tmp_path, monkeypatch):
    source, out = tmp_path / "hf", tmp_path / "prepared"
    save_huggingface_dataset(source, seed=2)
    with monkeypatch.context() as patch:
        interrupt_after_first_shard(patch)
        with pytest.raises(KeyboardInterrupt):
            prepare(source, out, size=SIZE, workers=1, shard_size=2)

    shutil.rmtree(source)
    save_huggingface_dataset(source, seed=3)  # other pixels, the same 4 rows and labels
    with pytest.raises(ValueError) as refused:
        prepare(source, out, size=SIZE, workers=1)
    assert str(refused.value) == (
        f"{out} holds an interrupted preparation of another version of {source.resolve()} (its rows were added, "
        "removed or changed since): add --overwrite to start again, or give another --out"
    )

    shutil.rmtree(source)
    save_huggingface_dataset(source, seed=2)  # the dataset as it was: datasets gives it the same fingerprint
    calls = counting_calls(monkeypatch)
    prepare(source, out, size=SIZE, workers=1)
    assert calls == [2, 3]
    np.testing.assert_array_equal(stored_pixels(out, (8, 8, 3)), expected_pixels(source))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_complete_folder_with_a_damaged_file_is_refused(image_folder, tmp_path, damage):
    out = tmp_path / "prepared"
    first = prepare(image_folder, out, size=SIZE, workers=1)
    data = out / "data-00000-of-00001.arrow"
    content = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(content[:-1])
        why = f"{len(content) - 1} bytes, the manifest says {len(content)}"
    else:
        content[len(content) // 2] ^= 0xFF
        data.write_bytes(content)
        why = "its SHA-256 is not the manifest's"

    with pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=SIZE, workers=1)
    assert str(refused.value) == f"{data} is damaged ({why}): prepare the dataset again with --overwrite"

    assert prepare(image_folder, out, size=SIZE, workers=1, overwrite=True) == first


def test_a_folder_being_prepared_is_refused(image_folder, tmp_path):
    out = tmp_path / "prepared"
    with locked_by(out, "4242"), pytest.raises(ValueError) as refused:
        prepare(image_folder, out, size=SIZE, workers=1)
    assert str(refused.value) == (
        f"{out} is being prepared by another diffusion-prepare (pid 4242): wait for it, or give another --out"
    )
    assert os.listdir(out) == [".lock"]  # the holder's lock is left to it

    manifest = prepare(image_folder, out, size=SIZE, workers=1)  # a lock nobody holds is no foreign file
    assert manifest["counts"] == {"found": 6, "prepared": 5, "skipped": 1}
    assert ".lock" not in os.listdir(out)

    with locked_by(out, ""), pytest.raises(ValueError, match=r"\(pid unknown\): wait for it"):
        prepare(image_folder, out, size=SIZE, workers=1)  # a complete folder too: its files are being checked


def test_the_lock_holds_the_preparing_process_id(image_folder, tmp_path, monkeypatch):
    out, seen = tmp_path / "prepared", []
    real_commit = shards_module.commit_shard

    def commit_and_look(*args, **kwargs):
        seen.append((out / ".lock").read_text())
        real_commit(*args, **kwargs)

    monkeypatch.setattr(shards_module, "commit_shard", commit_and_look)
    prepare(image_folder, out, size=SIZE, workers=1, shard_size=3)
    assert seen == [f"{os.getpid()}\n"] * 2
    assert sorted(os.listdir(out)) == ["data-00000-of-00001.arrow", "dataset_info.json", "manifest.json", "state.json"]
