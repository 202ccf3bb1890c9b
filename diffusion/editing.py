"""The pieces of image editing that are not the sampling loop: inputs, RePaint's schedule, noise paths.

- img2img (SDEdit, Meng et al. 2022): noise an image to the level of step ``start`` of the sampler's
  grid, then denoise from there. ``strength`` s runs the last ⌊s·n⌋ of n steps; s = 1 is plain
  generation, s = 0 returns the image.
- Inpainting (RePaint, Lugmayr et al. 2022): after every step, the known pixels (mask 0) are replaced
  by the image noised to the sample's new level (eq. 8); with resampling, every ``jump_length`` steps
  the sample is noised back up that many steps and denoised again, ``resample`` times in all (sec. 4.2),
  which lets the generated region agree with the known one.

A sample here is whatever the sampler walks: x = α·x_0 + σ·ε, with (α, σ) from `Scheduler.noise_level`.
"""

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .arguments import check_size
from .image import MODES, WHITE, to_mode
from .models import UNetConfig
from .rng import Generators, randn_tensor
from .schedulers import Scheduler, registered_name

ImageInput = Image.Image | Sequence[Image.Image] | torch.Tensor
# img2img strength when none is given: redo the last 80% of the steps (diffusers' default too).
DEFAULT_STRENGTH = 0.8
# RePaint steps per run before jumping back (Lugmayr et al. 2022, sec. 4.2, j = 10); used with resampling.
DEFAULT_JUMP_LENGTH = 10


def effective_strength(strength: float | None, inpainting: bool) -> float:
    """The strength an editing call uses: as given, else `DEFAULT_STRENGTH` for img2img and 1 for inpainting."""
    if strength is not None:
        return strength
    return 1.0 if inpainting else DEFAULT_STRENGTH


def images_to_tensor(
    images: ImageInput, channels: int, what: str = "image", background: tuple[int, int, int] = WHITE
) -> torch.Tensor:
    """PIL image(s), or a float tensor ``(c, h, w)`` / ``(n, c, h, w)`` in [0, 1] -> ``(n, c, h, w)`` in [-1, 1].

    PIL images are converted to the model's channels (see `diffusion.image.to_mode`): for 1 and 3 channels
    transparency is composited on the RGB colour ``background`` (the pipeline passes its model's,
    `diffusion.image.input_background`); for 4 channels (RGBA) alpha is kept, and an image without it is
    opaque (alpha 255); a model of another channel count than 1, 3 or 4 takes tensors only.

    Raises:
        ValueError: for another type, wrong channels, values outside [0, 1] or unequal sizes.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{what} tensor must have shape (n, {channels}, h, w) or ({channels}, h, w), got {tuple(images.shape)}"
            )
        if x.numel() == 0:
            raise ValueError(f"{what} tensor is empty: shape {tuple(images.shape)}")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"{what} tensor values must be finite and in [0, 1]")
        return x * 2 - 1
    if not isinstance(images, Sequence) or not images or not all(isinstance(i, Image.Image) for i in images):
        raise ValueError(f"{what} must be a PIL image, a list of them, or a tensor, got {type(images).__name__}")
    if channels not in MODES:
        raise ValueError(
            f"a PIL {what} converts to 1 (L), 3 (RGB) or 4 (RGBA) channels, and the model has {channels}; "
            f"give a ({channels}, h, w) tensor instead"
        )
    sizes = {i.size for i in images}
    if len(sizes) > 1:
        raise ValueError(f"{what}s must all have one size, got {sorted(sizes)}")
    arrays = [np.asarray(to_mode(i, channels, background), dtype=np.float32) for i in images]
    x = torch.from_numpy(np.stack(arrays)).reshape(len(images), *arrays[0].shape[:2], channels)
    return x.permute(0, 3, 1, 2) / 127.5 - 1  # (n, c, h, w)


def mask_to_tensor(mask: Image.Image | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An inpainting mask -> ``(1 or n, 1, h, w)`` float32 of 0 (keep) and 1 (regenerate, white).

    PIL masks of any mode are read as grey; tensors are ``(h, w)``, ``(1, h, w)`` or ``(n, 1, h, w)`` in
    [0, 1]. Values above one half count as white.

    Raises:
        ValueError: for another type, or a mask whose size is not ``size`` (height, width) of the image.
    """
    if isinstance(mask, Image.Image):
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255)[None, None]
    elif isinstance(mask, torch.Tensor):
        m = mask.detach().float().cpu()
        m = m.reshape(1, 1, *m.shape) if m.ndim == 2 else (m[None] if m.ndim == 3 else m)
        if m.ndim != 4 or m.shape[1] != 1:
            raise ValueError(f"mask tensor must have shape (h, w), (1, h, w) or (n, 1, h, w), got {tuple(mask.shape)}")
    else:
        raise ValueError(f"mask must be a PIL image or a tensor, got {type(mask).__name__}")
    if tuple(m.shape[-2:]) != tuple(size):
        raise ValueError(
            f"the mask is {m.shape[-2]}x{m.shape[-1]} but the image is {size[0]}x{size[1]} (height x width); "
            "give a mask of the image's size"
        )
    return (m > 0.5).float()


def start_index(num_steps: int, strength: float) -> int:
    """The first grid entry img2img runs: it skips the first n - ⌊s·n⌋ of n steps (as diffusers does)."""
    return num_steps - min(int(num_steps * strength), num_steps)


def visit_order(start: int, end: int, jump_length: int, resample: int) -> list[int]:
    """Entries ``start`` to ``end`` (exclusive) in runs of ``jump_length``, each run ``resample`` times
    (Lugmayr et al. 2022, sec. 4.2); 1 is plain sequential sampling."""
    order: list[int] = []
    for first in range(start, end, jump_length):
        order += list(range(first, min(first + jump_length, end))) * resample
    return order


def edit_visit_order(
    num_entries: int, strength: float | None, inpainting: bool, jump_length: int, resample: int
) -> list[int]:
    """The grid entries a call steps, in order: all ``num_entries`` of them, the last ones of an img2img
    edit (``strength`` given), or RePaint's runs when ``inpainting``; one UNet evaluation each."""
    editing = strength is not None or inpainting
    start = start_index(num_entries, effective_strength(strength, inpainting)) if editing else 0
    return visit_order(start, num_entries, jump_length, resample if inpainting else 1)


def renoise(
    sample: torch.Tensor, level_from: tuple[float, float], level_to: tuple[float, float], noise: torch.Tensor
) -> torch.Tensor:
    """q(x_to ∣ x_from): diffuse a sample from a lower (α, σ) level to a higher one."""
    (alpha_from, sigma_from), (alpha_to, sigma_to) = level_from, level_to
    # With x = α·x_0 + σ·ε at both levels: x_to = (α_to/α_from)·x_from + √(σ_to² - (α_to/α_from)²·σ_from²)·z,
    # the forward process between two timesteps for VP levels (Ho et al. 2020, eq. 2 composed), and
    # x_from + √(σ_to² - σ_from²)·z for VE ones (α = 1).
    ratio = alpha_to / alpha_from
    std = math.sqrt(max(sigma_to**2 - (ratio * sigma_from) ** 2, 0.0))
    return ratio * sample + std * noise


def paste_known(
    sample: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, level: tuple[float, float], noise: torch.Tensor
) -> torch.Tensor:
    """Replace the known pixels (mask 0) of ``sample`` by ``known`` noised to ``level`` (RePaint, eq. 8)."""
    alpha, sigma = level
    return mask * sample + (1 - mask) * (alpha * known + sigma * noise)


@dataclass(frozen=True)
class Edit:
    """What an editing call starts from, and its hooks into the sampling loop (`diffusion.sampling`)."""

    image: torch.Tensor  # x_0, (num_images, c, h, w) in [-1, 1]
    mask: torch.Tensor | None  # (num_images, 1, h, w), 1 = regenerate; None for img2img
    start: int  # the first grid entry to run (`start_index`)

    def part(self, rows: slice, device: torch.device | None) -> "Edit":
        """The edit of images ``rows``, on ``device``."""
        mask = self.mask[rows].to(device) if self.mask is not None else None
        return Edit(self.image[rows].to(device), mask, self.start)

    def start_sample(self, noise: torch.Tensor, sampler: Scheduler) -> torch.Tensor:
        """The sample at grid entry `start`: x_0 noised to that level (SDEdit), its known pixels pasted."""
        if self.start == 0:
            x = noise * sampler.init_noise_sigma
        else:
            alpha, sigma = sampler.noise_level(self.start)
            x = alpha * self.image + sigma * noise
        if self.mask is not None:
            x = paste_known(x, self.image, self.mask, sampler.noise_level(self.start), noise)
        return x

    def after_step(self, sampler: Scheduler, generator: Generators) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """Inpainting's hook: after each step, the known pixels noised to the sample's new level (eq. 8)."""

        def paste(x: torch.Tensor, level: int) -> torch.Tensor:
            z = randn_tensor(x.shape, generator, device=x.device, dtype=torch.float32)
            return paste_known(x, self.image, self.mask, sampler.noise_level(level), z)

        return paste


def prepare_edit(
    image: ImageInput,
    mask_image: Image.Image | torch.Tensor | None,
    strength: float,
    num_images: int,
    size: tuple[int, int] | None,
    unet: UNetConfig,
    sampler: Scheduler,
    background: tuple[int, int, int] = WHITE,
) -> Edit:
    """Check and convert an editing call's inputs for ``unet`` and the ``sampler`` (timesteps set); PIL images
    with transparency are composited on ``background`` at 1 and 3 channels (`images_to_tensor`).

    Raises:
        ValueError: for image or mask counts other than 1 or ``num_images``, sides the model cannot
            take, a ``size`` other than the image's, strength outside [0, 1], a mask of another size or with no
            white pixel, or a sampler with more than one evaluation per step (Heun), where editing cannot start
            or jump back.
    """
    x0 = images_to_tensor(image, unet.in_channels, background=background)
    if len(x0) not in (1, num_images):
        raise ValueError(f"got {len(x0)} images for {num_images} outputs; give one, or one per output")
    x0 = x0.expand(num_images, *x0.shape[1:])
    height, width = check_size(tuple(x0.shape[-2:]), unet, "the image")
    if size is not None and tuple(size) != (height, width):
        raise ValueError(f"size {tuple(size)} differs from the image's {(height, width)}; leave size out")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if sampler.evaluations_per_step > 1:
        raise ValueError(
            f"the {registered_name(sampler)} sampler evaluates the model {sampler.evaluations_per_step} times per "
            "step, and editing cannot start from or jump back to the middle of a step; use another sampler (e.g. "
            "dpmsolver++ or ddim)"
        )
    mask = None
    if mask_image is not None:
        mask = mask_to_tensor(mask_image, (height, width))
        if len(mask) not in (1, num_images):
            raise ValueError(f"got {len(mask)} masks for {num_images} outputs; give one, or one per output")
        if not mask.any():
            raise ValueError(
                "the mask has no white pixel (above one half), so inpainting would keep the whole image: paint the "
                "area to regenerate white, or leave the mask out for img2img"
            )
        mask = mask.expand(num_images, *mask.shape[1:])
    return Edit(x0, mask, start_index(len(sampler.timesteps), strength))
