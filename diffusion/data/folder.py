"""`ImageFolder`: training images read from a folder tree, decoded only when a batch needs them.

Building one lists the file names (`files.walk_images`) and nothing more, so a run starts at once on a
folder of any size; labels come from the first-level subfolders. A file that does not decode is met during
training, where `images.TrainingImages.batch` replaces it. ``validate=True`` decodes every file up front
instead (`files.scan`), leaving the unusable ones out, as versions before lazy reading did.
"""

import logging
from pathlib import Path

import numpy as np

from ..image import WHITE
from .augment import Background, check_conversion, fit, to_pixels
from .files import IMAGE_EXTENSIONS, ScanReport, class_labels, load_image, printable, scan, walk_images
from .images import TrainingImages

logger = logging.getLogger(__package__)


class ImageFolder(TrainingImages):
    """A folder of images; ``report`` is what listing (or, with ``validate``, decoding) it found.

    ``channels`` 1 and 3 composite transparency on ``background`` (random: a colour per item, from its seed);
    4 keep it as the alpha channel.
    """

    def __init__(
        self,
        root: str | Path,
        size: tuple[int, int],
        channels: int,
        *,
        random_crop: bool = False,
        hflip: bool = True,
        validate: bool = False,
        background: Background = "white",
    ) -> None:
        check_conversion(channels, background)
        self.root, self.source = Path(root), str(root)
        self.size, self.channels, self.background = size, channels, background
        self.random_crop, self.hflip = random_crop, hflip
        self.validated = validate
        self.report = scan(root, size, channels) if validate else list_folder(root)
        labels = self.report.labels
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.class_names = self.report.class_names
        top = sum(len(p.relative_to(self.root).parts) == 1 for p in self.report.files)
        self.unlabelled_reason = (
            f"--class-cond needs every image in a class subfolder of {root} (DATA/<class>/...); "
            f"{top} image(s) are at its top level"
        )

    def __len__(self) -> int:
        return len(self.report.files)

    def read(
        self, index: int, crop_at: tuple[float, float] | None, background: tuple[int, int, int] = WHITE
    ) -> np.ndarray:
        return to_pixels(fit(load_image(self.report.files[index], self.channels, background), self.size, crop_at))

    def name(self, index: int) -> str:
        return self.report.files[index].relative_to(self.root).as_posix()


def list_folder(root: str | Path) -> ScanReport:
    """The image files under ``root`` by name, undecoded (``skipped`` and ``upscaled`` stay empty).

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: no image file at all.
    """
    root = Path(root)
    if root.is_dir():
        logger.info("listing %s ...", printable(str(root)))  # a network disk can take a while
    tables: list[Path] = []
    files, passed_over = walk_images(root, tables)
    if tables:  # a dataset's files beside images: which of the two is meant is not for us to guess
        table = printable(tables[0].relative_to(root).as_posix())
        raise ValueError(
            f"{printable(str(root))} holds both images and dataset files ({table}): give --data the folder of "
            "one of them"
        )
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no image files found under {root} (searched recursively for {extensions})")
    labels, class_names = class_labels(root, files)
    return ScanReport(files, labels, class_names, [], 0, passed_over)
