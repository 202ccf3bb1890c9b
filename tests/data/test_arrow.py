"""`diffusion.data.arrow.ArrowImages`: Hugging Face datasets as training images.

Datasets are made in the test: an ``Image`` column (PNG bytes, or file paths), and a prepared dataset's pixel
column built as `diffusion.data.manifest` describes it (a fixed-length uint8 list per row).
"""

import io
import pickle
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from diffusion.data import ImageFolder, augmentation, background_colour, crop, fit, load_image, to_pixels
from diffusion.data.arrow import ArrowImages
from diffusion.image import to_mode

SOURCE = "src"  # what the messages call the dataset
ORIGIN = "/data/faces"  # what a prepared dataset's manifest says it was prepared from
SEEDS = range(12)


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _encoded(images: list, **columns: tuple[datasets.features.features.FeatureType, list]) -> datasets.Dataset:
    """An ``image`` column of ``Image`` features (PIL images, or file paths), then ``columns``: name -> (feature,
    values)."""
    features = {"image": datasets.Image()} | {name: feature for name, (feature, _) in columns.items()}
    data = {"image": images} | {name: values for name, (_, values) in columns.items()}
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def _prepared(pixels: np.ndarray, chunks: int = 1, labels: list[int] | None = None) -> datasets.Dataset:
    """A prepared dataset's table of ``(n, h, w, c)`` pixels in ``chunks`` record batches: ``image``, a fixed-length
    uint8 list per row; ``label``, a ClassLabel over a, b, c, when given; ``path``, ``n.png``."""
    n, h, w, c = pixels.shape
    features = {"image": datasets.List(datasets.Value("uint8"), length=h * w * c)}
    if labels is not None:
        features["label"] = datasets.ClassLabel(names=["a", "b", "c"])
    features["path"] = datasets.Value("string")
    batches = []
    for rows in np.array_split(np.arange(n), chunks):
        columns = [pa.FixedSizeListArray.from_arrays(pa.array(pixels[rows].reshape(-1)), h * w * c)]  # (rows, h*w*c)
        columns += [pa.array([labels[i] for i in rows], pa.int64())] if labels is not None else []
        columns += [pa.array([f"{i}.png" for i in rows])]
        batches.append(pa.record_batch(columns, names=list(features)))
    table = pa.Table.from_batches(batches)
    assert table.column("image").num_chunks == chunks
    info = datasets.DatasetInfo(features=datasets.Features(features))
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info)


def _expected(image: Image.Image, size: tuple[int, int], seed: int, random_crop: bool) -> np.ndarray:
    """What a batch holds for an image at ``seed``, with hflip: fitted, cropped and flipped as the seed says."""
    crop_at, flip = augmentation(seed)
    pixels = to_pixels(fit(image, size, crop_at if random_crop else None))
    return pixels[:, ::-1] if flip else pixels


def _hwc(batch_images: torch.Tensor) -> np.ndarray:
    return batch_images.permute(0, 2, 3, 1).numpy()  # (b, c, h, w) -> (b, h, w, c)


# ---------------------------------------------------------------------------------------------------
# an Image column


@pytest.mark.parametrize("stored", ["bytes", "path"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("random_crop", [False, True])
def test_an_image_column_gives_what_a_folder_of_the_same_files_gives(tmp_path, stored, channels, random_crop):
    arrays = [_noise(6, 9, seed=0), _noise(16, 12, seed=1), _noise(10, 10, seed=2)]
    paths = []
    for i, array in enumerate(arrays):
        paths.append(tmp_path / "folder" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(paths[-1])
    images = [Image.fromarray(a) for a in arrays] if stored == "bytes" else [str(p) for p in paths]
    dataset = ArrowImages(_encoded(images), SOURCE, (8, 8), channels, random_crop=random_crop)
    keys = [(i, seed) for seed in SEEDS for i in range(3)]
    batch = dataset.batch(keys)
    assert batch.images.shape == (len(keys), channels, 8, 8) and batch.skipped == ()
    for (i, seed), got in zip(keys, _hwc(batch.images), strict=True):
        want = _expected(load_image(io.BytesIO(_png(arrays[i])), channels), (8, 8), seed, random_crop)
        np.testing.assert_array_equal(got, want, err_msg=f"item {i}, seed {seed}")
    folder = ImageFolder(tmp_path / "folder", (8, 8), channels, random_crop=random_crop)
    assert torch.equal(folder.batch(keys).images, batch.images)
    assert [dataset.name(i) for i in range(3)] == ["row 0", "row 1", "row 2"]


@pytest.mark.parametrize(("channels", "background"), [(3, "black"), (1, "random"), (4, "white")])
def test_an_image_column_of_rgba_images_gives_what_a_folder_gives_on_its_background(tmp_path, channels, background):
    arrays = [_noise(8, 8, 4, seed=s) for s in range(2)]  # alpha of every value, 0 and 255 included
    for i, array in enumerate(arrays):
        (tmp_path / "folder").mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp_path / "folder" / f"{i}.png")
    dataset = ArrowImages(
        _encoded([Image.fromarray(a) for a in arrays]), SOURCE, (8, 8), channels, background=background
    )
    folder = ImageFolder(tmp_path / "folder", (8, 8), channels, background=background)
    keys = [(i, seed) for seed in SEEDS for i in range(2)]
    batch = dataset.batch(keys)
    assert batch.images.shape == (len(keys), channels, 8, 8)
    assert torch.equal(folder.batch(keys).images, batch.images)
    colour = (0, 0, 0) if background == "black" else background_colour(background, 0)
    expected = to_pixels(to_mode(Image.fromarray(arrays[0]), channels, colour))
    np.testing.assert_array_equal(dataset.read(0, None, colour), expected)


def test_an_image_column_of_another_name_is_found_when_it_is_the_only_one():
    photos = [Image.fromarray(_noise(8, 8, seed=s)) for s in range(2)]
    data = datasets.Dataset.from_dict(
        {"caption": ["x", "y"], "photo": photos},
        features=datasets.Features({"caption": datasets.Value("string"), "photo": datasets.Image()}),
    )
    dataset = ArrowImages(data, SOURCE, (8, 8), 3, hflip=False)
    assert dataset.image_column == "photo"
    np.testing.assert_array_equal(dataset.read(1, None), _noise(8, 8, seed=1))


def test_class_label_names_and_labels():
    images = [Image.fromarray(_noise(8, 8, seed=s)) for s in range(3)]
    data = _encoded(images, label=(datasets.ClassLabel(names=["cat", "dog", "emu"]), [2, 0, 1]))
    dataset = ArrowImages(data, SOURCE, (8, 8), 3)
    assert dataset.class_names == ["cat", "dog", "emu"]
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [2, 0, 1]
    assert dataset.batch([(1, 0), (0, 0)]).labels.tolist() == [0, 2]
    assert dataset[(2, 5)][1].item() == 1


@pytest.mark.parametrize(
    "feature, values, classes, labels",
    [
        (datasets.Value("int64"), [10, 3, 10, 7], ["3", "7", "10"], [2, 0, 2, 1]),  # sorted as numbers
        (datasets.Value("uint8"), [1, 1, 0, 1], ["0", "1"], [1, 1, 0, 1]),
        (datasets.Value("string"), ["dog", "cat", "dog", "emu"], ["cat", "dog", "emu"], [1, 0, 1, 2]),
    ],
)
def test_integer_and_string_label_columns_make_sorted_classes(feature, values, classes, labels):
    images = [Image.fromarray(_noise(8, 8, seed=s)) for s in range(4)]
    data = _encoded(images, kind=(feature, values))
    dataset = ArrowImages(data, SOURCE, (8, 8), 3, label_column="kind")
    assert dataset.class_names == classes
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == labels
    assert dataset.batch([(i, 0) for i in range(4)]).labels.tolist() == labels


def test_no_label_column_means_unlabelled():
    dataset = ArrowImages(_encoded([Image.fromarray(_noise(8, 8))]), SOURCE, (8, 8), 3)
    assert dataset.labels is None and dataset.class_names == []
    assert dataset.unlabelled_reason == "--class-cond needs labels: give --label-column, a column of src (image)"
    assert dataset.batch([(0, 0)]).labels.tolist() == [-1]


@pytest.mark.parametrize(
    "feature, values, message",
    [
        (
            datasets.ClassLabel(names=["a", "b"]),
            [0, -1],
            "column 'kind' of src has rows without a class (-1): drop them",
        ),
        (
            datasets.ClassLabel(names=["a", "b"]),
            [1, None],
            "column 'kind' of src has 1 row(s) without a label: drop them",
        ),
        (datasets.Value("int64"), [None, 4], "column 'kind' of src has 1 row(s) without a label: drop them"),
        (datasets.Value("string"), ["a", None], "column 'kind' of src has 1 row(s) without a label: drop them"),
        (
            datasets.Value("float32"),
            [0.5, 1.0],
            "column 'kind' of src holds Value('float32'), not class labels: give --label-column a ClassLabel, "
            "integer or string column (columns: image, kind)",
        ),
    ],
)
def test_a_label_column_that_does_not_label_every_row_is_refused(feature, values, message):
    images = [Image.fromarray(_noise(8, 8, seed=s)) for s in range(2)]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as error:
        ArrowImages(_encoded(images, kind=(feature, values)), SOURCE, (8, 8), 3, label_column="kind")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "image_column, label_column, message",
    [
        (
            "picture",
            None,
            "src has no column 'picture': give --image-column one of its columns (image, label, caption)",
        ),
        (
            "caption",
            None,
            "column 'caption' of src holds Value('string'), not images: give --image-column the column of an Image "
            "feature (columns: image, label, caption)",
        ),
        (None, "kind", "src has no column 'kind': give --label-column one of its columns (image, label, caption)"),
    ],
)
def test_a_wrong_column_is_one_line_naming_the_columns(image_column, label_column, message):
    data = _encoded(
        [Image.fromarray(_noise(8, 8))],
        label=(datasets.ClassLabel(names=["a"]), [0]),
        caption=(datasets.Value("string"), ["hello"]),
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ArrowImages(data, SOURCE, (8, 8), 3, image_column=image_column, label_column=label_column)


@pytest.mark.parametrize("columns", [["caption"], ["left", "right"]])  # no Image column; two, neither "image"
def test_no_image_column_to_choose_is_one_line_naming_the_columns(columns):
    image = Image.fromarray(_noise(8, 8))
    features = {name: datasets.Value("string") if name == "caption" else datasets.Image() for name in columns}
    data = datasets.Dataset.from_dict(
        {name: ["hello"] if name == "caption" else [image] for name in columns}, features=datasets.Features(features)
    )
    message = f"src has no image column: give --image-column one of its columns ({', '.join(columns)})"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ArrowImages(data, SOURCE, (8, 8), 3)


def test_an_empty_dataset_and_other_channel_counts_are_refused():
    with pytest.raises(ValueError, match=r"^src has no rows$"):
        ArrowImages(_encoded([]), SOURCE, (8, 8), 3)
    with pytest.raises(ValueError, match=r"^channels must be 1, 3 or 4, got 2$"):
        ArrowImages(_encoded([Image.fromarray(_noise(8, 8))]), SOURCE, (8, 8), 2)


# ---------------------------------------------------------------------------------------------------
# a prepared pixel column


@pytest.mark.parametrize("chunks", [1, 3])
def test_prepared_at_the_training_size_gives_the_stored_pixels(chunks):
    pixels = np.stack([_noise(8, 12, seed=s) for s in range(5)])  # (5, 8, 12, 3)
    dataset = ArrowImages(_prepared(pixels, chunks), SOURCE, (8, 12), 3, shape=(8, 12, 3))
    for i in range(5):
        np.testing.assert_array_equal(dataset.read(i, None), pixels[i])
    batch = dataset.batch([(i, seed) for i in range(5) for seed in SEEDS])
    flips = [augmentation(seed)[1] for i in range(5) for seed in SEEDS]
    expected = [p[:, ::-1] if flip else p for p, flip in zip(np.repeat(pixels, len(SEEDS), 0), flips, strict=True)]
    np.testing.assert_array_equal(_hwc(batch.images), np.stack(expected))
    assert [dataset.name(i) for i in range(5)] == ["0.png", "1.png", "2.png", "3.png", "4.png"]


def test_random_crop_on_a_dataset_prepared_at_the_training_size_is_refused_in_one_line():
    pixels = np.stack([_noise(8, 12, seed=s) for s in range(2)])
    with pytest.raises(
        ValueError,
        match=r"^--random-crop needs slack, and src was prepared at the training size 8x12: prepare its source "
        r"again with diffusion-prepare --size larger than 8x12, or leave --random-crop out$",
    ):
        ArrowImages(_prepared(pixels, 1), SOURCE, (8, 12), 3, random_crop=True, shape=(8, 12, 3))


def test_a_prepared_dataset_reads_only_its_image_column():
    pixels = np.stack([_noise(8, 8, seed=s) for s in range(2)])
    with pytest.raises(ValueError, match=r"^a prepared dataset's images are its column 'image': leave --image-column"):
        ArrowImages(_prepared(pixels, 1), SOURCE, (8, 8), 3, image_column="path", shape=(8, 8, 3))


def test_a_row_without_an_image_is_replaced_by_the_next_and_named():
    images = [Image.fromarray(_noise(8, 8, seed=s)) for s in range(3)]
    features = datasets.Features({"image": datasets.Image()})
    dataset = datasets.Dataset.from_dict({"image": [images[0], None, images[2]]}, features=features)
    source = ArrowImages(dataset, SOURCE, (8, 8), 3, hflip=False)
    batch = source.batch([(1, 0)])
    assert batch.skipped == (("row 1", "ValueError: the row has no image"),)
    np.testing.assert_array_equal(_hwc(batch.images)[0], source.pixels(2))


def test_prepared_larger_with_random_crop_gives_a_window_without_resizing():
    pixels = np.stack([_noise(12, 16, seed=s) for s in range(3)])  # stored 12x16, trained at 8x8
    dataset = ArrowImages(_prepared(pixels, 2), SOURCE, (8, 8), 3, random_crop=True, shape=(12, 16, 3))
    keys = [(i, seed) for i in range(3) for seed in SEEDS]
    for (i, seed), got in zip(keys, _hwc(dataset.batch(keys).images), strict=True):
        crop_at, flip = augmentation(seed)
        window = crop(pixels[i], (8, 8), crop_at)
        np.testing.assert_array_equal(got, window[:, ::-1] if flip else window, err_msg=f"item {i}, seed {seed}")
    windows = {dataset.read(0, augmentation(seed)[0]).tobytes() for seed in SEEDS}
    assert len(windows) >= 6  # the seed moves the window over the 5 x 9 positions


@pytest.mark.parametrize("channels", [1, 3])
def test_prepared_larger_without_random_crop_is_fitted(channels):
    pixels = np.stack([_noise(12, 16, channels, seed=s) for s in range(2)])
    dataset = ArrowImages(_prepared(pixels), SOURCE, (8, 8), channels, shape=(12, 16, channels))
    for i in range(2):
        image = Image.fromarray(pixels[i, :, :, 0] if channels == 1 else pixels[i])
        expected = to_pixels(fit(image, (8, 8), None))  # resized to 11x8 to cover, then the centre cropped
        assert expected.shape == (8, 8, channels)
        np.testing.assert_array_equal(dataset.read(i, None), expected)
        np.testing.assert_array_equal(dataset.pixels(i), expected)


@pytest.mark.parametrize("random_crop", [False, True])
def test_prepared_smaller_than_the_training_size_is_refused_in_one_line(random_crop):
    pixels = np.stack([_noise(12, 16, seed=s) for s in range(2)])  # 12 high, trained 16 high
    with pytest.raises(ValueError, match=r"^src was prepared at 12x16, smaller than the training size 16x8: prepare "
                       r"/data/faces again with diffusion-prepare --size 16x8 or larger$"):  # fmt: skip
        ArrowImages(
            _prepared(pixels), SOURCE, (16, 8), 3, random_crop=random_crop, shape=(12, 16, 3), prepared_from=ORIGIN
        )


def test_prepared_labels_come_from_its_class_label():
    pixels = np.stack([_noise(8, 8, seed=s) for s in range(4)])
    dataset = ArrowImages(_prepared(pixels, 2, labels=[2, 0, 1, 2]), SOURCE, (8, 8), 3, shape=(8, 8, 3))
    assert dataset.class_names == ["a", "b", "c"] and dataset.labels.tolist() == [2, 0, 1, 2]


def test_prepared_with_other_channels_is_refused():
    pixels = np.stack([_noise(8, 8, seed=s) for s in range(2)])
    message = (
        "src was prepared with 3 channel(s): train it with --channels 3, or prepare /data/faces again with "
        "diffusion-prepare --channels 1"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ArrowImages(_prepared(pixels), SOURCE, (8, 8), 1, shape=(8, 8, 3), prepared_from=ORIGIN)


# ---------------------------------------------------------------------------------------------------
# pickling (data-loader workers) and views


def _datasets_of_each_kind(tmp_path: Path) -> dict[str, tuple[datasets.Dataset, tuple[int, int, int] | None]]:
    images = [Image.fromarray(_noise(10, 12, seed=s)) for s in range(4)]
    encoded = _encoded(images, label=(datasets.ClassLabel(names=["a", "b", "c"]), [0, 1, 2, 1]))
    prepared = _prepared(np.stack([_noise(10, 12, seed=s) for s in range(4)]), 2, labels=[0, 1, 2, 1])
    prepared.save_to_disk(str(tmp_path / "prepared"))
    return {
        "image column": (encoded, None),
        "prepared": (prepared, (10, 12, 3)),
        "memory-mapped": (datasets.load_from_disk(str(tmp_path / "prepared")), (10, 12, 3)),
    }


@pytest.mark.parametrize("kind", ["image column", "prepared", "memory-mapped"])
def test_a_pickled_dataset_reads_the_same_pixels(tmp_path, kind):
    data, shape = _datasets_of_each_kind(tmp_path)[kind]
    dataset = ArrowImages(data, SOURCE, (8, 8), 3, random_crop=True, shape=shape)
    keys = [(i, seed) for i in range(4) for seed in (0, 1, 2)]
    before = dataset.batch(keys)  # the views into the Arrow data exist now: they are rebuilt, not pickled
    copy = pickle.loads(pickle.dumps(dataset))
    after = copy.batch(keys)
    assert torch.equal(after.images, before.images) and torch.equal(after.labels, before.labels)
    assert after.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [1] * 3


@pytest.mark.parametrize("kind", ["image column", "prepared"])
def test_a_selected_view_reads_its_own_rows(tmp_path, kind):
    data, shape = _datasets_of_each_kind(tmp_path)[kind]
    whole = ArrowImages(data, SOURCE, (8, 8), 3, shape=shape)
    view = ArrowImages(data.select([3, 0, 3, 2]), SOURCE, (8, 8), 3, shape=shape)
    assert len(view) == 4
    assert view.labels.tolist() == [1, 0, 1, 2]
    for i, row in enumerate([3, 0, 3, 2]):
        np.testing.assert_array_equal(view.read(i, None), whole.read(row, None))
