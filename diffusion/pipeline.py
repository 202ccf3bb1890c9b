"""`DiffusionPipeline`: a UNet and a scheduler behind one call.

`__call__` checks its arguments once (`diffusion.request`), then, batch by batch, runs the one sampling
loop (`diffusion.sampling`) with the UNet as a `diffusion.denoiser.Denoiser` (dtype, memory format,
classifier-free guidance). Editing hooks into that loop (`diffusion.editing`); `invert` and `interpolate`
check their arguments in `diffusion.latent_calls`. The folder format is `diffusion.io.model_folder`.

A distilled ("few-step") model carries a `SamplingRecord` and one UNet per trained step count: a call
samples with the UNet of its step count, and a guidance-distilled one folds guidance into one pass.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .arguments import (
    check_device,
    check_num_images,
    check_placement,
    check_repaint,
    check_scheduler_overrides,
)
from .denoiser import Denoiser
from .editing import DEFAULT_JUMP_LENGTH, ImageInput, edit_visit_order
from .guidance import class_label_tensor
from .image import Background, input_background
from .io.diffusers_folder import save_diffusers
from .io.model_folder import FORMAT_NAME, check_step_unets, read_model, write_model_folder
from .io.sampling_record import SamplingRecord
from .latent_calls import interpolation_arguments, invert_images, seed_noise
from .models import UNet
from .request import DEFAULT_GUIDANCE_SCALE as DEFAULT_GUIDANCE_SCALE  # re-exported: a public name
from .request import OutputType, build_request, call_sampler, draw_classes, output_images
from .rng import generators, seed_list
from .sampling import sampling_loop
from .schedulers import (
    DEFAULT_STEPS,
    SCHEDULERS,
    Scheduler,
    SchedulerConfig,
    get_scheduler,
    registered_name,
    resolve_scheduler_name,
    scheduler_name,
)

logger = logging.getLogger(__name__)


class DiffusionPipeline:
    """Turns Gaussian noise into images with ``unet`` and ``scheduler``.

    Attributes:
        unet: the noise predictor.
        scheduler: the default sampler; any other is one argument away (``scheduler="ddpm"``).
        class_names: the training folder's class names, if any.
        background: what training composited transparency on at 1 and 3 channels (``--background``: white,
            black or random); the transparency of PIL images given to editing and `invert` is composited
            on it, and on white for random (`input_colour`).
        sampling: a distilled model's `SamplingRecord` (its step counts, default and guidance range), else None.
        step_unets: a distilled model's students of its step counts other than the default, by step count;
            ``unet`` is the student of the default one (`diffusion.io.model_folder.check_step_unets`).
    """

    def __init__(
        self,
        unet: UNet,
        scheduler: Scheduler,
        class_names: Sequence[str] = (),
        background: Background = "white",
        *,
        sampling: SamplingRecord | None = None,
        step_unets: Mapping[int, UNet] | None = None,
    ) -> None:
        num_classes = unet.config.num_classes
        if class_names and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for a model of {num_classes} classes")
        if background not in get_args(Background):
            raise ValueError(f"background must be one of {', '.join(get_args(Background))}, got {background!r}")
        self.step_unets = {n: student.eval() for n, student in check_step_unets(unet, sampling, step_unets).items()}
        self.sampling = sampling
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.class_names = list(class_names)
        self.background = background
        self.memory_format = torch.contiguous_format  # of the UNet's inputs; see `to`
        self._compiled: tuple[UNet, Callable[..., torch.Tensor]] | None = None  # (unet, its compiled form)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def default_steps(self) -> int:
        """The step count a call samples with when it names none: a distilled model's own, else `DEFAULT_STEPS`."""
        return self.sampling.default_steps if self.sampling is not None else DEFAULT_STEPS

    def check_steps(self, num_inference_steps: int | None) -> int:
        """The step count of a call given ``num_inference_steps`` (None: `default_steps`); a distilled model
        refuses one it was not trained for. Other counts are checked by the sampler."""
        if num_inference_steps is None:
            return self.default_steps
        return self.sampling.check_steps(num_inference_steps) if self.sampling else num_inference_steps

    @property
    def input_colour(self) -> tuple[int, int, int]:
        """The RGB that an RGBA input's transparency is composited on at 1 and 3 channels (`input_background`)."""
        return input_background(self.background)

    def to(
        self,
        device: str | torch.device | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        memory_format: torch.memory_format | None = None,
    ) -> "DiffusionPipeline":
        """Move the UNets (a distilled model's every student) to a device and/or cast them to a dtype:
        ``to("cuda")``, ``to(torch.bfloat16)``, ``to("cpu", torch.float32)``. Sampling math stays in float32
        whatever the UNet's dtype.

        ``memory_format=torch.channels_last`` stores the UNet's weights and inputs NHWC, which the
        convolutions of oneDNN (CPU) and cuDNN run faster (docs/benchmarks.md, "Sampling forward").
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        device = check_placement(device, dtype, memory_format)
        for unet in (self.unet, *self.step_unets.values()):
            unet.to(device=device, dtype=dtype)
            if memory_format is not None:
                unet.to(memory_format=memory_format)
        if memory_format is not None:
            self.memory_format = memory_format
        return self

    def compile(self, **options: Any) -> "DiffusionPipeline":
        """Sample through ``torch.compile(unet, **options)`` (``mode="max-autotune"``): the first call at each batch
        shape compiles, later ones run fused kernels. A distilled model's other step counts run eagerly."""
        self._compiled = (self.unet, torch.compile(self.unet, **options))
        return self

    def make_scheduler(self, name: str, **overrides: Any) -> Scheduler:
        """A fresh scheduler ``name`` with this model's noise schedule and prediction type.

        ``name`` is one of `SCHEDULER_NAMES` (an alias such as ``"dpmsolver++3m"`` sets its fields);
        ``overrides`` set fields of that scheduler's config, e.g. ``eta=0.5`` for DDIM or
        ``use_karras_sigmas=True`` for the σ-space samplers. The pipeline's own sampler settings carry
        over only to a scheduler of the same class: another class gets the shared `SchedulerConfig`
        fields (schedule, prediction type, spacing, x̂_0 processing) and its own defaults otherwise.

        Raises:
            ValueError: for an unknown name or setting, a setting of the wrong type or out of range, or a
                field of the model's noise schedule (`MODEL_SCHEDULE_FIELDS`).
        """
        name, fields = resolve_scheduler_name(name)
        overrides = {**fields, **overrides}
        settings = self.scheduler.config.to_dict()
        if SCHEDULERS[name] is not type(self.scheduler):
            shared = {f.name for f in dataclasses.fields(SchedulerConfig)}
            settings = {k: v for k, v in settings.items() if k in shared}
        scheduler = get_scheduler(name, settings)
        if not overrides:
            return scheduler
        check_scheduler_overrides(name, scheduler.config, overrides)
        return get_scheduler(name, scheduler.config.to_dict() | overrides)

    def num_model_evaluations(
        self,
        num_inference_steps: int | None = None,
        scheduler: str | Scheduler | None = None,
        *,
        strength: float | None = None,
        inpainting: bool = False,
        jump_length: int = DEFAULT_JUMP_LENGTH,
        resample: int = 1,
    ) -> int:
        """NFE per image: how many times sampling with these settings calls the UNet (Heun: 2n - 1; guidance
        evaluates both branches in one batch, a guidance-distilled UNet in one pass). For an edit (``strength``
        given, or ``inpainting``), the evaluations it runs: img2img skips the first steps, RePaint redoes some
        (``jump_length``, ``resample`` as in `__call__`). ``num_inference_steps`` as in `__call__`."""
        check_repaint(jump_length, resample)
        sampler = call_sampler(self, scheduler, None)
        sampler.set_timesteps(self.check_steps(num_inference_steps))
        return len(edit_visit_order(len(sampler.timesteps), strength, inpainting, jump_length, resample))

    def scheduler_name(self, scheduler: Scheduler | None = None) -> str:
        """The name of ``scheduler`` (default: the pipeline's own): the alias its settings match, such as
        ``"dpmsolver++2m-sde"``, else its registered name."""
        return scheduler_name(scheduler or self.scheduler)

    # ----- the model folder (diffusion.io.model_folder) -----

    def save_pretrained(
        self, path: str | Path, format: Literal["pixel-diffusion", "diffusers"] = FORMAT_NAME, *, nearest: bool = True
    ) -> str:
        """Write the model folder described in `diffusion.io.model_folder`, or with ``format="diffusers"``
        a folder that ``diffusers.DDPMPipeline.from_pretrained`` loads (`diffusion.io.diffusers_folder`); return
        the name of the sampler written. For diffusers, a sampler it would run differently is written as the
        nearest one it runs as we do, with a warning, or with ``nearest=False`` refused (`save_diffusers`); a
        distilled model is written as its default student alone (the other step counts and the record are left
        out, with a warning), and a guidance-distilled one is refused.

        Raises:
            ValueError: for an unknown format, or a model or sampler diffusers cannot express.
        """
        if format == "diffusers":
            name, scheduler, classes = registered_name(self.scheduler), self.scheduler, self.class_names
            exported = save_diffusers(
                self.unet, name, scheduler, path, classes, nearest=nearest, background=self.background
            )
            if self.sampling is not None:
                logger.warning(
                    "diffusers has no distilled models: exported the %d-step student alone", self.default_steps
                )
            return exported
        if format != FORMAT_NAME:
            raise ValueError(f"unknown format {format!r}; expected {FORMAT_NAME!r} or 'diffusers'")
        folder = (path, self.unet, self.scheduler, self.scheduler_name(), self.class_names, self.background)
        write_model_folder(*folder, sampling=self.sampling, step_unets=self.step_unets)
        return self.scheduler_name()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "DiffusionPipeline":
        """Load a model folder written by `save_pretrained`, a diffusers pipeline folder (see
        `diffusion.io.diffusers_folder`), a training checkpoint (``OUT/checkpoints/step-N``: its EMA weights) or a
        Hugging Face Hub id, with no flags and no code execution (`diffusion.io.model_folder`).

        Args:
            path: the folder, a shipped model's name (``"fashion-mnist"``) or a Hub id (``"owner/name"``);
                None loads the Fashion-MNIST model shipped in ``assets/``.
            device: where to put the UNet (default: the CPU).
            dtype: the UNet's dtype (default: as stored, float32).

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            ValueError: the folder is not a model, or its files disagree with each other.
        """
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ValueError(f"path must be a folder name (str or os.PathLike) or None, got {type(path).__name__}")
        device = check_device(device)  # checked before the weights are read
        m = read_model(path)
        pipe = cls(m.unet, m.scheduler, m.class_names, m.background, sampling=m.sampling, step_unets=m.step_unets)
        return pipe.to(device, dtype)

    # ----- sampling -----

    def generators(self, num_images: int, seed: int | Sequence[int]) -> list[torch.Generator]:
        """One generator per image: image i of a call with seed ``s`` uses seed ``s + i`` (see `seed_list`)."""
        return generators(seed_list(seed, check_num_images(num_images)))

    # ----- conditioning -----

    def class_label_tensor(
        self, class_labels: int | str | Sequence[int | str] | torch.Tensor | None, num_images: int
    ) -> torch.Tensor | None:
        """Class labels as ``(num_images,)`` int64 ids (see `diffusion.guidance.class_label_tensor`)."""
        return class_label_tensor(class_labels, num_images, self.unet.config.num_classes, self.class_names)

    def random_class_labels(
        self, num_images: int, seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(num_images,)`` classes drawn uniformly, each from its image's seed (so that it does not depend
        on the batch), or from ``generator``: what ``class_labels="random"`` samples.

        Raises:
            ValueError: for an unconditional model.
        """
        return draw_classes(self.unet.config.num_classes, num_images, seed, generator)

    def denoiser(
        self, guidance_scale: float | None = None, guidance_rescale: float = 0.0, num_inference_steps: int | None = None
    ) -> Denoiser:
        """The UNet that samples with ``num_inference_steps`` (a distilled model's student of that step count; None:
        the default UNet) as the sampling loop calls it, with this guidance (see `diffusion.denoiser`)."""
        unet = self.step_unets.get(num_inference_steps, self.unet)
        forward = self._compiled[1] if self._compiled and self._compiled[0] is unet else unet
        c, weight = unet.config, next(unet.parameters())
        guidance = (guidance_scale, guidance_rescale, c.guidance_embedding)
        return Denoiser(forward, c.num_classes, weight.device, weight.dtype, self.memory_format, *guidance)

    # ----- sampling and editing -----

    @torch.inference_mode()
    def __call__(
        self,
        num_images: int = 1,
        num_inference_steps: int | None = None,
        scheduler: str | Scheduler | None = None,
        *,
        eta: float | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        size: tuple[int, int] | None = None,
        class_labels: int | str | Sequence[int | str] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        image: ImageInput | None = None,
        strength: float | None = None,
        mask_image: Image.Image | torch.Tensor | None = None,
        jump_length: int = DEFAULT_JUMP_LENGTH,
        resample: int = 1,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """Generate ``num_images`` images, or edit ``image``.

        Returns:
            ``pil``: a list of ``num_images`` PIL images (mode ``L``, ``RGB`` or ``RGBA``: 1, 3 or 4 channels);
            ``tensor``: float32 ``(n, c, h, w)`` in [0, 1] on the CPU; ``numpy``: float32 ``(n, h, w, c)`` in [0, 1].

        Args:
            num_images: how many.
            num_inference_steps: sampler steps (model evaluations: `num_model_evaluations`); None means
                `default_steps`. A distilled model samples only with the step counts it was trained for.
            scheduler: a name of `SCHEDULER_NAMES` (``"ddim"``, ``"dpmsolver++"``, ``"heun"``, ...), a
                scheduler object, or None for the pipeline's own.
            eta: DDIM's stochasticity (0 deterministic, 1 DDPM-like); None keeps the scheduler's.
            seed: an int (image i uses ``seed + i``) or one seed per image. Each image has its own
                generator, so an image does not depend on the batch size or its place in a batch.
            generator: alternatively one generator for the whole call (batch-dependent).
            batch_size: images per forward pass; None means all at once.
            size: (height, width); None means the model's ``sample_size`` (or the image's, when editing).
            class_labels: for a class-conditional model, the class of each image: a name of
                `class_names` or an id, one for all images or one per image; ``"random"`` draws each
                image's class from its seed. None samples the unconditional model (the null class),
                which a model trained with 10% label dropout learns less well than its classes.
            guidance_scale: classifier-free guidance w (`diffusion.guidance`): 0 unconditional, 1 plain
                conditional, larger follows the class more closely. None means `DEFAULT_GUIDANCE_SCALE`
                when ``class_labels`` are given. Each step then evaluates both branches in one batch; a
                guidance-distilled model takes w as an input instead, in one pass, within its `sampling` range.
            guidance_rescale: φ in [0, 1] of guidance rescale (Lin et al. 2024); 0 is off.
            image: the image(s) to edit: a PIL image (converted to the model's L, RGB or RGBA; transparency on
                `background`), a list, or a ``(c, h, w)`` / ``(n, c, h, w)`` tensor in [0, 1]; one for all
                ``num_images``. Alone: img2img (SDEdit).
            strength: how much of the sampling to redo, in [0, 1]: 0 returns ``image``, 1 ignores it
                (inpainting still keeps its known pixels). Default 0.8 for img2img, 1 for inpainting.
            mask_image: inpainting mask of the image's size, white (> 0.5) where to regenerate.
            jump_length: RePaint resampling: steps per run before jumping back (with ``resample`` > 1).
            resample: RePaint resampling: times each run of ``jump_length`` steps is done; 1 is plain
                masked replacement.
            latents: the initial noise ``(num_images, c, h, w)`` at unit variance instead of the seeds'
                (e.g. from `invert`, or interpolated); the seeds still drive the samplers' own noise.
            output_type: ``pil`` (list of images), ``tensor`` (``(n, c, h, w)`` float32 in [0, 1] on the
                CPU) or ``numpy`` (``(n, h, w, c)`` float32 in [0, 1]).
            progress: show a tqdm bar over the steps.
            callback: called as ``callback(step_index, timestep, sample)`` after each model evaluation;
                ``step_index`` indexes ``timesteps`` (RePaint revisits some); ``timestep`` is an int, or a
                float for samplers with fractional timesteps.

        Raises:
            ValueError: for an argument out of range, an unknown class, guidance for an unconditional model, a
                mask not of the image's size, a sampler that cannot edit, or ``pil`` output without 1, 3 or 4 channels.
        """
        request = build_request(self, locals())  # every argument checked, once, before any work
        denoiser = self.denoiser(request.guidance_scale, guidance_rescale, request.num_inference_steps)
        bar = tqdm(total=request.num_batches * len(request.order), disable=not progress, unit="step", desc="sampling")
        on_step = request.on_step(bar)
        outputs = []
        for rows in request.batches():
            gens, labels, x, edit = request.start(rows, self.device)
            after_step = edit.after_step(request.sampler, gens) if edit and edit.mask is not None else None
            x = sampling_loop(denoiser, request.sampler, x, labels, gens, request.order, after_step, on_step)
            if edit is not None and edit.start == len(request.sampler.timesteps):
                x = edit.image  # strength 0: nothing to redo
            outputs.append((x / 2 + 0.5).clamp(0, 1).cpu())
        bar.close()
        return output_images(torch.cat(outputs), output_type)  # (num_images, c, h, w) in [0, 1]

    # ----- the initial noise: inversion and interpolation (`diffusion.latent_calls`) -----

    @torch.inference_mode()
    def invert(
        self,
        images: ImageInput,
        num_inference_steps: int | None = None,
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
            images: PIL image(s) (transparency on `background`) or a ``(n, c, h, w)`` tensor in [0, 1].
            num_inference_steps: n, the DDIM steps; None means 50 (`INVERSION_STEPS`), or a distilled model's
                `default_steps`.
            class_labels, guidance_scale: as in `__call__`, for a class-conditional model.
            fixed_point_iterations: extra model evaluations per step that refine ε̂; 0 is plain DDIM inversion.
            batch_size: images per forward pass; None means all at once.
            progress: show a tqdm bar.

        Returns:
            float32 ``(n, c, h, w)`` latents on the CPU, of unit variance like sampling's initial noise.
        """
        return invert_images(self, locals())  # every argument checked, once, before any work

    def noise_for_seed(self, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The initial noise ``(c, h, w)`` that sampling with ``seed`` starts from (per-image generators)."""
        return seed_noise(self.unet.config, seed, size)

    def interpolate(
        self,
        start: int | torch.Tensor,
        end: int | torch.Tensor,
        num_frames: int = 8,
        num_inference_steps: int | None = None,
        scheduler: str | Scheduler = "ddim",
        **kwargs: Any,
    ) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """Images along the spherical path between two initial noises (see `slerp`).

        Args:
            start, end: a seed (its noise, as in `noise_for_seed`) or a ``(c, h, w)`` latent, e.g. from
                `invert`; frame 0 is the image of ``start`` and the last frame that of ``end``.
            num_frames: frames, at least 2, at evenly spaced angles.
            num_inference_steps: sampler steps; None means `default_steps`.
            scheduler: a deterministic sampler (default DDIM at η = 0, which regenerates `invert`'s
                latents); a stochastic one would add different noise to each frame.
            kwargs: the other arguments of `__call__` (``class_labels``, ``guidance_scale``,
                ``output_type``, ``batch_size``, ``progress``, ...), except seeds and latents.

        Raises:
            ValueError: for fewer than 2 frames, a stochastic sampler, or latents of the wrong shape.
        """
        return self(**interpolation_arguments(self, locals()))  # every argument checked, once, before any work
