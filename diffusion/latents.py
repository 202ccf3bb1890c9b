"""Working with the initial noise: DDIM inversion of images into it, and interpolation between noises.

- Inversion (Song et al. 2021, sec. 4.3): run deterministic DDIM up the grid, so that sampling from
  the result regenerates the image (`Latents.invert`).
- Interpolation: spherical interpolation of Gaussian noises (Shoemake 1985), which keeps their norm,
  unlike a straight line whose midpoint is an atypically small noise (`slerp`, `Latents.interpolate`).

`Latents` is a mixin of `diffusion.pipeline.DiffusionPipeline`: its methods use the pipeline's UNet,
guidance and sampling loop.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .arguments import check_batch_size, check_num_images, check_size
from .config import is_positive_int
from .editing import ImageInput, images_to_tensor
from .guidance import RANDOM_CLASSES
from .rng import randn_tensor
from .schedulers import DEFAULT_STEPS, DDIMScheduler, Scheduler

# Extra model evaluations per step of `Latents.invert`; a handful already converge (Pan et al. 2023).
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
    predict: Callable[[torch.Tensor, int], torch.Tensor],
    sampler: DDIMScheduler,
    x0: torch.Tensor,
    fixed_point_iterations: int,
    on_step: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """DDIM inversion of a batch up the ``sampler``'s grid; see `DiffusionPipeline.invert`.

    Args:
        predict: the model output for a sample at an integer timestep.
        sampler: a DDIM scheduler with its timesteps set.
        x0: clean images ``(b, c, h, w)`` in [-1, 1].
        fixed_point_iterations: extra evaluations per step that refine ε̂.
        on_step: called after each step.

    Returns:
        The latents at the first sampling timestep, ``(b, c, h, w)``.
    """
    alphas_cumprod = sampler.schedule.alphas_cumprod.tolist()
    x, current = x0, sampler.final_alpha_cumprod()  # ᾱ where sampling ends: the clean image
    for t in sampler.timesteps.tolist()[::-1]:
        target = alphas_cumprod[t]
        guess = x  # ε̂ is first taken at the current sample, then at the estimate of x_t (if refined)
        for _ in range(fixed_point_iterations + 1):
            eps = sampler.schedule.pred_epsilon(predict(guess, t), guess, t)
            pred_x0 = (x - math.sqrt(1 - current) * eps) / math.sqrt(current)
            guess = math.sqrt(target) * pred_x0 + math.sqrt(1 - target) * eps  # eq. 12, η = 0, upwards
        x, current = guess, target
        on_step()
    return x


class Latents:
    """`DiffusionPipeline`'s inversion and interpolation (see the module docstring)."""

    @torch.inference_mode()
    def invert(
        self,
        images: ImageInput,
        num_inference_steps: int = 50,
        *,
        class_labels: int | str | Sequence[int | str] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        fixed_point_iterations: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, appendix F): the latent
        noise from which deterministic DDIM regenerates ``images``.

        It runs the DDIM update of eq. 12 (η = 0) up the same grid that sampling walks down: from
        ᾱ_{t_{i+1}} to ᾱ_{t_i} with ε̂(x, t_i). Sampling evaluates ε̂ on x_{t_i}, which inversion does not
        know yet; plain DDIM inversion (``fixed_point_iterations=0``) uses the current sample instead,
        an O(step) error. Each fixed-point iteration re-evaluates ε̂ on the new estimate of x_{t_i}
        (Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative Diffusion
        Inversion"), at one more model evaluation per step. Regenerate with
        ``pipe(latents=z, scheduler="ddim", eta=0, num_inference_steps=n)`` and the same ``n``.
        Measured on the shipped model (docs/benchmarks.md): 50 steps and 1 iteration reconstruct better
        than 100 plain steps, at less cost.

        Args:
            images: PIL image(s) or a ``(n, c, h, w)`` tensor in [0, 1].
            num_inference_steps: n, the DDIM steps.
            class_labels, guidance_scale: as in `__call__`, for a class-conditional model.
            fixed_point_iterations: extra model evaluations per step that refine ε̂; 0 is plain DDIM inversion.
            batch_size: images per forward pass; None means all at once.
            progress: show a tqdm bar.

        Returns:
            float32 ``(n, c, h, w)`` latents on the CPU, of unit variance like sampling's initial noise.
        """
        x0 = images_to_tensor(images, self.unet.config.in_channels)
        check_size(tuple(x0.shape[-2:]), self.unet.config, "the image")
        labels = self.class_label_tensor(class_labels, len(x0))
        scale = self._guidance(labels, guidance_scale, 0.0)
        if batch_size is not None and not is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if type(fixed_point_iterations) is not int or fixed_point_iterations < 0:  # bools are refused too
            raise ValueError(f"fixed_point_iterations must be an integer >= 0, got {fixed_point_iterations!r}")
        if not isinstance(progress, bool):
            raise ValueError(f"progress must be True or False, got {progress!r}")
        if fixed_point_iterations > MAX_FIXED_POINT_ITERATIONS:
            raise ValueError(
                f"fixed_point_iterations must be at most {MAX_FIXED_POINT_ITERATIONS}, got {fixed_point_iterations}"
            )
        sampler = self.make_scheduler("ddim", eta=0.0)
        sampler.set_timesteps(num_inference_steps)
        batch_size = check_batch_size(self.unet.config, batch_size, len(x0), labels is not None, x0.shape[-2:])
        evaluations = -(-len(x0) // batch_size) * len(sampler.timesteps)
        bar = tqdm(total=evaluations, disable=not progress, unit="step", desc="inverting")
        latents = []
        for first in range(0, len(x0), batch_size):
            part = slice(first, first + batch_size)
            x = x0[part].to(self.device)
            batch_labels = labels[part].to(self.device) if labels is not None else None

            def predict(sample: torch.Tensor, t: int, labels: torch.Tensor | None = batch_labels) -> torch.Tensor:
                return self._predict(sample, torch.tensor(t, device=self.device), labels, scale, 0.0)

            x = ddim_invert(predict, sampler, x, fixed_point_iterations, on_step=lambda: bar.update(1))
            latents.append(x.float().cpu())
        bar.close()
        return torch.cat(latents)

    def noise_for_seed(self, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The initial noise ``(c, h, w)`` that sampling with ``seed`` starts from (per-image generators)."""
        height, width = check_size(size, self.unet.config) if size is not None else self.unet.config.sample_size
        shape = (1, self.unet.config.in_channels, height, width)
        return randn_tensor(shape, self.generators(1, [seed]), dtype=torch.float32)[0]

    def interpolate(
        self,
        start: int | torch.Tensor,
        end: int | torch.Tensor,
        num_frames: int = 8,
        num_inference_steps: int = DEFAULT_STEPS,
        scheduler: str | Scheduler = "ddim",
        **kwargs: Any,
    ) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """Images along the spherical path between two initial noises (see `slerp`).

        Args:
            start, end: a seed (its noise, as in `noise_for_seed`) or a ``(c, h, w)`` latent, e.g. from
                `invert`; frame 0 is the image of ``start`` and the last frame that of ``end``.
            num_frames: frames, at least 2, at evenly spaced angles.
            num_inference_steps: sampler steps.
            scheduler: a deterministic sampler (default DDIM at η = 0, which regenerates `invert`'s
                latents); a stochastic one would add different noise to each frame.
            kwargs: the other arguments of `__call__` (``class_labels``, ``guidance_scale``,
                ``output_type``, ``batch_size``, ``progress``, ...), except seeds and latents.

        Raises:
            ValueError: for fewer than 2 frames, a stochastic sampler, or latents of the wrong shape.
        """
        if not is_positive_int(num_frames) or num_frames < 2:
            raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
        check_num_images(num_frames, name="num_frames")
        for name in ("seed", "generator", "latents", "num_images"):
            if name in kwargs:
                raise ValueError(f"interpolate takes no {name}: the frames come from start and end")
        if isinstance(kwargs.get("class_labels"), str) and kwargs["class_labels"] == RANDOM_CLASSES:
            # One class for every frame: the one sampling would draw for the start seed.
            if not isinstance(start, int) or isinstance(start, bool):
                raise ValueError("class_labels='random' in interpolate draws the start seed's class; start is a latent")
            kwargs["class_labels"] = int(self.random_class_labels(1, [start])[0])
        sampler = self._sampler(scheduler, kwargs.pop("eta", None))
        if sampler.stochastic:
            raise ValueError(
                f"interpolation needs a deterministic sampler, and {self.scheduler_name(sampler)} adds fresh noise at "
                "every step; use ddim (eta 0), dpmsolver++2m, dpmsolver++3m, unipc or euler"
            )
        ends = []
        for name, point in (("start", start), ("end", end)):
            if isinstance(point, torch.Tensor):
                ends.append(
                    point.detach().float().cpu().squeeze(0) if point.ndim == 4 else point.detach().float().cpu()
                )
            elif isinstance(point, int) and not isinstance(point, bool):
                try:
                    ends.append(self.noise_for_seed(point, kwargs.get("size")))
                except ValueError as e:
                    raise ValueError(f"{name} seed {point}: {e}") from None
            else:
                raise ValueError(f"start and end must be seeds (ints) or latents (tensors), got {point!r}")
        if ends[0].shape != ends[1].shape or ends[0].ndim != 3:
            shapes = [tuple(e.shape) for e in ends]
            raise ValueError(f"start and end must be latents of one (c, h, w) shape, got {shapes}")
        if not all(torch.isfinite(e).all() for e in ends):
            raise ValueError("start and end latents must be finite; they hold NaN or infinite values")
        check_num_images(num_frames, tuple(ends[0].shape), name="num_frames")
        latents = torch.stack([slerp(ends[0], ends[1], i / (num_frames - 1)) for i in range(num_frames)])
        kwargs.setdefault("size", tuple(latents.shape[-2:]))  # inverted images may have their own size
        return self(num_frames, num_inference_steps, sampler, latents=latents, **kwargs)
