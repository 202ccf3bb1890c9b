"""`Request`: one `DiffusionPipeline.__call__`, its arguments checked and resolved, cut into batches.

Everything the call decided before any work (the sampler with its timesteps set, the image shape, each
image's seed and class, the edit, the grid entries to visit) is here; what each batch starts from is
`Request.start`. The pieces of a call that `DiffusionPipeline`'s other calls share are here too: the sampler
(`call_sampler`) and guidance scale (`call_guidance`) it uses, its random classes (`draw_classes`) and the
form of its output (`output_images`).
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .arguments import (
    check_batch_size,
    check_call_options,
    check_eta,
    check_generator,
    check_latents,
    check_num_images,
    check_repaint,
    check_size,
)
from .editing import DEFAULT_JUMP_LENGTH, Edit, edit_visit_order, effective_strength, prepare_edit
from .guidance import RANDOM_CLASSES, check_guidance
from .image import MODES, to_pil
from .rng import Generators, generators, randn_tensor, seed_list
from .schedulers import Scheduler, resolve_scheduler_name

if TYPE_CHECKING:
    from .pipeline import DiffusionPipeline

OutputType = Literal["pil", "tensor", "numpy"]
# Classifier-free guidance scale when class labels are given: on the shipped model it follows the requested
# class more often than the real images' own classifier rate, at a small cost in FD; larger scales are less
# diverse (docs/benchmarks.md, "Class-conditional model").
DEFAULT_GUIDANCE_SCALE = 1.5


@dataclass(frozen=True)
class Request:
    """A checked sampling call."""

    sampler: Scheduler  # with its timesteps set, on the pipeline's device
    num_inference_steps: int  # the steps asked for (a distilled model samples them with that count's UNet)
    shape: tuple[int, int, int]  # (c, h, w) of each image
    num_images: int
    batch_size: int  # images per forward pass
    seeds: Sequence[int] | None  # one per image; None when one generator serves the call
    generator: torch.Generator | None
    labels: torch.Tensor | None  # (num_images,) class ids, on the CPU
    guidance_scale: float | None  # w; None without labels
    latents: torch.Tensor | None  # (num_images, c, h, w) initial noise given instead of the seeds'
    edit: Edit | None  # img2img or inpainting; None for plain generation
    order: list[int]  # the grid entries each batch steps (`diffusion.editing.visit_order`)
    callback: Callable[[int, int, torch.Tensor], None] | None

    @property
    def num_batches(self) -> int:
        return -(-self.num_images // self.batch_size)

    def batches(self) -> Iterator[slice]:
        """The rows of each batch."""
        for first in range(0, self.num_images, self.batch_size):
            yield slice(first, min(first + self.batch_size, self.num_images))

    def start(
        self, rows: slice, device: torch.device
    ) -> tuple[Generators, torch.Tensor | None, torch.Tensor, Edit | None]:
        """(generators, labels, first sample, edit) of the batch ``rows``: the first sample is the seeds'
        noise (or the given latents) times `init_noise_sigma`, or the edited image noised to its start."""
        gens = generators(self.seeds[rows]) if self.seeds is not None else self.generator
        labels = self.labels[rows].to(device) if self.labels is not None else None
        if self.latents is not None:
            noise = self.latents[rows].to(device=device, dtype=torch.float32)
        else:
            noise = randn_tensor((rows.stop - rows.start, *self.shape), gens, device=device, dtype=torch.float32)
        if self.edit is None:
            return gens, labels, noise * self.sampler.init_noise_sigma, None
        edit = self.edit.part(rows, device)
        return gens, labels, edit.start_sample(noise, self.sampler), edit

    def on_step(self, bar: tqdm) -> Callable[[int, int, torch.Tensor], None]:
        """The loop's callback: advance the progress bar, then call the user's callback."""

        def on_step(i: int, t: int, x: torch.Tensor) -> None:
            bar.update(1)
            if self.callback is not None:
                self.callback(i, t, x)

        return on_step


def build_request(pipe: "DiffusionPipeline", call: dict[str, Any]) -> Request:
    """`DiffusionPipeline.__call__`'s arguments (``call``, by name) checked and resolved, each once, before
    any work, in the order of their documented messages."""
    args = SimpleNamespace(**call)
    num_images = check_num_images(args.num_images)
    if args.seed is not None and args.generator is not None:
        raise ValueError("give seed or generator, not both")
    generator = check_generator(args.generator)
    seeds = seed_list(args.seed if args.seed is not None else 0, num_images) if generator is None else None
    check_call_options(args.output_type, args.batch_size, args.callback, args.progress)
    check_repaint(args.jump_length, args.resample)
    size = check_size(args.size, pipe.unet.config) if args.size is not None else None
    sampler = call_sampler(pipe, args.scheduler, args.eta)
    steps = pipe.check_steps(args.num_inference_steps)
    sampler.set_timesteps(steps, device=pipe.device)
    if args.image is None and (args.mask_image is not None or args.strength is not None):
        raise ValueError("mask_image and strength need an image to edit (image=...)")
    edit, strength = None, args.strength
    if args.image is not None:
        strength = effective_strength(strength, inpainting=args.mask_image is not None)
        colour = pipe.input_colour  # what an RGBA image is composited on at 1 and 3 channels
        edit = prepare_edit(args.image, args.mask_image, strength, num_images, size, pipe.unet.config, sampler, colour)
        size = tuple(edit.image.shape[-2:])
    inpainting = edit is not None and edit.mask is not None
    if not inpainting and (args.resample != 1 or args.jump_length != DEFAULT_JUMP_LENGTH):
        raise ValueError("resample and jump_length are RePaint settings for inpainting: give mask_image too")
    order = edit_visit_order(len(sampler.timesteps), strength, inpainting, args.jump_length, args.resample)
    shape = (pipe.unet.config.in_channels, *(size or pipe.unet.config.sample_size))
    check_num_images(num_images, shape)
    if args.output_type == "pil" and shape[0] not in MODES:
        raise ValueError(
            f"output_type='pil' makes L, RGB or RGBA images, and this model has {shape[0]} channels; "
            "use output_type='tensor' or 'numpy'"
        )
    check_latents(args.latents, (num_images, *shape))
    class_labels = args.class_labels
    if isinstance(class_labels, str) and class_labels == RANDOM_CLASSES:
        class_labels = pipe.random_class_labels(num_images, seeds, generator)
    labels = pipe.class_label_tensor(class_labels, num_images)
    scale = call_guidance(pipe, labels, args.guidance_scale, args.guidance_rescale)
    batch_size = check_batch_size(pipe.unet.config, args.batch_size, num_images, labels is not None, shape[1:])
    return Request(
        sampler=sampler,
        num_inference_steps=steps,
        shape=shape,
        num_images=num_images,
        batch_size=batch_size,
        seeds=seeds,
        generator=generator,
        labels=labels,
        guidance_scale=scale,
        latents=args.latents,
        edit=edit,
        order=order,
        callback=args.callback,
    )


def call_sampler(pipe: "DiffusionPipeline", scheduler: str | Scheduler | None, eta: float | None) -> Scheduler:
    """The scheduler a call samples with: an object as given, or a fresh one by name (default: the pipeline's)."""
    check_eta(eta)
    if isinstance(scheduler, Scheduler):
        if eta is not None:
            raise ValueError("eta is set in the config of a scheduler object; pass a scheduler name to use eta=")
        return scheduler
    if scheduler is not None and not isinstance(scheduler, str):
        raise ValueError(f"scheduler must be a name or a Scheduler, got {type(scheduler).__name__}")
    name = scheduler if scheduler is not None else pipe.scheduler_name()
    if pipe.sampling is not None and (
        resolve_scheduler_name(name) != resolve_scheduler_name(pipe.scheduler_name()) or eta
    ):
        raise ValueError(
            f"a distilled model samples with the sampler it was trained for ({pipe.scheduler_name()}, eta 0); "
            f"leave out the sampler ({name}) and eta"
        )
    return pipe.make_scheduler(name, **({} if eta is None else {"eta": float(eta)}))


def call_guidance(
    pipe: "DiffusionPipeline", labels: torch.Tensor | None, guidance_scale: float | None, guidance_rescale: float
) -> float | None:
    """The guidance scale a call uses (None: no guidance), its arguments checked; a guidance-distilled model
    takes no rescale, and only a scale in its `SamplingRecord`'s range."""
    config = pipe.unet.config
    default = DEFAULT_GUIDANCE_SCALE
    if pipe.sampling is not None and pipe.sampling.guidance_range is not None:
        low, high = pipe.sampling.guidance_range
        default = min(max(default, low), high)  # the nearest scale it was distilled for
    scale = check_guidance(labels, guidance_scale, guidance_rescale, config.num_classes is not None, default)
    if config.guidance_embedding and guidance_rescale != 0:
        raise ValueError("a guidance-distilled model folds guidance into one pass; guidance_rescale is not supported")
    if scale is not None and pipe.sampling is not None:
        pipe.sampling.check_guidance_scale(scale)
    return scale


def draw_classes(
    num_classes: int | None, num_images: int, seed: int | Sequence[int] | None, generator: torch.Generator | None
) -> torch.Tensor:
    """``(num_images,)`` classes of ``class_labels="random"`` (`DiffusionPipeline.random_class_labels`)."""
    if num_classes is None:
        raise ValueError("class_labels='random' needs a class-conditional model; this model is unconditional")
    check_num_images(num_images)
    if check_generator(generator) is not None:
        return torch.randint(num_classes, (num_images,), generator=generator, device=generator.device).cpu()
    seeds = seed_list(seed if seed is not None else 0, num_images)
    # One generator at a time: a million of them would hold gigabytes.
    return torch.cat([torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(s)) for s in seeds])


def output_images(images: torch.Tensor, output_type: OutputType) -> list[Image.Image] | torch.Tensor | np.ndarray:
    """``(n, c, h, w)`` float32 images in [0, 1] as ``output_type`` asks."""
    if output_type == "tensor":
        return images
    if output_type == "numpy":
        return images.permute(0, 2, 3, 1).numpy()
    return to_pil(images)
