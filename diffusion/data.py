"""Training images from a folder tree: find, validate, decode, fit to size, and scale to [-1, 1].

Any tree of png, jpg/jpeg, webp, bmp, tiff and gif files (the first frame) is searched recursively
and ordered by relative path, so the same folder always gives the same order. Each file is decoded
once when the dataset is built; files that do not decode (truncated, zero bytes, not an image, a
decompression bomb, unreadable, a symbolic-link loop) are skipped and reported in one warning: their
count, then each file on its own line with the reason. Class labels come from the first-level subfolder
names.

Augmentation randomness is a pure function of a per-item seed that the sampler hands in with the
index, so a data order and its augmentations replay exactly after a resume, with or without workers.
"""

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .image import to_mode

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


# Folders that other tools leave among people's images: macOS zip archives, Synology thumbnails, Windows'
# recycle bin and volume data. Hidden files and folders (".DS_Store", "._photo.png" AppleDouble forks,
# ".ipynb_checkpoints", ".git") are left out too, as data tools do.
TOOL_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "__pycache__"})


def is_left_by_tools(name: str) -> bool:
    """Whether a file or folder name is one that other tools leave behind, not part of the data."""
    return name.startswith(".") or name in TOOL_FOLDERS


def find_image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root``, sorted by relative path, less what other tools leave (`walk_images`)."""
    return walk_images(root)[0]


def walk_images(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(the image files under ``root``, sorted by relative path; the entries passed over as left by other
    tools, each a file or a whole folder), with one info line naming what was passed over.

    Symbolic links to directories are not followed, so a link loop cannot hang the search.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found (give --data a folder of images)")
    found, passed_over = [], []
    for directory, subdirs, names in os.walk(root, onerror=lambda e: logger.warning("cannot list %s", e)):
        passed_over += [Path(directory) / n for n in sorted(subdirs) + sorted(names) if is_left_by_tools(n)]
        subdirs[:] = sorted(d for d in subdirs if not is_left_by_tools(d))  # os.walk descends into these only
        found += [
            Path(directory) / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not is_left_by_tools(n)
        ]
    if passed_over:
        shown = [printable(p.relative_to(root).as_posix()) for p in passed_over[:5]]
        more = f" and {len(passed_over) - 5} more" if len(passed_over) > 5 else ""
        logger.info(
            "passed over %d hidden or tool-made entries under %s: %s%s",
            len(passed_over),
            printable(str(root)),
            ", ".join(shown),
            more,
        )
    key = lambda p: p.relative_to(root).as_posix().encode("utf-8", "surrogateescape")  # noqa: E731
    return sorted(found, key=key), passed_over


# What `load_image` raises for a file that is not a usable image (truncated, zero bytes, not an image,
# a decompression bomb, unreadable): such files are skipped, never fatal.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def load_image(path: str | Path, channels: int) -> Image.Image:
    """Decode ``path`` fully: first frame, EXIF orientation applied, converted to ``channels``.

    Raises:
        OSError / ValueError / Image.DecompressionBombError: the file is not a usable image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # too big: skip, never blow up
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_mode(image, channels)


def fit(image: Image.Image, size: tuple[int, int], crop_at: tuple[float, float] | None) -> Image.Image:
    """Resize so the image covers ``size`` (height, width), then crop to it.

    Args:
        image: any size.
        size: (height, width) wanted.
        crop_at: None for a center crop, else the crop position as fractions in [0, 1) of the slack
            along (y, x).
    """
    height, width = size
    scale = max(height / image.height, width / image.width)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    fy, fx = crop_at if crop_at is not None else (0.5, 0.5)
    top = min(int(fy * (new_h - height + 1)), new_h - height)
    left = min(int(fx * (new_w - width + 1)), new_w - width)
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``L`` / ``RGB`` image -> float32 ``(c, h, w)`` in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array  # (h, w, c)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name as ``\\xNN`` escapes, so any log handler can write it.

    ``os.walk`` gives such a byte as a lone surrogate (PEP 383), which a UTF-8 log file cannot encode.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def warn_skipped(skipped: list[tuple[Path, str]], what: str, root: str | Path) -> None:
    """One warning: how many files were skipped, then each one and why on a line of its own (however
    many: the user has to find and fix each of them)."""
    lines = "".join(f"\n  {printable(f'{p} ({why})')}" for p, why in skipped)
    logger.warning("skipped %d unreadable %s under %s:%s", len(skipped), what, printable(str(root)), lines)


@dataclass(frozen=True)
class ScanReport:
    """What building the dataset found."""

    files: list[Path]  # usable images, in order
    labels: list[int] | None  # first-level subfolder index per file, None when some files are at the top
    class_names: list[str]  # sorted first-level subfolder names holding images
    skipped: list[tuple[Path, str]]  # unusable files and why
    upscaled: int  # usable images smaller than the target size
    passed_over: list[Path] = field(default_factory=list)  # entries left by other tools (.DS_Store, __MACOSX)


def scan(root: str | Path, size: tuple[int, int], channels: int) -> ScanReport:
    """Find and decode every image under ``root``; warn once about skipped and upscaled files.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: no usable image at all.
    """
    root = Path(root)
    found, passed_over = walk_images(root)
    files, skipped, upscaled = [], [], 0
    for path in found:
        try:
            image = load_image(path, channels)
        except DECODE_ERRORS as e:
            skipped.append((path, f"{type(e).__name__}: {e}"))
            continue
        files.append(path)
        upscaled += image.height < size[0] or image.width < size[1]
    if skipped:
        warn_skipped(skipped, "file(s)", root)
    if upscaled:
        logger.warning("%d image(s) are smaller than %dx%d and will be upscaled", upscaled, *size)
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no readable images found under {root} (searched recursively for {extensions})")
    tops = [p.relative_to(root).parts for p in files]
    class_names = sorted({parts[0] for parts in tops if len(parts) > 1})
    labels = None
    if all(len(parts) > 1 for parts in tops):
        index = {name: i for i, name in enumerate(class_names)}
        labels = [index[parts[0]] for parts in tops]
    return ScanReport(files, labels, class_names, skipped, upscaled, passed_over)


class ImageFolder(Dataset):
    """A scanned image folder; items are requested as ``(index, augmentation_seed)``.

    ``dataset[(i, seed)]`` returns ``(image, label)``: a float32 ``(channels, h, w)`` tensor in
    [-1, 1] and an int64 label (-1 for an unlabelled folder). The seed drives the random crop and
    flip, so the same key always gives the same tensor.
    """

    def __init__(
        self,
        root: str | Path,
        size: tuple[int, int],
        channels: int,
        *,
        random_crop: bool = False,
        hflip: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.size, self.channels = size, channels
        self.random_crop, self.hflip = random_crop, hflip
        self.report = scan(root, size, channels)

    @property
    def class_names(self) -> list[str]:
        return self.report.class_names

    def __len__(self) -> int:
        return len(self.report.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        fy, fx, flip = torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist()
        image = fit(
            load_image(self.report.files[index], self.channels),
            self.size,
            (fy, fx) if self.random_crop else None,
        )
        if self.hflip and flip < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        label = self.report.labels[index] if self.report.labels is not None else -1
        return to_tensor(image), torch.tensor(label, dtype=torch.long)
