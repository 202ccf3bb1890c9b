"""Tensors <-> PIL images, grids, and PNG files with their provenance in the text metadata.

Images with transparency (RGBA, from 4-channel models) are shown on a grey checkerboard wherever a file
cannot keep partial alpha or where many images meet: grids and GIFs (`on_checkerboard`).
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .io.files import atomic_write


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (16-bit PNG, 32-bit int, float) to 8-bit ``L``, scaled, not clipped."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array / 257.0
    elif image.mode == "F" and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# What transparency is composited on at 1 and 3 channels: a named colour, or one drawn per item from its seed
# (`diffusion.data.augment.background_colour`); a model records the one it was trained on.
Background = Literal["white", "black", "random"]
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # the PIL mode of each channel count
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")  # the PIL modes with an alpha channel
CHECKER_SQUARE = 4  # side in pixels of the checkerboard squares transparency is shown on
CHECKER_GREYS = (204, 153)  # the light and the dark squares; each image's top-left square is light


def to_mode(image: Image.Image, channels: int, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any PIL mode to ``L`` (1 channel), ``RGB`` (3) or ``RGBA`` (4).

    For 1 and 3 channels transparency is composited on ``background`` (an RGB colour); 4 channels keep it
    (an image without an alpha channel becomes opaque), with RGB 0 wherever alpha is 0, as Pillow's
    premultiplied resize leaves it: what a file stores under full transparency never matters.

    Raises:
        ValueError: ``channels`` other than 1, 3 or 4.
    """
    if channels not in MODES:
        raise ValueError(f"images convert to 1 (L), 3 (RGB) or 4 (RGBA) channels, not {channels!r}")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if "transparency" in image.info:  # a palette entry or colour key marks transparent pixels
        image = image.convert("RGBA")
    if channels == 4:
        rgba = np.array(image.convert("RGBA"))  # (h, w, 4)
        rgba[rgba[:, :, 3] == 0] = 0
        return Image.fromarray(rgba)  # (h, w, 4) uint8: RGBA
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
    return image.convert(MODES[channels])


def input_background(background: Background | None) -> tuple[int, int, int]:
    """The RGB colour that the transparency of a 1- or 3-channel model's input images (img2img, inversion,
    evaluation references) is composited on, for a model trained on ``background`` (white, black, random;
    None: white): its own colour, and white for random, which has no one colour: give such a model opaque
    images, or train it with ``--channels 4``."""
    return BLACK if background == "black" else WHITE


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(n, c, h, w)`` floats in [0, 1] -> ``(n, h, w, c)`` uint8, rounded."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(n, c, h, w)`` floats in [0, 1] -> ``L`` (c = 1), ``RGB`` (c = 3) or ``RGBA`` (c = 4) images."""
    if images.ndim != 4 or images.shape[1] not in MODES:
        raise ValueError(
            f"PIL images have 1 (L), 3 (RGB) or 4 (RGBA) channels, got a tensor of shape {tuple(images.shape)}; "
            "keep it as a tensor"
        )
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in to_uint8(images)]


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` can be (partly) transparent: an alpha channel, or a transparent palette entry."""
    return image.mode in ALPHA_MODES or "transparency" in image.info


def checkerboard(size: tuple[int, int]) -> Image.Image:
    """An ``RGB`` image of ``size`` (width, height) in `CHECKER_SQUARE` squares of the `CHECKER_GREYS`."""
    width, height = size
    rows, cols = np.indices((height, width)) // CHECKER_SQUARE
    grey = np.where((rows + cols) % 2 == 0, *CHECKER_GREYS).astype(np.uint8)  # (h, w)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))  # (h, w, 3)


def on_checkerboard(image: Image.Image) -> Image.Image:
    """``image`` composited on a `checkerboard` of its size, as ``RGB``: transparency made visible."""
    background = checkerboard(image.size).convert("RGBA")
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def make_grid(images: Sequence[Image.Image], nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile equally sized images into rows of ``nrow`` (default: as square as possible).

    The grid has the images' mode; if any has transparency (`has_alpha`), every image is put
    `on_checkerboard` and the grid is ``RGB``.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if any(has_alpha(image) for image in images):
        images = [on_checkerboard(image) for image in images]
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    ncol = math.ceil(len(images) / nrow)
    width, height = images[0].size
    grid = Image.new(images[0].mode, (nrow * (width + padding) + padding, ncol * (height + padding) + padding))
    for i, image in enumerate(images):
        row, col = divmod(i, nrow)
        grid.paste(image, (padding + col * (width + padding), padding + row * (height + padding)))
    return grid


def save_png(image: Image.Image, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a PNG, with ``metadata`` as text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 120) -> None:
    """Atomically write an animated GIF that loops forever, ``duration_ms`` per frame.

    GIF has no partial transparency: frames that have some (`has_alpha`) are put `on_checkerboard`.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    first, *rest = [on_checkerboard(frame) if has_alpha(frame) else frame for frame in frames]
    atomic_write(
        path, lambda tmp: first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    )


def save_interpolation(
    frames: Sequence[Image.Image], folder: str | Path, metadata: dict[str, Any] | None = None
) -> None:
    """``folder/interpolation.png`` (the frames in one row, with ``metadata``) and ``folder/interpolation.gif``,
    transparency on a checkerboard."""
    save_png(make_grid(frames, nrow=len(frames)), Path(folder) / "interpolation.png", metadata)
    save_gif(frames, Path(folder) / "interpolation.gif")
