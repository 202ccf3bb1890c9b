"""What the web app's buttons do, without the page: generate, edit and interpolate through `DiffusionPipeline`,
within the app's `Limits`, writing the results through an `Outbox`.

The pipeline checks every argument and does all the sampling; these functions turn the page's values into
one pipeline call, count its model evaluations for the progress bar, and label the results. A bad value
raises the library's one-line `ValueError` (or `FileNotFoundError`), which the page shows as it is.
"""

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..data import DECODE_ERRORS, load_image
from ..editing import DEFAULT_JUMP_LENGTH, effective_strength
from ..guidance import RANDOM_CLASSES
from ..pipeline import DiffusionPipeline
from .models import NO_CLASS, ModelShelf
from .outbox import Outbox

Progress = Callable[[int, int], None]  # (model evaluations done, of how many)
INTERPOLATION_SAMPLER = "ddim"  # deterministic at eta 0, and the sampler that regenerates inverted images
INVERSION_EVALUATIONS = 2  # per step of `DiffusionPipeline.invert` at its default: one fixed-point iteration


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that the page cannot take the machine down (`diffusion-app` flags)."""

    max_images: int = 16  # images (or interpolation frames) per request
    max_steps: int = 250  # sampler steps per request
    max_size: int = 256  # pixels on the longer side of an uploaded image

    @property
    def max_evaluations(self) -> int:
        """Model evaluations per request: the work of ``max_images`` images of ``max_steps`` steps, however a
        request spends it (RePaint's resampling and inverting images cost evaluations too)."""
        return self.max_images * self.max_steps

    def check_evaluations(self, evaluations: int) -> None:
        if evaluations > self.max_evaluations:
            raise ValueError(
                f"this request needs {evaluations:,} model evaluations; this app does at most "
                f"{self.max_evaluations:,} per request (diffusion-app --max-images x --max-steps): ask for fewer "
                "images, steps or RePaint resamples"
            )

    def check(
        self, num_images: int | None = None, steps: int | None = None, image: Image.Image | None = None, what="images"
    ) -> None:
        if num_images is not None and num_images > self.max_images:
            raise ValueError(
                f"{num_images} {what} were asked for; this app makes at most {self.max_images} per request "
                "(diffusion-app --max-images): ask for fewer"
            )
        if steps is not None and steps > self.max_steps:
            raise ValueError(
                f"{steps} steps were asked for; this app runs at most {self.max_steps} per request "
                "(diffusion-app --max-steps): ask for fewer"
            )
        if image is not None and max(image.size) > self.max_size:
            raise ValueError(
                f"the image is {image.height}x{image.width}; this app takes images of at most {self.max_size} pixels "
                "a side (diffusion-app --max-size): resize it to the model's size"
            )


@dataclass(frozen=True)
class Sampling:
    """The settings every tab shares, as the page sends them."""

    model: str
    sampler: str
    steps: int | None  # None (an empty box): the model's default_steps
    class_choice: str  # a class name, "random" or "none"
    guidance_scale: float
    guidance_rescale: float
    seed: int
    num_images: int
    batch_size: int
    dtype: str = "fp32"

    @classmethod
    def from_page(cls, **values: Any) -> "Sampling":
        """The page's values with the whole numbers checked: a number box may send a float or nothing (for the
        steps: the model's default)."""
        for name in ("steps", "seed", "num_images", "batch_size"):
            if name != "steps" or values[name] is not None:
                values[name] = whole_number(values[name], name.replace("_", " "))
        for name in ("guidance_scale", "guidance_rescale"):
            if not isinstance(values[name], numbers.Real) or isinstance(values[name], bool):
                raise ValueError(f"{name.replace('_', ' ')} must be a number, got {values[name]!r}")
        return cls(**values)


@dataclass(frozen=True)
class Result:
    images: list[Image.Image]
    captions: list[str]  # one per image: its seed, class and settings
    paths: list[Path]  # the images as PNGs with their settings (for an interpolation: the strip and the GIF)
    download: list[Path]  # what the page offers to download
    summary: str  # NFE and wall time


def whole_number(value: object, name: str) -> int:
    """``value`` as an int, refused in one line unless it is a whole number."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name} must be a whole number, got {value!r}")


def upload(path: str, what: str) -> Image.Image:
    """An uploaded image file, decoded as training data and `sample.py`'s inputs are (EXIF rotation, first
    frame), as RGBA: the pipeline converts it to the model's mode."""
    try:
        return load_image(path, 4)
    except DECODE_ERRORS as error:
        raise ValueError(f"{what} is not a readable image ({type(error).__name__}: {error})") from None


def class_labels(pipe: DiffusionPipeline, choice: str, seed: int, num_images: int) -> tuple[str | None, list[str]]:
    """The pipeline's ``class_labels`` for a class choice, and each image's class name for its caption."""
    if choice == NO_CLASS:
        return None, [NO_CLASS] * num_images
    if choice == RANDOM_CLASSES:
        names = pipe.class_names or [str(i) for i in range(pipe.unet.config.num_classes or 0)]
        return choice, [names[i] for i in pipe.random_class_labels(num_images, seed).tolist()]
    return choice, [choice] * num_images


def _guidance(s: Sampling, labels: str | int | None) -> dict[str, float | None]:
    """Guidance arguments: w and its rescale apply to a class, and the unconditional model takes neither."""
    return {"guidance_scale": s.guidance_scale, "guidance_rescale": s.guidance_rescale} if labels is not None else {}


def _counter(progress: Progress | None, s: Sampling, nfe: int) -> Callable[[int, int, Any], None] | None:
    """The pipeline's ``callback``: one call per model evaluation of a batch, reported as (done, total), where
    total is ``nfe`` evaluations for each of the request's batches."""
    if progress is None:
        return None
    total = math.ceil(s.num_images / max(s.batch_size, 1)) * nfe
    done = [0]

    def callback(*_: Any) -> None:
        done[0] += 1
        progress(min(done[0], total), total)

    return callback


def _with_steps(pipe: DiffusionPipeline, s: Sampling, limits: Limits) -> Sampling:
    """``s`` with its steps resolved for ``pipe`` (None: the model's default; a distilled model refuses a step
    count it was not trained for) and within ``limits``."""
    s = replace(s, steps=pipe.check_steps(s.steps))
    limits.check(steps=s.steps)
    return s


def _summary(
    count: int, what: str, s: Sampling, nfe: int, pipe: DiffusionPipeline, guided: bool, seconds: float
) -> str:
    how = "in one pass (guidance-distilled)" if pipe.unet.config.guidance_embedding else "both branches in one batch"
    both = f"; guidance evaluates {how}" if guided and s.guidance_scale not in (0, 1) else ""
    return f"{count} {what} in {seconds:.1f} s: {nfe} NFE per image ({s.sampler}, {s.steps} steps{both})"


def _sample(
    shelf: ModelShelf,
    s: Sampling,
    limits: Limits,
    outbox: Outbox,
    progress: Progress | None,
    editing: dict[str, Any] | None = None,
) -> Result:
    """One pipeline call for ``s`` (and an edit: image, mask_image, strength, resample, jump_length)."""
    limits.check(num_images=s.num_images, steps=s.steps)
    pipe = shelf.load(s.model, s.dtype)
    s = _with_steps(pipe, s, limits)
    start = time.perf_counter()
    labels, names = class_labels(pipe, s.class_choice, s.seed, s.num_images)
    editing = editing or {}
    inpainting = editing.get("mask_image") is not None
    strength = effective_strength(editing["strength"], inpainting) if editing else None
    repaint = {"jump_length": editing.get("jump_length", DEFAULT_JUMP_LENGTH), "resample": editing.get("resample", 1)}
    nfe = pipe.num_model_evaluations(s.steps, s.sampler, strength=strength, inpainting=inpainting, **repaint)
    limits.check_evaluations(nfe * s.num_images)
    images = pipe(
        num_images=s.num_images,
        num_inference_steps=s.steps,
        scheduler=s.sampler,
        seed=s.seed,
        batch_size=s.batch_size,
        class_labels=labels,
        callback=_counter(progress, s, nfe),
        **_guidance(s, labels),
        **editing,
    )
    settings = {"model": s.model, "sampler": s.sampler, "steps": s.steps, "nfe": nfe, "dtype": s.dtype}
    settings |= _guidance(s, labels) | ({"strength": strength} if editing else {}) | (repaint if inpainting else {})
    metadata = [settings | {"seed": s.seed + i, "class": name} for i, name in enumerate(names)]
    paths, archive = outbox.images(images, metadata)
    guided = f", w {s.guidance_scale:g}" if labels is not None else ""
    captions = [f"seed {m['seed']} · {m['class']} · {s.sampler}, {s.steps} steps{guided}" for m in metadata]
    summary = _summary(len(images), "images", s, nfe, pipe, labels is not None, time.perf_counter() - start)
    return Result(images, captions, paths, [*paths, archive], summary)


def generate(
    shelf: ModelShelf, s: Sampling, limits: Limits, outbox: Outbox, progress: Progress | None = None
) -> Result:
    """The Generate tab: ``s.num_images`` images from seeds ``s.seed``, ``s.seed + 1``, ..."""
    return _sample(shelf, s, limits, outbox, progress)


def edit(
    shelf: ModelShelf,
    s: Sampling,
    limits: Limits,
    outbox: Outbox,
    image: Image.Image | None,
    mask: Image.Image | None,
    strength: float | None = None,
    resample: int = 1,
    jump_length: int = DEFAULT_JUMP_LENGTH,
    progress: Progress | None = None,
) -> Result:
    """The Edit tab: inpaint ``image`` where ``mask`` is white (RePaint with ``resample`` and ``jump_length``),
    or img2img at ``strength`` without a mask."""
    if image is None:
        raise ValueError("there is no image to edit: upload one, or send one from the Generate tab")
    limits.check(image=image)
    repaint = {"resample": whole_number(resample, "resample"), "jump_length": whole_number(jump_length, "jump length")}
    call = {"image": image, "mask_image": mask, "strength": strength} | (repaint if mask is not None else {})
    return _sample(shelf, s, limits, outbox, progress, call)


def painted_mask(background: Image.Image, layers: Sequence[Image.Image | None]) -> Image.Image:
    """The inpainting mask of an image editor's value: white wherever a layer has paint (alpha above 0)."""
    mask = Image.new("L", background.size, 0)
    for layer in layers:
        if layer is not None:
            alpha = layer.convert("RGBA").getchannel("A").resize(background.size, Image.Resampling.NEAREST)
            mask.paste(255, mask=alpha.point(lambda a: 255 if a > 0 else 0))
    return mask


def interpolate(
    shelf: ModelShelf,
    s: Sampling,
    limits: Limits,
    outbox: Outbox,
    ends: tuple[int | Image.Image, int | Image.Image],
    progress: Progress | None = None,
) -> Result:
    """The Interpolate tab: ``s.num_images`` frames between two seeds or images (DDIM-inverted), sampled with
    DDIM at eta 0 (``s.sampler`` is ignored)."""
    s = replace(s, sampler=INTERPOLATION_SAMPLER)
    limits.check(num_images=s.num_images, steps=s.steps, what="frames")
    for end in ends:
        if isinstance(end, Image.Image):
            limits.check(image=end)
    pipe = shelf.load(s.model, s.dtype)
    s = _with_steps(pipe, s, limits)
    start = time.perf_counter()
    labels = None if s.class_choice == NO_CLASS else s.class_choice
    if labels == RANDOM_CLASSES and not isinstance(ends[0], int):
        raise ValueError("class random draws the start seed's class, and the start is an image: choose a class")
    if labels == RANDOM_CLASSES and not isinstance(ends[1], int):
        labels = int(pipe.random_class_labels(1, [ends[0]])[0])  # the class the frames are drawn with
    nfe = pipe.num_model_evaluations(s.steps, s.sampler)
    images = [end for end in ends if not isinstance(end, int)]
    limits.check_evaluations(nfe * s.num_images + INVERSION_EVALUATIONS * s.steps * len(images))
    guidance = {"guidance_scale": s.guidance_scale} if labels is not None else {}
    latents = [
        end if isinstance(end, int) else pipe.invert(end, s.steps, class_labels=labels, **guidance)[0] for end in ends
    ]
    frames = pipe.interpolate(
        latents[0],
        latents[1],
        num_frames=s.num_images,
        num_inference_steps=s.steps,
        scheduler=s.sampler,
        class_labels=labels,
        batch_size=s.batch_size,
        callback=_counter(progress, s, nfe),
        **_guidance(s, labels),
    )
    what = [str(end) if isinstance(end, int) else "image" for end in ends]
    strip, gif = outbox.interpolation(frames, {"from": what[0], "to": what[1], "frames": len(frames), "steps": s.steps})
    captions = [f"frame {i} of {len(frames)}: {what[0]} → {what[1]}" for i in range(len(frames))]
    summary = _summary(len(frames), "frames", s, nfe, pipe, labels is not None, time.perf_counter() - start)
    if images:
        summary += f", after inverting {len(images)} image(s) in {INVERSION_EVALUATIONS * s.steps} NFE each"
    return Result(frames, captions, [strip, gif], [strip, gif], summary)
