"""`ArrowImages`: training images in a Hugging Face dataset, read memory-mapped from its Arrow files.

Two kinds of image column are read:

- an ``Image`` feature (encoded PNG/JPEG bytes, or a file path): each item is decoded and fitted as a
  folder's file is (`files.load_image`, `augment.fit`);
- a prepared dataset's pixel column (`manifest`): fixed-length uint8 lists of a known shape, seen as one
  numpy array per Arrow record batch without a copy, so that reading an item is an index and a slice (and,
  for RGBA of a manifest with `manifest.stale_transparent_rgb`, RGB zeroed under alpha 0 in each batch).

Labels come from a ``ClassLabel`` column (its names are the class names), or from an integer or string
column, whose sorted distinct values become the classes.
"""

import io
from typing import Any

import numpy as np
from PIL import Image

from ..image import WHITE, to_mode
from .augment import Background, check_conversion, crop, fit, to_pixels
from .files import load_image
from .images import Batch, TrainingImages


class ArrowImages(TrainingImages):
    """The rows of ``dataset`` (a `datasets.Dataset`) as training images.

    Args:
        dataset: memory-mapped (``load_from_disk``, ``load_dataset``) or in memory.
        source: what the user gave, for messages.
        channels: 1 and 3 composite transparency on ``background`` (random: a colour per item, from its
            seed); 4 keep it as the alpha channel.
        image_column: the column of images; None: ``image``, else the one ``Image`` column.
        label_column: the column of labels; None: ``label`` if there is one, else unlabelled.
        shape: ``(h, w, c)`` of a prepared dataset's pixel column; None for an ``Image`` column.
        composited_on: the background a prepared dataset's 1 or 3 channels were composited on (its
            manifest's); None for RGBA pixels (``c`` 4), composited at reading, on ``background``.
        prepared_from: the source a prepared dataset was prepared from (its manifest's), for messages.
        stale_rgb: a prepared dataset's RGBA may keep RGB under alpha 0 (`manifest.stale_transparent_rgb`):
            it is zeroed, as `diffusion.image.to_mode` gives a file's pixels.
    """

    def __init__(
        self,
        dataset: Any,
        source: str,
        size: tuple[int, int],
        channels: int,
        *,
        random_crop: bool = False,
        hflip: bool = True,
        background: Background = "white",
        image_column: str | None = None,
        label_column: str | None = None,
        shape: tuple[int, int, int] | None = None,
        composited_on: str | None = "white",
        prepared_from: str | None = None,
        stale_rgb: bool = False,
    ) -> None:
        check_conversion(channels, background)
        if dataset._indices is not None:  # a select()/shuffle() view: give it rows of its own
            dataset = dataset.flatten_indices()
        self.dataset, self.source, self.shape = dataset, source, shape
        self.size, self.channels, self.background = size, channels, background
        self.random_crop, self.hflip = random_crop, hflip
        self.prepared_from = prepared_from
        # Compositing at 1 and 3 channels, and a resize (premultiplied), already ignore RGB under alpha 0.
        self.zero_transparent_rgb = stale_rgb and shape is not None and shape[2] == 4 and channels == 4
        self.image_column = _image_column(dataset, source, image_column, shape is not None)
        if len(dataset) == 0:
            raise ValueError(f"{source} has no rows")
        if shape is not None:
            _check_prepared(self, composited_on)
        self.labels, self.class_names, self.unlabelled_reason = _labels(dataset, source, label_column)
        self._chunks: tuple[np.ndarray, list] | None = None  # built on first use, in each worker process

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_chunks": None}  # the views are rebuilt, not pickled with their data

    def name(self, index: int) -> str:
        if "path" in self.dataset.column_names and self.shape is not None:
            return self.dataset.data.column("path")[index].as_py()
        return f"row {index}"

    def batch(self, keys: list[tuple[int, int]]) -> Batch:
        batch = super().batch(keys)
        if self.zero_transparent_rgb:
            rgba = batch.images  # (b, 4, h, w) uint8
            rgba[:, :3].mul_(rgba[:, 3:].clamp(max=1))  # times 0 where alpha is 0, else times 1
        return batch

    def pixels(self, index: int) -> np.ndarray:
        pixels = super().pixels(index)  # (h, w, c)
        return pixels * (pixels[:, :, 3:] > 0) if self.zero_transparent_rgb else pixels

    def read(
        self, index: int, crop_at: tuple[float, float] | None, background: tuple[int, int, int] = WHITE
    ) -> np.ndarray:
        starts, chunks = self._chunks or self._open()
        chunk = int(np.searchsorted(starts, index, side="right")) - 1
        row = index - int(starts[chunk])
        if self.shape is None:
            data, path = chunks[chunk]
            blob, file = data[row].as_py(), path[row].as_py()
            if blob is None and file is None:
                raise ValueError("the row has no image")  # replaced as an image that does not decode is
            image = load_image(io.BytesIO(blob) if blob is not None else file, self.channels, background)
            return to_pixels(fit(image, self.size, crop_at))
        pixels = self._fitted(chunks[chunk][row], crop_at)  # (h, w, c) as stored
        if pixels.shape[2] == self.channels:
            return pixels
        # RGBA pixels at 1 or 3 channels: composited now, as a folder's file is when decoded
        return to_pixels(to_mode(Image.fromarray(pixels), self.channels, background))

    def _fitted(self, pixels: np.ndarray, crop_at: tuple[float, float] | None) -> np.ndarray:
        """A prepared row's ``(h, w, c)`` pixels fitted to ``size``, with its stored channels."""
        if pixels.shape[:2] == tuple(self.size):
            return pixels
        if crop_at is not None and pixels.shape[0] >= self.size[0] and pixels.shape[1] >= self.size[1]:
            return crop(pixels, self.size, crop_at)  # a random crop takes its slack from the prepared size
        return to_pixels(fit(Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels), self.size, crop_at))

    def _open(self) -> tuple[np.ndarray, list]:
        """(the first row of each Arrow chunk; each chunk's pixels as an ``(n, h, w, c)`` array, or its
        encoded images as ``(bytes, path)`` arrays)."""
        column = self.dataset.data.column(self.image_column)
        starts = np.cumsum([0] + [len(c) for c in column.chunks[:-1]])
        if self.shape is None:
            chunks = [dict(zip([f.name for f in c.type], c.flatten(), strict=True)) for c in column.chunks]
            chunks = [(c["bytes"], c["path"]) for c in chunks]
        else:
            chunks = [c.flatten().to_numpy(zero_copy_only=True).reshape(-1, *self.shape) for c in column.chunks]
        self._chunks = (starts, chunks)
        return self._chunks


def _check_prepared(images: ArrowImages, composited_on: str | None) -> None:
    """Refuse to train a prepared dataset at a size, channels or background its stored pixels cannot give.

    The way out names the dataset's own source: preparing the prepared dataset again would give the same
    stored pixels, and the same refusal.

    Raises:
        ValueError: naming the training flag to change, or how to prepare the dataset again.
    """
    (height, width, stored), size, source = images.shape, images.size, images.source
    again = f"prepare {images.prepared_from or 'its source'} again with diffusion-prepare"
    if stored != 4 and images.channels == 4:
        raise ValueError(
            f"{source} was prepared with {stored} channel(s), its transparency composited on {composited_on}: "
            f"{again} --channels 4 to train with --channels 4"
        )
    if stored != 4 and stored != images.channels:
        raise ValueError(
            f"{source} was prepared with {stored} channel(s): train it with --channels {stored}, or {again} "
            f"--channels {images.channels}"
        )
    if stored != 4 and images.background != composited_on:
        raise ValueError(
            f"{source} was prepared with its transparency composited on {composited_on}, so --background "
            f"{images.background} cannot apply: train it with --background {composited_on}, or {again} "
            "--channels 4 to choose the background at training time"
        )
    if height < size[0] or width < size[1]:
        raise ValueError(
            f"{source} was prepared at {height}x{width}, smaller than the training size {size[0]}x{size[1]}: "
            f"{again} --size {size[0]}x{size[1]} or larger"
        )
    if images.random_crop and (height, width) == tuple(size):
        raise ValueError(
            f"--random-crop needs slack, and {source} was prepared at the training size {size[0]}x{size[1]}: "
            f"{again} --size larger than {size[0]}x{size[1]}, or leave --random-crop out"
        )


def _image_column(dataset: Any, source: str, given: str | None, prepared: bool) -> str:
    """The image column: ``given``, else ``image``, else the one ``Image`` column."""
    from datasets import Image as ImageFeature

    features = dataset.features
    encoded = [name for name, feature in features.items() if isinstance(feature, ImageFeature)]
    columns = ", ".join(features)
    name = given or ("image" if "image" in features else encoded[0] if len(encoded) == 1 else None)
    if name is None or name not in features:
        raise ValueError(
            f"{source} has no {'column ' + repr(given) if given else 'image column'}: give --image-column one of "
            f"its columns ({columns})"
        )
    if prepared and name != "image":
        raise ValueError(f"a prepared dataset's images are its column 'image': leave --image-column out for {source}")
    if not prepared and not isinstance(features[name], ImageFeature):
        raise ValueError(
            f"column {name!r} of {source} holds {features[name]}, not images: give --image-column the column of "
            f"an Image feature (columns: {columns})"
        )
    return name


def _labels(dataset: Any, source: str, given: str | None) -> tuple[np.ndarray | None, list[str], str]:
    """(each row's class index, or None; the class names; why there are none, for --class-cond)."""
    from datasets import ClassLabel

    features, columns = dataset.features, ", ".join(dataset.features)
    name = given or ("label" if "label" in features else None)
    if name is None:
        return None, [], f"--class-cond needs labels: give --label-column, a column of {source} ({columns})"
    if name not in features:
        raise ValueError(f"{source} has no column {name!r}: give --label-column one of its columns ({columns})")
    column = dataset.data.column(name)
    if column.null_count:
        raise ValueError(
            f"column {name!r} of {source} has {column.null_count} row(s) without a label: drop them, then train"
        )
    values = column.to_numpy()
    if isinstance(features[name], ClassLabel):
        if len(values) and (values.min() < 0 or values.max() >= features[name].num_classes):
            raise ValueError(f"column {name!r} of {source} has rows without a class (-1): drop them, then train")
        return values.astype(np.int64), list(features[name].names), ""
    kind = getattr(features[name], "dtype", "")
    if not (kind.startswith("int") or kind.startswith("uint") or kind in ("string", "large_string")):
        raise ValueError(
            f"column {name!r} of {source} holds {features[name]}, not class labels: give --label-column a "
            f"ClassLabel, integer or string column (columns: {columns})"
        )
    classes, labels = np.unique(values, return_inverse=True)
    return labels.astype(np.int64), [str(c) for c in classes], ""
