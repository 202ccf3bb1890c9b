"""`DiffusionPipeline`: a UNet and a scheduler, the one sampling loop for generation and editing (with
classifier-free guidance), inversion and interpolation. Its folder format is `diffusion.io.model_folder`.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .arguments import (
    check_batch_size,
    check_call_options,
    check_device,
    check_eta,
    check_generator,
    check_num_images,
    check_placement,
    check_repaint,
    check_scheduler_overrides,
    check_size,
)
from .editing import (
    DEFAULT_JUMP_LENGTH,
    ImageInput,
    effective_strength,
    paste_known,
    prepare_edit,
    renoise,
    start_index,
    visit_order,
)
from .guidance import RANDOM_CLASSES, check_guidance, class_label_tensor, classifier_free_guidance
from .image import to_pil
from .io.diffusers_folder import save_diffusers
from .io.model_folder import FORMAT_NAME, read_model_folder, write_model_folder
from .latents import Latents
from .models import UNet
from .rng import randn_tensor, seed_list
from .schedulers import (
    DEFAULT_STEPS,
    SCHEDULERS,
    Scheduler,
    SchedulerConfig,
    get_scheduler,
    resolve_scheduler_name,
    scheduler_name,
)

logger = logging.getLogger(__name__)

OutputType = Literal["pil", "tensor", "numpy"]
# Classifier-free guidance scale when class labels are given. On the shipped model (docs/benchmarks.md,
# "Class-conditional model"), w = 1.5 drew the requested class 93.7% of the time at FD@1000 0.411; w = 1
# had the best FD (0.284) but 86.2%, under the real images' 88.9%; w = 2 and 3 gave 96.7% and 99.0% at
# FD 0.893 and 1.816, less diverse.
DEFAULT_GUIDANCE_SCALE = 1.5


class DiffusionPipeline(Latents):
    """Turns Gaussian noise into images with ``unet`` and ``scheduler``.

    Attributes:
        unet: the noise predictor.
        scheduler: the default sampler; any other is one argument away (``scheduler="ddpm"``).
        class_names: the training folder's class names, if any.
    """

    def __init__(self, unet: UNet, scheduler: Scheduler, class_names: Sequence[str] = ()) -> None:
        num_classes = unet.config.num_classes
        if class_names and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for a model of {num_classes} classes")
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.class_names = list(class_names)
        self.memory_format = torch.contiguous_format  # of the UNet's inputs; see `to`
        self._compiled: tuple[UNet, Callable[..., torch.Tensor]] | None = None  # (unet, its compiled form)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(
        self,
        device: str | torch.device | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        memory_format: torch.memory_format | None = None,
    ) -> "DiffusionPipeline":
        """Move the UNet to a device and/or cast it to a dtype: ``to("cuda")``, ``to(torch.bfloat16)``,
        ``to("cpu", torch.float32)``. Sampling math stays in float32 whatever the UNet's dtype.

        ``memory_format=torch.channels_last`` stores the UNet's weights and inputs NHWC, which the
        convolutions of oneDNN (CPU) and cuDNN run faster (docs/benchmarks.md, "Sampling forward").
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        device = check_placement(device, dtype, memory_format)
        self.unet.to(device=device, dtype=dtype)
        if memory_format is not None:
            self.unet.to(memory_format=memory_format)
            self.memory_format = memory_format
        return self

    def compile(self, **options: Any) -> "DiffusionPipeline":
        """Sample through ``torch.compile(unet, **options)`` (e.g. ``mode="max-autotune"``). The first call
        at each batch shape compiles (tens of seconds on a CPU); later ones run the fused kernels."""
        self._compiled = (self.unet, torch.compile(self.unet, **options))
        return self

    @property
    def _forward(self) -> Callable[..., torch.Tensor]:
        """The compiled UNet if `compile` compiled the current one, else the UNet itself (a UNet assigned
        to ``pipe.unet`` later is used as it is)."""
        if self._compiled is not None and self._compiled[0] is self.unet:
            return self._compiled[1]
        return self.unet

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
        num_inference_steps: int,
        scheduler: str | Scheduler | None = None,
        *,
        strength: float | None = None,
        inpainting: bool = False,
        jump_length: int = DEFAULT_JUMP_LENGTH,
        resample: int = 1,
    ) -> int:
        """NFE per image: how many times sampling with these settings calls the UNet (Heun: 2n - 1). For an
        edit (``strength`` given, or ``inpainting``), the evaluations it runs: img2img skips the first steps,
        RePaint redoes some (``jump_length``, ``resample`` as in `__call__`)."""
        check_repaint(jump_length, resample)
        sampler = self._sampler(scheduler, None)
        sampler.set_timesteps(num_inference_steps)
        return len(self._visit_order(len(sampler.timesteps), strength, inpainting, jump_length, resample))

    @staticmethod
    def _visit_order(
        num_entries: int, strength: float | None, inpainting: bool, jump_length: int, resample: int
    ) -> list[int]:
        """The grid entries a call steps, in order: all of them, the last ones of an img2img edit, or
        RePaint's runs when inpainting; one UNet evaluation each."""
        editing = strength is not None or inpainting
        start = start_index(num_entries, effective_strength(strength, inpainting)) if editing else 0
        return visit_order(start, num_entries, jump_length, resample if inpainting else 1)

    def _sampler(self, scheduler: str | Scheduler | None, eta: float | None) -> Scheduler:
        """The scheduler a call samples with: an object as given, or a fresh one by name (default: ours)."""
        check_eta(eta)
        if isinstance(scheduler, Scheduler):
            if eta is not None:
                raise ValueError("eta is set in the config of a scheduler object; pass a scheduler name to use eta=")
            return scheduler
        if scheduler is not None and not isinstance(scheduler, str):
            raise ValueError(f"scheduler must be a name or a Scheduler, got {type(scheduler).__name__}")
        name = scheduler if scheduler is not None else self.scheduler_name()
        return self.make_scheduler(name, **({} if eta is None else {"eta": float(eta)}))

    def scheduler_name(self, scheduler: Scheduler | None = None) -> str:
        """The name of ``scheduler`` (default: the pipeline's own): the alias its settings match, such as
        ``"dpmsolver++2m-sde"``, else its registered name."""
        return scheduler_name(scheduler or self.scheduler)

    # ----- the model folder (diffusion.io.model_folder) -----

    def save_pretrained(self, path: str | Path, format: Literal["pixel-diffusion", "diffusers"] = FORMAT_NAME) -> None:
        """Write the model folder described in `diffusion.io.model_folder`, or with ``format="diffusers"``
        a folder that ``diffusers.DDPMPipeline.from_pretrained`` loads (`diffusion.io.diffusers_folder`).

        Raises:
            ValueError: for an unknown format, or a model or sampler diffusers cannot express.
        """
        if format == "diffusers":
            registered, _ = resolve_scheduler_name(self.scheduler_name())
            save_diffusers(self.unet, registered, self.scheduler, path, self.class_names)
            return
        if format != FORMAT_NAME:
            raise ValueError(f"unknown format {format!r}; expected {FORMAT_NAME!r} or 'diffusers'")
        write_model_folder(path, self.unet, self.scheduler, self.scheduler_name(), self.class_names)

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
        return cls(*read_model_folder(path)).to(device, dtype)

    # ----- sampling -----

    def generators(self, num_images: int, seed: int | Sequence[int]) -> list[torch.Generator]:
        """One generator per image: image i of a call with seed ``s`` uses seed ``s + i`` (see `seed_list`)."""
        return [torch.Generator().manual_seed(s) for s in seed_list(seed, check_num_images(num_images))]

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
        num_classes = self.unet.config.num_classes
        if num_classes is None:
            raise ValueError("class_labels='random' needs a class-conditional model; this model is unconditional")
        check_num_images(num_images)
        if check_generator(generator) is not None:
            return torch.randint(num_classes, (num_images,), generator=generator, device=generator.device).cpu()
        seeds = seed_list(seed if seed is not None else 0, num_images)
        # One generator at a time: a million of them would hold gigabytes.
        return torch.cat([torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(s)) for s in seeds])

    def _guidance(
        self, labels: torch.Tensor | None, guidance_scale: float | None, guidance_rescale: float
    ) -> float | None:
        """The guidance scale a call uses (None: no guidance), its arguments checked."""
        conditional = self.unet.config.num_classes is not None
        return check_guidance(labels, guidance_scale, guidance_rescale, conditional, DEFAULT_GUIDANCE_SCALE)

    def _predict(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, scale: float | None, rescale: float
    ) -> torch.Tensor:
        """The model output (float32) for ``x`` at ``t``: unconditional (no labels), conditional (scale 1),
        the null class (scale 0), else classifier-free guidance from one batched forward of both branches."""
        n = x.shape[0]
        x = x.to(self.dtype, memory_format=self.memory_format)
        if labels is None or scale == 1:
            return self._forward(x, t.expand(n), labels).float()
        if scale == 0 and rescale == 0:
            return self._forward(x, t.expand(n)).float()  # the null class
        null = torch.full_like(labels, self.unet.config.num_classes)
        x2 = torch.cat([x, x]).contiguous(memory_format=self.memory_format)  # (2n, c, h, w)
        both = self._forward(x2, t.expand(2 * n), torch.cat([null, labels])).float()  # (2n, c, h, w)
        uncond, cond = both.chunk(2)
        return classifier_free_guidance(uncond, cond, scale, rescale)

    # ----- sampling and editing -----

    @torch.inference_mode()
    def __call__(
        self,
        num_images: int = 1,
        num_inference_steps: int = DEFAULT_STEPS,
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
            ``pil``: a list of ``num_images`` PIL images (mode ``L`` or ``RGB``); ``tensor``: float32
            ``(n, c, h, w)`` in [0, 1] on the CPU; ``numpy``: float32 ``(n, h, w, c)`` in [0, 1].

        Args:
            num_images: how many.
            num_inference_steps: sampler steps (model evaluations: `num_model_evaluations`).
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
                when ``class_labels`` are given. Each step then evaluates both branches in one batch.
            guidance_rescale: φ in [0, 1] of guidance rescale (Lin et al. 2024); 0 is off.
            image: the image(s) to edit: a PIL image, a list, or a ``(c, h, w)`` / ``(n, c, h, w)`` tensor
                in [0, 1]; one image serves all ``num_images``. Alone it is img2img (SDEdit).
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
            ValueError: for an argument out of range, a class the model does not know, guidance for an
                unconditional model, a mask of another size than the image, or a sampler that cannot edit.
        """
        check_num_images(num_images)
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        generator = check_generator(generator)
        seeds = seed_list(seed if seed is not None else 0, num_images) if generator is None else None
        check_call_options(output_type, batch_size, callback, progress, jump_length, resample)
        if size is not None:
            size = check_size(size, self.unet.config)
        sampler = self._sampler(scheduler, eta)
        sampler.set_timesteps(num_inference_steps, device=self.device)
        channels = self.unet.config.in_channels
        if image is None and (mask_image is not None or strength is not None):
            raise ValueError("mask_image and strength need an image to edit (image=...)")
        known, mask, start = None, None, 0
        if image is not None:
            strength = effective_strength(strength, inpainting=mask_image is not None)
            edit = prepare_edit(image, mask_image, strength, num_images, size, self.unet.config, sampler)
            known, mask, start = edit.image, edit.mask, edit.start
        if known is not None:
            size = tuple(known.shape[-2:])
        if mask is None and (resample != 1 or jump_length != DEFAULT_JUMP_LENGTH):
            raise ValueError("resample and jump_length are RePaint settings for inpainting: give mask_image too")
        order = self._visit_order(len(sampler.timesteps), strength, mask is not None, jump_length, resample)
        assert not order or order[0] == start
        height, width = size or self.unet.config.sample_size
        shape = (channels, height, width)
        check_num_images(num_images, shape)
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents is not None and tuple(latents.shape) != (num_images, *shape):
            raise ValueError(f"latents must have shape {(num_images, *shape)}, got {tuple(latents.shape)}")
        if latents is not None and not torch.isfinite(latents).all():
            raise ValueError("latents must be finite; they hold NaN or infinite values")
        if isinstance(class_labels, str) and class_labels == RANDOM_CLASSES:
            class_labels = self.random_class_labels(num_images, seeds, generator)
        labels = self.class_label_tensor(class_labels, num_images)
        scale = self._guidance(labels, guidance_scale, guidance_rescale)
        batch_size = check_batch_size(self.unet.config, batch_size, num_images, labels is not None, (height, width))
        # The samplers look timesteps up on the host copy, so the loop never waits for the device.
        host_timesteps = sampler.timesteps.tolist()
        outputs = []
        batches = -(-num_images // batch_size)
        bar = tqdm(total=batches * len(order), disable=not progress, unit="step", desc="sampling")
        for first in range(0, num_images, batch_size):
            n = min(batch_size, num_images - first)
            part = slice(first, first + n)
            gens = self.generators(n, seeds[part]) if seeds is not None else generator
            batch_labels = labels[part].to(self.device) if labels is not None else None
            if latents is not None:
                noise = latents[part].to(device=self.device, dtype=torch.float32)
            else:
                noise = randn_tensor((n, *shape), gens, device=self.device, dtype=torch.float32)
            x0 = known[part].to(self.device) if known is not None else None
            m = mask[part].to(self.device) if mask is not None else None
            # The one loop for every sampler (see diffusion.schedulers.base): σ-space samplers start from
            # noise of std init_noise_sigma and see their sample rescaled; multistep ones carry a state.
            # Editing starts at grid entry `start` from the image noised to that level (editing.py).
            if x0 is None or start == 0:
                sample = noise * sampler.init_noise_sigma
            else:
                alpha, sigma = sampler.noise_level(start)
                sample = alpha * x0 + sigma * noise  # x_0 noised to the first step's level (SDEdit)
            if m is not None:
                sample = paste_known(sample, x0, m, sampler.noise_level(start), noise)
            state, level = (None if start == 0 else sampler.initial_state(start)), start
            for i in order:
                if i != level:  # RePaint: diffuse back up the grid from `level` to `i`, then redo
                    z = randn_tensor(sample.shape, gens, device=self.device, dtype=torch.float32)
                    sample = renoise(sample, sampler.noise_level(level), sampler.noise_level(i), z)
                    state = sampler.initial_state(i)
                t, t_host = sampler.timesteps[i], host_timesteps[i]
                model_input = sampler.scale_model_input(sample, t_host)
                model_output = self._predict(model_input, t, batch_labels, scale, guidance_rescale)
                sample, _, state = sampler.step(model_output, t_host, sample, generator=gens, state=state)
                level = i + 1
                if m is not None:
                    z = randn_tensor(sample.shape, gens, device=self.device, dtype=torch.float32)
                    sample = paste_known(sample, x0, m, sampler.noise_level(level), z)
                bar.update(1)
                if callback is not None:
                    callback(i, t_host, sample)
            if x0 is not None and start == len(sampler.timesteps):
                sample = x0  # strength 0: nothing to redo
            outputs.append((sample / 2 + 0.5).clamp(0, 1).cpu())
        bar.close()
        return self._output(torch.cat(outputs), output_type)  # (num_images, c, h, w) in [0, 1]

    @staticmethod
    def _output(images: torch.Tensor, output_type: OutputType) -> list[Image.Image] | torch.Tensor | np.ndarray:
        if output_type == "tensor":
            return images
        if output_type == "numpy":
            return images.permute(0, 2, 3, 1).numpy()
        return to_pil(images)
