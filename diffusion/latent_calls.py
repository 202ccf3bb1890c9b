"""The pipeline's calls on the initial noise: `DiffusionPipeline.noise_for_seed`, `.invert` and `.interpolate`.

Each checks its arguments once, in the order of their documented messages, before any work; then
`invert_images` runs DDIM inversion (`diffusion.latents.invert_batches`), and `interpolation_arguments`
turns an interpolation into the `DiffusionPipeline.__call__` that samples its frames from the latents along
the path between two noises (`diffusion.latents.interpolation_latents`).
"""

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from .arguments import check_batch_size, check_batch_size_argument, check_num_images, check_progress, check_size
from .config import is_positive_int
from .editing import images_to_tensor
from .guidance import RANDOM_CLASSES
from .latents import check_fixed_point_iterations, interpolation_end, interpolation_latents, invert_batches
from .models import UNetConfig
from .request import call_guidance, call_sampler
from .rng import generators, randn_tensor, seed_list

if TYPE_CHECKING:
    from .pipeline import DiffusionPipeline

INVERSION_STEPS = 50  # `DiffusionPipeline.invert`'s DDIM steps when none are given (a distilled model: its own)


def seed_noise(unet: UNetConfig, seed: int, size: tuple[int, int] | None) -> torch.Tensor:
    """The initial noise ``(c, h, w)`` that sampling ``unet``'s model with ``seed`` starts from, at ``size``
    (None: the model's)."""
    height, width = check_size(size, unet) if size is not None else unet.sample_size
    shape = (1, unet.in_channels, height, width)
    return randn_tensor(shape, generators(seed_list([seed], 1)), dtype=torch.float32)[0]


def invert_images(pipe: "DiffusionPipeline", call: dict[str, Any]) -> torch.Tensor:
    """`DiffusionPipeline.invert` with the arguments ``call`` (by name): float32 ``(n, c, h, w)`` latents on the
    CPU."""
    args = SimpleNamespace(**call)
    config = pipe.unet.config
    x0 = images_to_tensor(args.images, config.in_channels, background=pipe.input_colour)  # (n, c, h, w)
    check_size(tuple(x0.shape[-2:]), config, "the image")
    labels = pipe.class_label_tensor(args.class_labels, len(x0))
    scale = call_guidance(pipe, labels, args.guidance_scale, 0.0)
    check_batch_size_argument(args.batch_size)
    check_fixed_point_iterations(args.fixed_point_iterations)
    check_progress(args.progress)
    steps = args.num_inference_steps
    steps = INVERSION_STEPS if steps is None and pipe.sampling is None else pipe.check_steps(steps)
    sampler = pipe.make_scheduler("ddim", eta=0.0)
    sampler.set_timesteps(steps)
    batch_size = check_batch_size(config, args.batch_size, len(x0), labels is not None, x0.shape[-2:])
    denoiser, iterations = pipe.denoiser(scale, num_inference_steps=steps), args.fixed_point_iterations
    return invert_batches(denoiser, sampler, x0, labels, iterations, batch_size, args.progress)


def interpolation_arguments(pipe: "DiffusionPipeline", call: dict[str, Any]) -> dict[str, Any]:
    """`DiffusionPipeline.interpolate`'s arguments ``call`` (by name), checked, as the arguments of the
    `DiffusionPipeline.__call__` that samples its frames."""
    args = SimpleNamespace(**call)
    num_frames, kwargs = args.num_frames, dict(args.kwargs)
    if not is_positive_int(num_frames) or num_frames < 2:
        raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
    check_num_images(num_frames, name="num_frames")
    for name in ("seed", "generator", "latents", "num_images"):
        if name in kwargs:
            raise ValueError(f"interpolate takes no {name}: the frames come from start and end")
    if isinstance(kwargs.get("class_labels"), str) and kwargs["class_labels"] == RANDOM_CLASSES:
        if not isinstance(args.start, int) or isinstance(args.start, bool):
            raise ValueError("class_labels='random' in interpolate draws the start seed's class; start is a latent")
        kwargs["class_labels"] = int(pipe.random_class_labels(1, [args.start])[0])  # one class for every frame
    sampler = call_sampler(pipe, args.scheduler, kwargs.pop("eta", None))
    if sampler.stochastic:
        raise ValueError(
            f"interpolation needs a deterministic sampler, and {pipe.scheduler_name(sampler)} adds fresh noise at "
            "every step; use ddim (eta 0), dpmsolver++2m, dpmsolver++3m, unipc or euler"
        )
    size = kwargs.get("size")
    ends = [
        interpolation_end(name, point, size, pipe.noise_for_seed)
        for name, point in (("start", args.start), ("end", args.end))
    ]
    if ends[0].shape != ends[1].shape or ends[0].ndim != 3:
        shapes = [tuple(e.shape) for e in ends]
        raise ValueError(f"start and end must be latents of one (c, h, w) shape, got {shapes}")
    if not all(torch.isfinite(e).all() for e in ends):
        raise ValueError("start and end latents must be finite; they hold NaN or infinite values")
    check_num_images(num_frames, tuple(ends[0].shape), name="num_frames")
    latents = interpolation_latents(ends[0], ends[1], num_frames)  # (num_frames, c, h, w)
    kwargs.setdefault("size", tuple(latents.shape[-2:]))  # inverted images may have their own size
    steps = args.num_inference_steps
    return {"num_images": num_frames, "num_inference_steps": steps, "scheduler": sampler, "latents": latents} | kwargs
