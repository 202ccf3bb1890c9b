"""`diffusion.data.sources.open_images`: the kind of ``--data`` is told from the path itself.

Every Hugging Face source is written in the test (``save_to_disk``, Parquet, Arrow, a prepared folder); the
Hub is offline (tests/conftest.py), so a Hub name is only ever refused.
"""

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from diffusion.data import ImageFolder, open_images
from diffusion.data.arrow import ArrowImages

SIZE = (8, 8)


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _dataset(n: int, first_seed: int = 0) -> datasets.Dataset:
    """``n`` 8x8 noise images (seeds ``first_seed``...) in an ``image`` column, labelled a, b, a, b ..."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.fromarray(_noise(8, 8, seed=first_seed + i)) for i in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)


def _first_pixels(images) -> np.ndarray:
    """Item 0, centre-fitted and unflipped, as (h, w, c)."""
    return images.pixels(0)


def _prepared(folder: Path, n: int, shape: tuple[int, int, int], complete: bool = True) -> np.ndarray:
    """A prepared dataset of ``n`` noise images stored at ``shape``, as manifest.py describes it; its pixels."""
    h, w, c = shape
    pixels = np.stack([_noise(h, w, seed=i) for i in range(n)])  # (n, h, w, c)
    features = datasets.Features(
        {"image": datasets.List(datasets.Value("uint8"), length=h * w * c), "path": datasets.Value("string")}
    )
    table = pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), h * w * c),  # (n, h*w*c)
            "path": pa.array([f"{i}.png" for i in range(n)]),
        }
    )
    info = datasets.DatasetInfo(features=features)
    datasets.Dataset(datasets.table.InMemoryTable(table), info=info).save_to_disk(str(folder))
    manifest = {"format": "pixel-diffusion-prepared", "version": 1, "complete": complete, "shape": [h, w, c]}
    manifest["files"] = {f.name: {"bytes": f.stat().st_size} for f in folder.glob("data-*.arrow")}
    (folder / "manifest.json").write_text(json.dumps(manifest | {"size": [h, w], "channels": c}))
    return pixels


def _image_folder(root: Path, n: int) -> Path:
    for i in range(n):
        path = root / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(8, 8, seed=i)).save(path)
    return root


def test_a_folder_of_images_is_an_image_folder(tmp_path):
    images = open_images(_image_folder(tmp_path / "data", 3), SIZE, 3, random_crop=True, hflip=False)
    assert type(images) is ImageFolder and len(images) == 3
    assert (images.random_crop, images.hflip, images.class_names) == (True, False, ["a", "b"])
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))


def test_a_saved_dataset_is_read_from_its_folder(tmp_path):
    _dataset(5).save_to_disk(str(tmp_path / "saved"))
    images = open_images(tmp_path / "saved", SIZE, 3, random_crop=True, hflip=False)
    assert type(images) is ArrowImages and len(images) == 5 and images.shape is None
    assert (images.random_crop, images.hflip) == (True, False)
    assert images.class_names == ["a", "b"] and images.labels.tolist() == [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))
    assert images.source == str(tmp_path / "saved")


@pytest.mark.parametrize(
    "splits, used",
    [
        ({"train": (3, 0), "test": (2, 100)}, (3, 0)),
        ({"validation": (2, 100)}, (2, 100)),  # the only split, whatever its name
    ],
)
def test_a_saved_dataset_dict_gives_its_train_split(tmp_path, splits, used):
    parts = {name: _dataset(n, first) for name, (n, first) in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    images = open_images(tmp_path / "saved", SIZE, 3)
    assert type(images) is ArrowImages and len(images) == used[0]
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=used[1]))


def test_a_saved_dataset_dict_without_a_train_split_is_refused(tmp_path):
    datasets.DatasetDict({"test": _dataset(2), "validation": _dataset(1)}).save_to_disk(str(tmp_path / "saved"))
    message = f"{tmp_path / 'saved'} has splits test, validation and none is named train: save the one to train on"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        open_images(tmp_path / "saved", SIZE, 3)


def test_a_parquet_file(tmp_path):
    _dataset(4).to_parquet(str(tmp_path / "train.parquet"))
    images = open_images(tmp_path / "train.parquet", SIZE, 3)
    assert type(images) is ArrowImages and len(images) == 4
    assert images.class_names == ["a", "b"] and images.labels.tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))


def test_a_folder_of_parquet_files_in_name_order_less_what_tools_leave(tmp_path):
    folder = tmp_path / "tables"
    (folder / "data").mkdir(parents=True)
    _dataset(2, first_seed=10).to_parquet(str(folder / "data" / "train-00001.parquet"))
    _dataset(3, first_seed=0).to_parquet(str(folder / "data" / "train-00000.parquet"))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".cache" / "huggingface").mkdir(parents=True)  # what huggingface-cli download --local-dir leaves
    (folder / ".cache" / "huggingface" / "train-00000.parquet.metadata").write_text("abc\n")
    images = open_images(folder, SIZE, 3)
    assert type(images) is ArrowImages and len(images) == 5
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))  # train-00000 first
    np.testing.assert_array_equal(images.pixels(3), _noise(8, 8, seed=10))


def test_an_arrow_file(tmp_path):
    _dataset(3).save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    shutil.copy(arrow, tmp_path / "train.arrow")
    images = open_images(tmp_path / "train.arrow", SIZE, 3)
    assert type(images) is ArrowImages and len(images) == 3
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))


def test_a_downloaded_hub_folder_gives_its_train_split_beside_its_readme(tmp_path):
    """A Hub download: README.md beside data/train-*.parquet and data/test-*.parquet; the test rows stay out."""
    (tmp_path / "data").mkdir()
    _dataset(6).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    _dataset(4, first_seed=100).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    (tmp_path / "README.md").write_text("# a dataset card\n")
    images = open_images(tmp_path, SIZE, 3, hflip=False)
    assert type(images) is ArrowImages and len(images) == 6
    assert np.array_equal(
        images.pixels(5), open_images(tmp_path / "data" / "train-00000-of-00001.parquet", SIZE, 3).pixels(5)
    )


def test_another_tools_manifest_beside_images_is_not_ours(tmp_path):
    _image_folder(tmp_path / "photos", 2)
    (tmp_path / "photos" / "manifest.json").write_text('{"labeller": "some tool", "version": 3}')
    images = open_images(tmp_path / "photos", SIZE, 3)
    assert type(images) is ImageFolder and len(images) == 2


def test_a_folder_of_images_and_dataset_files_is_refused_in_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    _dataset(2).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    (tmp_path / "assets").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "assets" / "sample.png")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))} holds both images and dataset files "
                       r"\(data/train-00000-of-00001.parquet\): give --data the folder of one of them$"):  # fmt: skip
        open_images(tmp_path, SIZE, 3)
    assert len(open_images(tmp_path / "data", SIZE, 3)) == 2


def test_dataset_files_that_datasets_cannot_read_are_one_line(tmp_path):
    _dataset(2).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_dict({"other": [1, 2]}).to_parquet(str(tmp_path / "b.parquet"))  # other columns
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(tmp_path))} cannot be read as a dataset \(.+\): check its files$"
    ):
        open_images(tmp_path, SIZE, 3)


def test_a_damaged_prepared_folder_is_refused_in_one_line(tmp_path):
    _prepared(tmp_path / "prepared", 3, (8, 8, 3))
    data_file = next((tmp_path / "prepared").glob("data-*.arrow"))
    data_file.write_bytes(data_file.read_bytes()[:-10])
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(data_file))} is damaged \(\d+ bytes, the manifest says \d+\)"
    ):
        open_images(tmp_path / "prepared", SIZE, 3)


def test_a_prepared_folder_is_read_with_its_shape(tmp_path):
    pixels = _prepared(tmp_path / "prepared", 3, (8, 8, 3))
    images = open_images(tmp_path / "prepared", SIZE, 3, hflip=False)
    assert type(images) is ArrowImages and len(images) == 3 and images.shape == (8, 8, 3)
    batch = images.batch([(i, 0) for i in range(3)])
    assert torch.equal(batch.images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert images.name(2) == "2.png" and images.labels is None


def test_an_interrupted_preparation_is_refused(tmp_path):
    _prepared(tmp_path / "prepared", 2, (8, 8, 3), complete=False)
    message = f"{tmp_path / 'prepared'} is an interrupted preparation: run the same diffusion-prepare command again"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        open_images(tmp_path / "prepared", SIZE, 3)


def test_a_missing_path_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^data folder {re.escape(str(tmp_path / 'nope'))} not found"):
        open_images(tmp_path / "nope", SIZE, 3)


def test_a_hub_name_offline_is_not_found_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder "owner" here: owner/name can only be a Hub name
    with pytest.raises(FileNotFoundError) as error:
        open_images("owner/name", SIZE, 3)
    message = str(error.value)
    assert message.startswith("--data owner/name: no such folder, and the Hugging Face Hub dataset of that name")
    assert message.endswith("check the name and the network") and "\n" not in message


@pytest.mark.parametrize("flag", ["image_column", "label_column"])
def test_column_flags_on_a_folder_of_images_are_refused(tmp_path, flag):
    root = _image_folder(tmp_path / "data", 2)
    message = f"--{flag.replace('_', '-')} is for Hugging Face datasets; {root} is a folder of images"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        open_images(root, SIZE, 3, **{flag: "x"})


def test_column_flags_reach_a_hugging_face_source(tmp_path):
    features = datasets.Features({"photo": datasets.Image(), "kind": datasets.Value("string")})
    images = [Image.fromarray(_noise(8, 8, seed=i)) for i in range(3)]
    data = datasets.Dataset.from_dict({"photo": images, "kind": ["dog", "cat", "dog"]}, features=features)
    data.to_parquet(str(tmp_path / "train.parquet"))
    opened = open_images(tmp_path / "train.parquet", SIZE, 3, image_column="photo", label_column="kind")
    assert opened.image_column == "photo"
    assert opened.class_names == ["cat", "dog"] and opened.labels.tolist() == [1, 0, 1]


def _block_datasets(monkeypatch, how: str) -> None:
    if how == "sys.modules":
        monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    else:

        def import_module(name, *args):
            if name == "datasets":
                raise ModuleNotFoundError("No module named 'datasets'")
            return importlib.import_module(name, *args)

        monkeypatch.setattr("diffusion.data.sources.importlib.import_module", import_module)


@pytest.mark.parametrize("how", ["sys.modules", "import_module"])
@pytest.mark.parametrize("kind", ["saved", "parquet", "prepared"])
def test_a_hugging_face_source_without_datasets_names_the_extra(tmp_path, monkeypatch, how, kind):
    data = {"saved": tmp_path / "saved", "parquet": tmp_path / "train.parquet", "prepared": tmp_path / "prepared"}[kind]
    if kind == "saved":
        _dataset(2).save_to_disk(str(data))
    elif kind == "parquet":
        _dataset(2).to_parquet(str(data))
    else:
        _prepared(data, 2, (8, 8, 3))
    _block_datasets(monkeypatch, how)
    message = (
        f"{data}: Hugging Face and prepared datasets need the datasets package: pip install 'pixel-diffusion[datasets]'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        open_images(data, SIZE, 3)


@pytest.mark.parametrize("how", ["sys.modules", "import_module"])
def test_a_folder_of_images_needs_no_datasets(tmp_path, monkeypatch, how):
    root = _image_folder(tmp_path / "data", 2)
    _block_datasets(monkeypatch, how)
    images = open_images(root, SIZE, 3)
    assert type(images) is ImageFolder and len(images) == 2
    np.testing.assert_array_equal(_first_pixels(images), _noise(8, 8, seed=0))
