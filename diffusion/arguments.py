"""Checks of the pipeline API's arguments that several calls share: seeds, devices, generators, and the
limits of one call (image size, image count, memory), each checked before any work, with a message that
names the argument and what to do (docs/reliability.md, "Hostile arguments")."""

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any, get_type_hints

import torch

from .config import is_positive_int, type_error, type_problem
from .models import UNetConfig
from .models.unet_config import MAX_SIDE

# Sampling or editing sides may be at most this many times the model's trained ones (and at most `MAX_SIDE`):
# attention's cost grows with the square of the pixel count, 4096x per attention layer at 8x the sides.
MAX_SIZE_FACTOR = 8

# The UNet precisions by their short names: the commands' --dtype and the web app's dtype choice.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_size(size: object, unet: UNetConfig, what: str = "size") -> tuple[int, int]:
    """``size`` as ``(height, width)`` if the model can sample it: positive ints, multiples of its downsampling
    factor, at most `MAX_SIZE_FACTOR` times the sides it was trained at.

    Raises:
        ValueError: for anything else, naming ``what`` (``"size"``, ``"the image"``, ...).
    """
    pair = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
    if not pair or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        raise ValueError(f"{what} must be (height, width) in pixels, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if min(height, width) < 1:
        raise ValueError(f"{what} must have positive sides, got {height}x{width}")
    factor, trained = unet.downsample_factor, "x".join(map(str, unet.sample_size))
    if height % factor or width % factor:
        raise ValueError(
            f"{what} is {height}x{width}; its sides must be multiples of {factor}, the model's downsampling "
            f"factor: resize or crop it (the model was trained at {trained})"
        )
    most = [min(MAX_SIZE_FACTOR * side, MAX_SIDE) for side in unet.sample_size]
    if height > most[0] or width > most[1]:
        raise ValueError(
            f"{what} is {height}x{width}, larger than this model can sample: at most {most[0]}x{most[1]} "
            f"({MAX_SIZE_FACTOR}x the {trained} it was trained at, {MAX_SIDE} at most); resize it"
        )
    return height, width


# Limits of one sampling call, checked before any work (docs/reliability.md); a call returns all its images
# at once.
MAX_NUM_IMAGES = 2**20  # images (or interpolation frames) per call


def physical_memory() -> int:
    """This machine's memory in bytes (64 GiB where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 64 * 2**30


# num_images x c x h x w of a call's result, in float32: a result over the machine's memory cannot be held.
MAX_OUTPUT_ELEMENTS = physical_memory() // 4


def check_num_images(num_images: object, shape: Sequence[int] | None = None, name: str = "num_images") -> int:
    """``num_images`` if it is an int in [1, `MAX_NUM_IMAGES`] whose images of ``shape`` (c, h, w) stay within
    `MAX_OUTPUT_ELEMENTS`.

    Raises:
        ValueError: otherwise, naming ``name``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_images!r}")
    if num_images > MAX_NUM_IMAGES:
        raise ValueError(f"{name} must be at most {MAX_NUM_IMAGES} per call, got {num_images}; make several calls")
    if shape is not None and num_images * math.prod(shape) > MAX_OUTPUT_ELEMENTS:
        size = num_images * math.prod(shape) * 4 / 2**30
        raise ValueError(
            f"{name}={num_images} images of {'x'.join(map(str, shape))} are {size:.3g} GiB of float32, more than "
            f"this machine's {MAX_OUTPUT_ELEMENTS * 4 / 2**30:.3g} GiB of memory; make several calls"
        )
    return num_images


def check_batch_size(
    unet: UNetConfig, batch_size: int | None, num_images: int, guided: bool, size: Sequence[int]
) -> int:
    """The images per forward pass (``batch_size``, None: all ``num_images``), checked with
    `UNetConfig.check_forward_size` at ``size`` (height, width); guidance doubles the rows of a pass, except for
    a UNet that takes w as an input (``guidance_embedding``)."""
    batch = min(batch_size or num_images, num_images)
    if batch_size is None:
        advice = f"give a batch_size (None runs all {num_images} images at once)"
    else:
        advice = f"give a batch_size smaller than {batch_size}"
    two_branches = guided and not unet.guidance_embedding
    unet.check_forward_size(batch * (2 if two_branches else 1), *size, advice)
    return batch


MAX_RESAMPLE = 1000  # RePaint: repeats of each run of steps


def check_device(device: object) -> torch.device | None:
    """``device`` as a `torch.device` (None stays None)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device} is not available: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def check_placement(device: object, dtype: object, memory_format: object) -> torch.device | None:
    """`check_device` (returned), and ``dtype`` / ``memory_format`` if given: a floating-point dtype, a
    `torch.memory_format`."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype such as torch.bfloat16, got {dtype!r}")
    if memory_format is not None and not isinstance(memory_format, torch.memory_format):
        raise ValueError(f"memory_format must be a torch.memory_format, got {memory_format!r}")
    return check_device(device)


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` if it is a `torch.Generator` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


# Scheduler fields that the model was trained with: `DiffusionPipeline.make_scheduler` keeps them.
MODEL_SCHEDULE_FIELDS = frozenset(
    {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "rescale_betas_zero_snr", "prediction_type"}
)


def check_scheduler_overrides(name: str, config: Any, overrides: dict[str, Any]) -> None:
    """Refuse overrides of a scheduler ``name`` (with ``config``) that it lacks, of the wrong type or range,
    or that belong to the model's noise schedule (`MODEL_SCHEDULE_FIELDS`)."""
    model_fields = sorted(set(overrides) & MODEL_SCHEDULE_FIELDS)
    if model_fields:
        verb = "is part" if len(model_fields) == 1 else "are parts"
        raise ValueError(
            f"{', '.join(model_fields)} {verb} of the model's noise schedule, which make_scheduler keeps; "
            "override sampler settings only (eta, use_karras_sigmas, timestep_spacing, ...)"
        )
    unknown = sorted(set(overrides) - set(config.to_dict()))
    if unknown:
        raise ValueError(f"the {name} scheduler has no setting {', '.join(unknown)}")
    hints = get_type_hints(type(config))
    for key, value in overrides.items():
        problem = type_problem(hints[key], value)
        if problem is not None:
            raise type_error(value)(f"the {name} scheduler's {key} must be {problem}, got {value!r}")
    steps = config.num_train_timesteps
    if not 0 <= overrides.get("steps_offset", 0) < steps:  # it shifts timesteps, which are below T
        raise ValueError(f"steps_offset must be in [0, {steps - 1}], got {overrides['steps_offset']}")


def check_eta(eta: object) -> None:
    """``eta`` must be None or a number in [0, 1]."""
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, numbers.Real) or eta < 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if eta is not None and not math.isfinite(eta):
        raise ValueError(f"eta must be finite, got {eta!r}")
    if eta is not None and eta > 1:
        raise ValueError(f"eta must be at most 1 (1 is DDPM's noise), got {eta!r}")


def check_batch_size_argument(batch_size: object) -> None:
    """``batch_size``: None or a positive int (the model's limits: `check_batch_size`)."""
    if batch_size is not None and not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_progress(progress: object) -> None:
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")


def check_call_options(output_type: object, batch_size: object, callback: object, progress: object) -> None:
    """The options of a sampling call that need no model: their types and ranges."""
    if output_type not in ("pil", "tensor", "numpy"):
        raise ValueError(f"unknown output_type {output_type!r}; expected one of 'pil', 'tensor', 'numpy'")
    check_batch_size_argument(batch_size)
    if callback is not None and not isinstance(callback, Callable):
        raise ValueError(f"callback must be callable, got {callback!r}")
    check_progress(progress)


def check_latents(latents: object, shape: tuple[int, ...]) -> None:
    """``latents``: None, or a finite tensor of ``shape``."""
    if latents is None:
        return
    if not isinstance(latents, torch.Tensor):
        raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents must be finite; they hold NaN or infinite values")


def check_repaint(jump_length: object, resample: object) -> None:
    """RePaint's ``jump_length`` and ``resample``: positive integers, ``resample`` at most `MAX_RESAMPLE`."""
    if not (is_positive_int(jump_length) and is_positive_int(resample)):
        raise ValueError(f"jump_length and resample must be positive integers, got {jump_length!r}, {resample!r}")
    if resample > MAX_RESAMPLE:
        raise ValueError(f"resample must be at most {MAX_RESAMPLE}, got {resample}")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: a `MemoryError`, `torch.OutOfMemoryError` (CUDA, MPS), or
    the `RuntimeError` of torch's CPU allocator."""
    return isinstance(error, MemoryError | torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )
