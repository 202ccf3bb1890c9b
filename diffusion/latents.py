"""Working with the initial noise: DDIM inversion of images into it, and interpolation between noises.

- Inversion (Song et al. 2021, sec. 4.3): run deterministic DDIM up the grid, so that sampling from
  the result regenerates the image (`ddim_invert`).
- Interpolation: spherical interpolation of Gaussian noises (Shoemake 1985), which keeps their norm,
  unlike a straight line whose midpoint is an atypically small noise (`slerp`, `interpolation_latents`).

Plain functions of a denoiser and a scheduler; `DiffusionPipeline.invert` and `.interpolate` check
their arguments and call them.
"""

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .schedulers import DDIMScheduler

# Extra model evaluations per step of inversion; a handful already converge (Pan et al. 2023).
MAX_FIXED_POINT_ITERATIONS = 100


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t = 0, returned exactly) to ``b`` (t = 1, exactly).

    The angle is the one between the flattened tensors; nearly parallel ones (or a zero one) are interpolated
    linearly.
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double().flatten(), b.double().flatten()
    norms = float(a64.norm() * b64.norm())
    theta = math.acos(float((torch.dot(a64, b64) / norms).clamp(-1, 1))) if norms > 0 else 0.0
    if theta < 1e-4:  # also a zero tensor, which has no direction
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    w_a, w_b = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (w_a * a.double() + w_b * b.double()).to(a.dtype)


def ddim_invert(
    epsilon: Callable[[torch.Tensor, int], torch.Tensor],
    sampler: DDIMScheduler,
    x0: torch.Tensor,
    fixed_point_iterations: int,
    on_step: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """The latents ``(b, c, h, w)`` at the first timestep of ``sampler``'s grid (timesteps set) from which
    DDIM at η = 0 regenerates ``x0``; ``epsilon(x, t)`` is ε̂ (see `DiffusionPipeline.invert`)."""
    alphas_cumprod = sampler.schedule.alphas_cumprod.tolist()
    x, current = x0, sampler.final_alpha_cumprod()  # ᾱ where sampling ends: the clean image
    for t in sampler.timesteps.tolist()[::-1]:
        target = alphas_cumprod[t]
        guess = x  # ε̂ is first taken at the current sample, then at the estimate of x_t (if refined)
        for _ in range(fixed_point_iterations + 1):
            eps = epsilon(guess, t)
            pred_x0 = (x - math.sqrt(1 - current) * eps) / math.sqrt(current)
            guess = math.sqrt(target) * pred_x0 + math.sqrt(1 - target) * eps  # eq. 12, η = 0, upwards
        x, current = guess, target
        on_step()
    return x


def invert_batches(
    denoiser: Denoiser,
    sampler: DDIMScheduler,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    fixed_point_iterations: int,
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """`ddim_invert` of ``x0`` ``(n, c, h, w)`` (on the CPU) in batches on the denoiser's device; float32, CPU."""
    device = denoiser.device
    evaluations = -(-len(x0) // batch_size) * len(sampler.timesteps)
    bar = tqdm(total=evaluations, disable=not progress, unit="step", desc="inverting")
    latents = []
    for first in range(0, len(x0), batch_size):
        rows = slice(first, first + batch_size)
        part = labels[rows].to(device) if labels is not None else None

        def epsilon(x: torch.Tensor, t: int, part: torch.Tensor | None = part) -> torch.Tensor:
            return denoiser.epsilon(x, t, part, sampler.schedule)

        latents.append(ddim_invert(epsilon, sampler, x0[rows].to(device), fixed_point_iterations, bar.update).cpu())
    bar.close()
    return torch.cat(latents).float()


def check_fixed_point_iterations(iterations: object) -> int:
    """``iterations`` if it is an int in [0, `MAX_FIXED_POINT_ITERATIONS`]."""
    if type(iterations) is not int or iterations < 0:  # bools are refused too
        raise ValueError(f"fixed_point_iterations must be an integer >= 0, got {iterations!r}")
    if iterations > MAX_FIXED_POINT_ITERATIONS:
        raise ValueError(f"fixed_point_iterations must be at most {MAX_FIXED_POINT_ITERATIONS}, got {iterations}")
    return iterations


def interpolation_latents(start: torch.Tensor, end: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(num_frames, c, h, w)`` latents at evenly spaced angles from ``start`` to ``end`` (both included)."""
    return torch.stack([slerp(start, end, i / (num_frames - 1)) for i in range(num_frames)])


def interpolation_end(
    name: str, point: object, size: tuple[int, int] | None, noise_for_seed: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """An end (``name``) of an interpolation as a ``(c, h, w)`` float32 CPU latent: a seed's noise or a latent."""
    if isinstance(point, torch.Tensor):
        return point.detach().float().cpu().squeeze(0) if point.ndim == 4 else point.detach().float().cpu()
    if not isinstance(point, int) or isinstance(point, bool):
        raise ValueError(f"start and end must be seeds (ints) or latents (tensors), got {point!r}")
    try:
        return noise_for_seed(point, size)
    except ValueError as e:
        raise ValueError(f"{name} seed {point}: {e}") from None
