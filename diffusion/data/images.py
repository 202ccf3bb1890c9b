"""`TrainingImages`: what every source of training images gives the trainer, and how a batch is made.

A source says how many items it has, their labels and class names, and how to read item ``i`` fitted to
the training size on a given background (`TrainingImages.read`). This module does the rest the same way for
all of them: the seed-driven crop, flip and background colour (`augment.augmentation`,
`augment.background_colour`), and the replacement of an item that does not decode by the next one that
does, the same on every run, resume and process, counted and named in the `Batch`.
"""

import functools
import logging
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..image import WHITE
from .augment import Background, augmentation, background_colour, to_unit
from .files import DECODE_ERRORS, printable

logger = logging.getLogger(__package__)


class Batch(NamedTuple):
    """A micro-batch as the trainer receives it."""

    images: torch.Tensor  # (b, c, h, w) uint8; `augment.to_unit` scales them on the training device
    labels: torch.Tensor  # (b,) int64; -1 for unlabelled sources
    skipped: tuple[tuple[str, str], ...]  # (name, reason) of each item that did not decode, replaced


class TrainingImages(Dataset):
    """Base of the sources; ``dataset[(i, seed)]`` is ``(image, label)``: a float32 ``(channels, h, w)``
    tensor in [-1, 1] and an int64 label (-1 when unlabelled), the seed driving the crop, flip and, with
    ``background`` random, the background colour.

    Subclasses set ``size``, ``channels``, ``random_crop``, ``hflip``, ``labels`` (an int64 array, or None),
    ``class_names`` and ``source``, and implement ``__len__``, `read` and `name`; ``background`` when not white.
    """

    size: tuple[int, int]  # (height, width) to train at
    channels: int  # 1, 3 or 4 (RGBA: the alpha channel kept, 255 for an opaque image)
    background: Background = "white"  # what transparency is composited on at 1 and 3 channels; random: per item
    random_crop: bool
    hflip: bool
    labels: np.ndarray | None  # (n,) int64 class index of each item; None when the source has no classes
    class_names: list[str]
    source: str  # what the user gave, for messages
    unlabelled_reason: str = ""  # why ``labels`` is None, and the fix: the --class-cond error
    known_skipped: int = 0  # items the source left out before training (a prepared dataset's skipped files)

    @functools.cached_property
    def _undecodable(self) -> set[int]:
        """The items this process found not to decode: passed over without decoding them again."""
        return set()

    def read(
        self, index: int, crop_at: tuple[float, float] | None, background: tuple[int, int, int] = WHITE
    ) -> np.ndarray:
        """Item ``index`` fitted to ``size`` with its crop at ``crop_at`` (None: the centre; only with
        ``random_crop``), its transparency composited on the RGB colour ``background`` at 1 and 3 channels,
        as ``(h, w, c)`` uint8.

        Raises:
            One of `files.DECODE_ERRORS` for an item that does not decode.
        """
        raise NotImplementedError

    def name(self, index: int) -> str:
        """Where item ``index`` comes from, for messages: a relative path, or ``row N``."""
        raise NotImplementedError

    def pixels(self, index: int) -> np.ndarray:
        """Item ``index`` centre-fitted to ``size``, unflipped, on the one named ``background``: ``(h, w, c)``
        uint8 (what preparing stores)."""
        assert self.background != "random", "a prepared dataset stores one background"
        return self.read(index, None, background_colour(self.background, 0))

    def batch(self, keys: list[tuple[int, int]]) -> Batch:
        """The items of ``(index, augmentation_seed)`` keys, cropped, flipped and on the background colour
        their seeds say."""
        images, labels, skipped = [], [], []
        for index, seed in keys:
            crop_at, flip = augmentation(seed)
            colour = background_colour(self.background, seed)  # an item replaced keeps its key's colour too
            used, pixels = self._decodable(index, crop_at if self.random_crop else None, colour, skipped)
            images.append(pixels[:, ::-1] if self.hflip and flip else pixels)
            labels.append(self.labels[used] if self.labels is not None else -1)
        stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (b, c, h, w)
        return Batch(stacked, torch.tensor(labels, dtype=torch.long), tuple(skipped))

    def _decodable(
        self,
        index: int,
        crop_at: tuple[float, float] | None,
        background: tuple[int, int, int],
        skipped: list[tuple[str, str]],
    ) -> tuple[int, np.ndarray]:
        """(the index used, its pixels): item ``index``, or the first one after it that decodes, each
        one that does not being added to ``skipped``."""
        for offset in range(len(self)):
            used = (index + offset) % len(self)
            if used in self._undecodable:  # reported when first met in this process
                continue
            try:
                return used, self.read(used, crop_at, background)
            except DECODE_ERRORS as e:
                self._undecodable.add(used)
                skipped.append((printable(self.name(used)), f"{type(e).__name__}: {e}"))
        raise ValueError(f"no item of {self.source} decodes: check the files, or run diffusion-prepare to list them")

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = self.batch([key])
        return to_unit(images[0]), labels[0]
