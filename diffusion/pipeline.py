"""`DiffusionPipeline`: a UNet and a scheduler, the one sampling loop, and the model folder format.

A model folder (written by `save_pretrained`, read by `from_pretrained`) follows diffusers' pipeline
layout so that it can grow into a diffusers export::

    model_index.json              format name and version, component classes, default sampler, class names
    unet/config.json              UNetConfig fields
    unet/model.safetensors        weights (the EMA weights for a trained model)
    scheduler/scheduler_config.json  the noise schedule and the default sampler's settings

Nothing in it is executed on load: JSON and safetensors only.
"""

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .fileio import read_json, write_json
from .image import to_pil
from .interop import is_diffusers_folder, load_diffusers_scheduler, load_diffusers_unet, save_diffusers
from .models import UNet
from .schedulers import ALIASES, SCHEDULERS, Scheduler, SchedulerConfig, get_scheduler, resolve_scheduler_name
from .schedulers.base import randn_tensor

logger = logging.getLogger(__name__)

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist"
FORMAT_NAME = "pixel-diffusion"
FORMAT_VERSION = 1
OutputType = Literal["pil", "tensor", "numpy"]
# Default sampler steps: with 20 steps, DPM-Solver++ 3M SDE (the default sampler of the models we train)
# had the best quality of any sampler at 20 model evaluations on the shipped model, FD@2000 0.826
# against DDPM-1000's 0.684 and DDIM-100's 1.584 (docs/benchmarks.md, "Quality against sampling cost").
DEFAULT_STEPS = 20


class DiffusionPipeline:
    """Turns Gaussian noise into images with ``unet`` and ``scheduler``.

    Attributes:
        unet: the noise predictor.
        scheduler: the default sampler; any other is one argument away (``scheduler="ddpm"``).
        class_names: the training folder's class names, if any.
    """

    def __init__(self, unet: UNet, scheduler: Scheduler, class_names: Sequence[str] = ()) -> None:
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.class_names = list(class_names)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> "DiffusionPipeline":
        """Move the UNet to a device and/or cast it to a dtype: ``to("cuda")``, ``to(torch.bfloat16)``,
        ``to("cpu", torch.float32)``. Sampling math stays in float32 whatever the UNet's dtype."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        self.unet.to(device=device, dtype=dtype)
        return self

    def make_scheduler(self, name: str, **overrides: Any) -> Scheduler:
        """A fresh scheduler ``name`` with this model's noise schedule and prediction type.

        ``name`` is one of `SCHEDULER_NAMES` (an alias such as ``"dpmsolver++3m"`` sets its fields);
        ``overrides`` set fields of that scheduler's config, e.g. ``eta=0.5`` for DDIM or
        ``use_karras_sigmas=True`` for the σ-space samplers. The pipeline's own sampler settings carry
        over only to a scheduler of the same class: another class gets the shared `SchedulerConfig`
        fields (schedule, prediction type, spacing, x̂_0 processing) and its own defaults otherwise.
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
        unknown = sorted(set(overrides) - set(scheduler.config.to_dict()))
        if unknown:
            raise ValueError(f"the {name} scheduler has no setting {', '.join(unknown)}")
        return get_scheduler(name, scheduler.config.to_dict() | overrides)

    def num_model_evaluations(self, num_inference_steps: int, scheduler: str | Scheduler | None = None) -> int:
        """NFE per image: how many times sampling with these settings calls the UNet (Heun: 2n - 1)."""
        sampler = self._sampler(scheduler, None)
        sampler.set_timesteps(num_inference_steps)
        return len(sampler.timesteps)

    def _sampler(self, scheduler: str | Scheduler | None, eta: float | None) -> Scheduler:
        """The scheduler a call samples with: an object as given, or a fresh one by name (default: ours)."""
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
        scheduler = scheduler or self.scheduler
        name = next(n for n, cls in SCHEDULERS.items() if type(scheduler) is cls)
        settings = scheduler.config.to_dict()
        for alias, (base, fields) in ALIASES.items():
            if base == name and all(settings[k] == v for k, v in fields.items()):
                return alias
        return name

    # ----- the model folder -----

    def save_pretrained(self, path: str | Path, format: Literal["pixel-diffusion", "diffusers"] = FORMAT_NAME) -> None:
        """Write the model folder described in the module docstring, or with ``format="diffusers"`` a
        folder that ``diffusers.DDPMPipeline.from_pretrained`` loads (see `diffusion.interop.save_diffusers`).

        Raises:
            ValueError: for an unknown format, or a model or sampler diffusers cannot express.
        """
        if format == "diffusers":
            registered, _ = resolve_scheduler_name(self.scheduler_name())
            save_diffusers(self.unet, registered, self.scheduler, path)
            return
        if format != FORMAT_NAME:
            raise ValueError(f"unknown format {format!r}; expected {FORMAT_NAME!r} or 'diffusers'")
        path = Path(path)
        (path / "scheduler").mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        name = self.scheduler_name()
        write_json(
            path / "scheduler" / "scheduler_config.json",
            {"_class_name": type(self.scheduler).__name__, **self.scheduler.config.to_dict()},
        )
        index = {
            "_class_name": "DiffusionPipeline",
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "unet": ["diffusion", "UNet"],
            "scheduler": ["diffusion", type(self.scheduler).__name__],
            "default_scheduler": name,
            "class_names": self.class_names,
        }
        write_json(path / "model_index.json", index)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "DiffusionPipeline":
        """Load a model folder written by `save_pretrained`, or a diffusers pipeline folder (see
        `diffusion.interop`), with no flags and no code execution.

        Args:
            path: the folder; None loads the Fashion-MNIST model shipped in ``assets/``.
            device: where to put the UNet (default: the CPU).
            dtype: the UNet's dtype (default: as stored, float32).

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            ValueError: the folder is not a model, or its files disagree with each other.
        """
        if path is None:
            if not SHIPPED_MODEL.is_dir():
                raise FileNotFoundError(
                    f"the shipped model is not at {SHIPPED_MODEL}; it comes with a source checkout "
                    "(pip install -e .); otherwise pass the path of a trained model"
                )
            path = SHIPPED_MODEL
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} not found")
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a model folder (no model_index.json)")
        index = read_json(path / "model_index.json")
        if is_diffusers_folder(index):  # a diffusers DDPMPipeline / DDIMPipeline folder
            unet = load_diffusers_unet(path / "unet")
            scheduler = load_diffusers_scheduler(path / "scheduler" / "scheduler_config.json")
            return cls(unet, scheduler).to(device, dtype)
        if index.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}/model_index.json is not a {FORMAT_NAME} model index")
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {index.get('format_version')!r}; this version of "
                f"pixel-diffusion reads version {FORMAT_VERSION}"
            )
        unet = UNet.from_pretrained(path / "unet")
        scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
        scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        scheduler = get_scheduler(index.get("default_scheduler", "dpmsolver++"), scheduler_config)
        return cls(unet, scheduler, index.get("class_names", [])).to(device, dtype)

    # ----- sampling -----

    def generators(self, num_images: int, seed: int | Sequence[int]) -> list[torch.Generator]:
        """One generator per image: image i of a call with seed ``s`` uses seed ``s + i``."""
        seeds = [seed + i for i in range(num_images)] if isinstance(seed, int) else list(seed)
        if len(seeds) != num_images:
            raise ValueError(f"got {len(seeds)} seeds for {num_images} images; give one seed per image")
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

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
        output_type: OutputType = "pil",
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """Generate ``num_images`` images.

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
            size: (height, width); None means the model's ``sample_size``.
            output_type: ``pil`` (list of images), ``tensor`` (``(n, c, h, w)`` float32 in [0, 1] on the
                CPU) or ``numpy`` (``(n, h, w, c)`` float32 in [0, 1]).
            progress: show a tqdm bar over the steps.
            callback: called as ``callback(step_index, timestep, sample)`` after each model evaluation;
                ``timestep`` is an int, or a float for samplers with fractional timesteps.
        """
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if output_type not in ("pil", "tensor", "numpy"):
            raise ValueError(f"unknown output_type {output_type!r}; expected one of 'pil', 'tensor', 'numpy'")
        bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        if batch_size is not None and bad_batch:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if eta is not None and not (isinstance(eta, int | float) and eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        sampler = self._sampler(scheduler, eta)
        sampler.set_timesteps(num_inference_steps, device=self.device)
        batch_size = batch_size or num_images
        generators = self.generators(num_images, seed if seed is not None else 0) if generator is None else None
        height, width = size or self.unet.config.sample_size
        shape = (self.unet.config.in_channels, height, width)
        outputs = []
        batches = -(-num_images // batch_size)
        bar = tqdm(total=batches * len(sampler.timesteps), disable=not progress, unit="step", desc="sampling")
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            gens = generators[start : start + n] if generators is not None else generator
            # The one loop for every sampler (see diffusion.schedulers.base): σ-space samplers start from
            # noise of std init_noise_sigma and see their sample rescaled; multistep ones carry a state.
            sample = randn_tensor((n, *shape), gens, device=self.device, dtype=torch.float32)
            sample, state = sample * sampler.init_noise_sigma, None
            for i, t in enumerate(sampler.timesteps):
                model_input = sampler.scale_model_input(sample, t)
                model_output = self.unet(model_input.to(self.dtype), t.expand(n)).float()
                sample, _, state = sampler.step(model_output, t, sample, generator=gens, state=state)
                bar.update(1)
                if callback is not None:
                    callback(i, t.item(), sample)
            outputs.append((sample / 2 + 0.5).clamp(0, 1).cpu())
        bar.close()
        images = torch.cat(outputs)  # (num_images, c, h, w) in [0, 1]
        if output_type == "tensor":
            return images
        if output_type == "numpy":
            return images.permute(0, 2, 3, 1).numpy()
        return to_pil(images)
