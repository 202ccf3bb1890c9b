"""The files of ``diffusion-sample``: its input images, the PNGs, grids and GIFs it writes, and the shipped
models it lists (`list_models`).

A model's images are written as they come: ``L``, ``RGB``, or for a 4-channel model ``RGBA`` PNGs with
their transparency. Grids and the interpolation GIF show transparency on a grey checkerboard
(`diffusion.image.make_grid`, `diffusion.image.save_gif`).
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..data import DECODE_ERRORS, load_image
from ..image import WHITE, make_grid, save_png
from ..io.files import check_writable, read_json
from ..io.model_folder import SHIPPED_MODELS
from ..io.sampling_record import SamplingRecord
from ..pipeline import DiffusionPipeline
from .common import named_as_flags


def read_image(path: str, channels: int, flag: str, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """An input image for ``flag``, decoded as training data is (EXIF rotation, first frame), in the mode of
    ``channels``: 1 and 3 composite transparency on the RGB colour ``background`` (the model's,
    `diffusion.image.input_background`), RGBA keeps its alpha (an image without one is opaque)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path} not found")
    try:
        return load_image(path, channels, background)
    except DECODE_ERRORS as e:
        raise ValueError(f"{flag} {path} is not a readable image ({type(e).__name__}: {e})") from None


def output_folder(args: argparse.Namespace) -> Path:
    """--out, and the folder of --grid, checked writable before the model loads."""
    out = Path(args.out)
    check_writable(out)
    if args.grid:
        if Path(args.grid).is_dir():
            raise ValueError(f"--grid {args.grid} is a folder; give a file name such as {Path(args.grid) / 'grid.png'}")
        check_writable(Path(args.grid).parent)
    return out


def write_batches(
    pipe: DiffusionPipeline,
    call: dict[str, Any],
    seeds: Sequence[int],
    labels: list[str] | None,
    out: Path,
    meta: dict[str, Any],
    flags: dict[str, str],
) -> list[Image.Image]:
    """Sample ``seeds`` one batch (``call["batch_size"]``) per pipeline call, each image written as
    OUT/<seed>.png (with ``meta``, its seed and class) as soon as its batch is done, so an interrupt keeps
    them; the pipeline's messages name the command's ``flags``. Every image has its own seed, so batching
    does not change it."""
    images: list[Image.Image] = []
    bar: list[tqdm] = []  # made at the first model evaluation, once the pipeline has accepted the arguments

    def advance(count: int) -> None:
        if not bar:
            bar.append(tqdm(total=len(seeds) * meta["nfe"], unit="step", desc="sampling"))
        bar[0].update(count)

    try:
        for first in range(0, len(seeds), call["batch_size"]):
            part = slice(first, first + call["batch_size"])
            n = len(seeds[part])
            with named_as_flags(flags):
                batch = pipe(
                    num_images=n,
                    seed=seeds[part],
                    class_labels=labels[part] if labels else None,
                    callback=lambda *_, n=n: advance(n),
                    **call,
                )
            for i, image in enumerate(batch, start=first):
                extra = {"seed": seeds[i]} | ({"class": labels[i]} if labels else {})
                save_png(image, out / f"{seeds[i]}.png", meta | extra)
                images.append(image)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: {len(images)} of {len(seeds)} images written to {out}/") from None
    finally:
        for b in bar:
            b.close()
    return images


def write_grid(images: Sequence[Image.Image], path: str | Path, columns: int, meta: dict[str, Any]) -> None:
    """--grid: ``images`` in rows of ``columns`` (0: as square as possible), transparency on a checkerboard."""
    save_png(make_grid(images, nrow=columns or None), path, meta)


def list_models() -> str:
    """One line per shipped model: its name, classes, image size and channels, default sampler, folder."""
    lines = []
    for i, (name, folder) in enumerate(SHIPPED_MODELS.items()):
        if not folder.is_dir():
            lines.append(f"{name}: not in this installation of pixel-diffusion (not at {folder})")
            continue
        index, unet = read_json(folder / "model_index.json"), read_json(folder / "unet" / "config.json")
        classes = index.get("class_names") or []
        height, width = unet["sample_size"]
        what = f"{len(classes)} classes ({', '.join(classes)})" if classes else "unconditional"
        default = ", the default" if i == 0 else ""
        sampler = f"sampler {index['default_scheduler']}"
        if "sampling" in index:  # a distilled model: the step counts it samples with
            record = SamplingRecord.from_dict(index["sampling"], folder / "model_index.json")
            steps = "any number of" if record.any_steps else ", ".join(map(str, record.steps))
            sampler += f" at {steps} steps (distilled; default {record.default_steps})"
        lines.append(f"{name}: {what}; {unet['in_channels']}x{height}x{width}; {sampler}; {folder}{default}")
    return "\n".join(lines)
