"""What training does to every image: fit it to size, crop and flip it as its seed says, composite its
transparency on a background, scale it to [-1, 1].

Every source (a folder, a Hugging Face dataset, a prepared dataset) goes through these, so that the same
image gives the same training tensor whichever source holds it. The randomness of an item is a pure
function of the augmentation seed the data order hands in with its index (`augmentation`, and
`background_colour` for ``--background random``), so a data order and its augmentations replay exactly
after a resume, with or without workers.
"""

import numpy as np
import torch
from PIL import Image

from ..image import BLACK, WHITE, Background

# The named backgrounds (`Background`: these, or random, a colour per item), as RGB.
BACKGROUNDS = {"white": WHITE, "black": BLACK}


def augmentation(seed: int) -> tuple[tuple[float, float], bool]:
    """(the crop position as fractions of the slack along (y, x); whether to flip) of an item's ``seed``."""
    fy, fx, flip = torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist()
    return (fy, fx), flip < 0.5


def background_colour(background: Background, seed: int) -> tuple[int, int, int]:
    """The RGB colour ``background`` means for the item of augmentation ``seed``: white or black, or for
    ``random`` each channel uniform in [0, 255], drawn from the seed's generator after `augmentation`'s draws."""
    if background != "random":
        return BACKGROUNDS[background]
    generator = torch.Generator().manual_seed(seed)
    torch.rand(3, generator=generator)  # the crop and flip of `augmentation`: the colour comes after them
    red, green, blue = torch.randint(0, 256, (3,), generator=generator).tolist()
    return red, green, blue


def check_conversion(channels: int, background: str, backgrounds: tuple[str, ...] = (*BACKGROUNDS, "random")) -> None:
    """Raise a ValueError for channels other than 1, 3 or 4, or a background not in ``backgrounds`` (by
    default white, black or random)."""
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels!r}")
    if background not in backgrounds:
        raise ValueError(f"background must be {', '.join(backgrounds[:-1])} or {backgrounds[-1]}, got {background!r}")


def background_with_rgba(background: str, command: str) -> str:
    """Why ``--background`` given with ``--channels 4`` is refused; ``command`` is the verb of the way out
    (train, prepare)."""
    return (
        f"--background {background} has no effect with --channels 4, which keeps transparency as the alpha "
        f"channel: leave --background out, or {command} at --channels 1 or 3"
    )


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
    top, left = crop_corner((new_h, new_w), size, crop_at)
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``L`` / ``RGB`` / ``RGBA`` image -> float32 ``(c, h, w)`` in [-1, 1]."""
    return to_unit(torch.from_numpy(to_pixels(image).copy()).permute(2, 0, 1))


def crop(pixels: np.ndarray, size: tuple[int, int], crop_at: tuple[float, float] | None) -> np.ndarray:
    """The ``size`` (height, width) window of ``(h, w, c)`` pixels at least that large, at ``crop_at``
    (fractions of the slack along (y, x); None: the centre), as `fit` places its crop."""
    top, left = crop_corner(pixels.shape[:2], size, crop_at)
    return pixels[top : top + size[0], left : left + size[1]]


def crop_corner(shape: tuple[int, int], size: tuple[int, int], crop_at: tuple[float, float] | None) -> tuple[int, int]:
    """The (top, left) of a ``size`` window in a ``shape`` (height, width) at least that large."""
    fy, fx = crop_at if crop_at is not None else (0.5, 0.5)
    return min(int(fy * (shape[0] - size[0] + 1)), shape[0] - size[0]), min(
        int(fx * (shape[1] - size[1] + 1)), shape[1] - size[1]
    )


def to_pixels(image: Image.Image) -> np.ndarray:
    """``L`` / ``RGB`` / ``RGBA`` image -> ``(h, w, c)`` uint8."""
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], on their device: ``x / 127.5 - 1``."""
    return pixels.float() / 127.5 - 1.0
