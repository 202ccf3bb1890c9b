"""`open_images`: whatever ``--data`` names, as `TrainingImages`; the kind is told from the path itself.

- a prepared dataset: a folder with a ``manifest.json`` (`manifest`);
- a Hugging Face dataset: a ``save_to_disk`` folder (a ``DatasetDict`` gives its ``train`` split), Parquet
  or Arrow files (one file, or a folder holding only such files), or a Hub name ``owner/name`` when online;
- anything else is a folder of images (`folder.ImageFolder`).

Hugging Face sources need the optional ``datasets`` package (``pip install 'pixel-diffusion[datasets]'``);
a plain folder never imports it.
"""

import importlib
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from .augment import Background
from .files import IMAGE_EXTENSIONS, TABLE_SUFFIXES, is_left_by_tools, printable
from .folder import ImageFolder
from .images import TrainingImages
from .manifest import check_complete, check_files, prepared_manifest, prepared_settings, stale_transparent_rgb

logger = logging.getLogger(__package__)

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name


def open_images(
    data: str | Path,
    size: tuple[int, int],
    channels: int,
    *,
    random_crop: bool = False,
    hflip: bool = True,
    background: Background = "white",
    image_column: str | None = None,
    label_column: str | None = None,
) -> TrainingImages:
    """The training images ``data`` names, fitted to ``size`` (height, width) with ``channels``; at 1 and 3
    channels, transparency is composited on ``background`` (random: a colour per item, from its seed).

    Raises:
        FileNotFoundError: ``data`` is neither a folder, a file of a dataset nor a Hub name.
        ValueError: a source without images, an unknown column, an interrupted preparation, a prepared dataset
            whose stored pixels cannot give ``channels`` on ``background``, or a Hugging Face source without
            the ``datasets`` package.
    """
    path, options = Path(data), {"random_crop": random_crop, "hflip": hflip, "background": background}
    columns = {"image_column": image_column, "label_column": label_column}
    manifest = prepared_manifest(path)  # ours only: another tool's manifest.json beside images is no concern
    if manifest is not None:
        check_complete(path, manifest)
        check_files(path, manifest)  # sizes only: the checksums are diffusion-prepare's to verify
        dataset = require_datasets(data).load_from_disk(str(path))
        settings = prepared_settings(manifest)
        prepared = {
            "shape": tuple(manifest["shape"]),
            "composited_on": settings["background"],
            "prepared_from": printable(str(settings["source"])) if settings.get("source") else None,
            "stale_rgb": stale_transparent_rgb(manifest),
        }
        images = _arrow_images(dataset, data, size, channels, options | prepared, columns)
        images.known_skipped = int(manifest.get("counts", {}).get("skipped", 0))
        return images
    dataset = _huggingface_dataset(path, str(data))
    if dataset is not None:
        return _arrow_images(dataset, data, size, channels, options, columns)
    if image_column or label_column:
        flag = "--image-column" if image_column else "--label-column"
        raise ValueError(f"{flag} is for Hugging Face datasets; {printable(str(data))} is a folder of images")
    return ImageFolder(data, size, channels, **options)


def _arrow_images(
    dataset: Any, data: str | Path, size: tuple[int, int], channels: int, options: dict, columns: dict
) -> TrainingImages:
    from .arrow import ArrowImages

    return ArrowImages(dataset, printable(str(data)), size, channels, **options, **columns)


def _huggingface_dataset(path: Path, data: str) -> Any | None:
    """The `datasets.Dataset` at ``path`` (its train split), or None when ``path`` is a folder of images.

    Raises:
        FileNotFoundError: nothing is at ``path`` and it is not a Hub name.
    """
    if path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        return require_datasets(data).load_from_disk(str(path))
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return _train_split(require_datasets(data).load_from_disk(str(path)), data)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        kind = TABLE_SUFFIXES[path.suffix.lower()]
        return _load_local(data, kind, data_files={"train": [str(path)]}, split="train")
    if path.is_dir() and _holds_tables(path):  # split names (train-*.parquet, data/test/...) as datasets reads them
        return _train_split(_load_local(data, str(path)), data)
    if path.exists():
        return None
    if HUB_NAME.fullmatch(data) and not path.parent.exists():
        return _hub_dataset(data)
    raise FileNotFoundError(
        f"data folder {printable(data)} not found (give --data a folder of images, a prepared dataset, a Hugging "
        "Face dataset folder, Parquet/Arrow files, or a Hub name owner/name)"
    )


def _load_local(data: str, *args: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset(*args, **kwargs)`` of local files, its failures as one line."""
    datasets = require_datasets(data)
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as e:
        cause = e.__cause__ or e
        reason = (str(cause).splitlines() or [""])[0]
        raise ValueError(
            f"{printable(data)} cannot be read as a dataset ({type(cause).__name__}: {reason}): check its files"
        ) from None


def _holds_tables(folder: Path) -> bool:
    """Whether ``folder`` holds Parquet or Arrow files and no image file (a README and the like may sit beside
    them, as in a Hub download), less what other tools leave. It stops at the first image file."""
    tables = False
    for file in folder.rglob("*"):
        if any(is_left_by_tools(part) for part in file.relative_to(folder).parts) or not file.is_file():
            continue
        if file.suffix.lower() in IMAGE_EXTENSIONS:
            return False
        tables |= file.suffix.lower() in TABLE_SUFFIXES
    return tables


def _hub_dataset(name: str) -> Any:
    """The train split of the Hub dataset ``name`` (downloaded once into datasets' cache)."""
    datasets = require_datasets(name)
    try:
        return _train_split(datasets.load_dataset(name), name)
    except (ConnectionError, OSError) as e:  # datasets' DatasetNotFoundError is a FileNotFoundError
        reason = (str(e).splitlines() or [""])[0]
        raise FileNotFoundError(
            f"--data {name}: no such folder, and the Hugging Face Hub dataset of that name could not be read "
            f"({type(e).__name__}: {reason}); check the name and the network"
        ) from None


def _train_split(splits: Any, data: str) -> Any:
    if not hasattr(splits, "keys"):
        return splits
    if "train" in splits:
        return splits["train"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise ValueError(f"{data} has splits {', '.join(splits)} and none is named train: save the one to train on")


def require_datasets(data: str | Path) -> ModuleType:
    """The ``datasets`` package, for ``data``, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise ValueError(
            f"{printable(str(data))}: Hugging Face and prepared datasets need the datasets package: "
            "pip install 'pixel-diffusion[datasets]'"
        ) from None
