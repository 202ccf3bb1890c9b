"""Image files: find them in a folder tree, decode them, and the full validating scan.

Any tree of png, jpg/jpeg, webp, bmp, tiff and gif files (the first frame) is searched recursively
and ordered by relative path, so the same folder always gives the same order. `scan` decodes every file
once to check it (``diffusion-prepare``'s validation pass); files that do not decode (truncated, zero
bytes, not an image, a decompression bomb, unreadable, a symbolic-link loop) are reported in one warning:
their count, then each file on its own line with the reason. Class labels come from the first-level
subfolder names (`class_labels`).
"""

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from ..image import WHITE, to_mode

logger = logging.getLogger(__package__)  # "diffusion.data", for every module of the package

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}  # the files of a Hugging Face dataset, by builder


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


def walk_images(root: str | Path, tables: list[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """(the image files under ``root``, sorted by relative path; the entries passed over as left by other
    tools, each a file or a whole folder), with one info line naming what was passed over. Parquet and Arrow
    files met on the way are added to ``tables`` when it is given.

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
        if tables is not None:
            tables += [
                Path(directory) / n
                for n in names
                if Path(n).suffix.lower() in TABLE_SUFFIXES and not is_left_by_tools(n)
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


def load_image(path: str | Path | BinaryIO, channels: int, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode ``path`` (a file, or an open binary file) fully: first frame, EXIF orientation applied,
    converted to ``channels`` (1 and 3 with transparency composited on the RGB colour ``background``; 4 keep
    it, `image.to_mode`).

    Raises:
        OSError / ValueError / Image.DecompressionBombError: the file is not a usable image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # too big: skip, never blow up
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_mode(image, channels, background)


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
    labels, class_names = class_labels(root, files)
    return ScanReport(files, labels, class_names, skipped, upscaled, passed_over)


def class_labels(root: Path, files: list[Path]) -> tuple[list[int] | None, list[str]]:
    """(each file's first-level subfolder index, None when some files are at the top; the sorted
    first-level subfolder names holding files)."""
    tops = [p.relative_to(root).parts for p in files]
    class_names = sorted({parts[0] for parts in tops if len(parts) > 1})
    if not all(len(parts) > 1 for parts in tops):
        return None, class_names
    index = {name: i for i, name in enumerate(class_names)}
    return [index[parts[0]] for parts in tops], class_names
