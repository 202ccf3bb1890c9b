"""The files the web app hands out: each request's PNGs (with their settings as text chunks), a zip of them,
and interpolation strips and GIFs, in a folder of its own under one temporary root."""

import itertools
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..image import save_interpolation, save_png


class Outbox:
    """Request folders under ``root`` (default: a new temporary folder, removed with the outbox); only the
    newest ``keep`` are kept, so a long-running app does not fill the disk. Gradio serves copies of the files
    from its own cache, so removing a folder does not break a page that shows its images."""

    def __init__(self, root: Path | None = None, keep: int = 32) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="diffusion-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if root is None:  # a temporary folder of its own: removed when the outbox goes, or at exit
            weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)
        self.keep = keep
        self._numbers = itertools.count()

    def folder(self) -> Path:
        """A new, empty folder for one request's files."""
        folder = self.root / f"{next(self._numbers):06d}"
        folder.mkdir()
        for old in sorted(p for p in self.root.iterdir() if p.is_dir())[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def images(self, images: Sequence[Image.Image], metadata: Sequence[dict[str, Any]]) -> tuple[list[Path], Path]:
        """Each image as ``<seed>.png`` with its metadata, and ``images.zip`` of them all."""
        folder = self.folder()
        paths = []
        for image, meta in zip(images, metadata, strict=True):
            path = folder / f"{meta['seed']}.png"
            save_png(image, path, meta)
            paths.append(path)
        archive = folder / "images.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in paths:
                zipped.write(path, path.name)
        return paths, archive

    def interpolation(self, frames: Sequence[Image.Image], metadata: dict[str, Any]) -> tuple[Path, Path]:
        """``interpolation.png`` (the frames in one row, with ``metadata``) and ``interpolation.gif``."""
        folder = self.folder()
        save_interpolation(frames, folder, metadata)
        return folder / "interpolation.png", folder / "interpolation.gif"
