"""Training images from any source, and what training does to them.

- `sources.open_images`: ``--data`` as `images.TrainingImages`, whatever it names: a folder of images
  (`folder.ImageFolder`), a prepared dataset (`manifest`, written by ``diffusion-prepare``), or a Hugging
  Face dataset (`arrow.ArrowImages`);
- `files`: finding, decoding and validating image files;
- `augment`: fitting to size, the seed-driven crop, flip and background colour, scaling to [-1, 1];
- `prepare`: ``diffusion-prepare``, which decodes a source once into a prepared dataset.
"""

from .augment import (
    BACKGROUNDS,
    Background,
    augmentation,
    background_colour,
    background_with_rgba,
    check_conversion,
    crop,
    fit,
    to_pixels,
    to_tensor,
    to_unit,
)
from .files import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    TOOL_FOLDERS,
    ScanReport,
    class_labels,
    find_image_files,
    is_left_by_tools,
    load_image,
    printable,
    scan,
    walk_images,
    warn_skipped,
)
from .folder import ImageFolder, list_folder
from .images import Batch, TrainingImages
from .manifest import MANIFEST, is_prepared, read_manifest
from .sources import open_images

__all__ = [
    "BACKGROUNDS",
    "DECODE_ERRORS",
    "IMAGE_EXTENSIONS",
    "MANIFEST",
    "TOOL_FOLDERS",
    "Background",
    "Batch",
    "ImageFolder",
    "ScanReport",
    "TrainingImages",
    "augmentation",
    "background_colour",
    "background_with_rgba",
    "check_conversion",
    "class_labels",
    "crop",
    "find_image_files",
    "fit",
    "is_left_by_tools",
    "is_prepared",
    "list_folder",
    "load_image",
    "open_images",
    "printable",
    "read_manifest",
    "scan",
    "to_pixels",
    "to_tensor",
    "to_unit",
    "walk_images",
    "warn_skipped",
]
