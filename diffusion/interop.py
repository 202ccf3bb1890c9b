"""Reading and writing diffusers pipeline folders (``DDPMPipeline`` and the hub's google/ddpm-* models).

A diffusers folder holds ``model_index.json`` (``_class_name`` such as ``DDPMPipeline``,
``_diffusers_version``), ``unet/config.json`` (a ``UNet2DModel`` config) with
``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``), and ``scheduler/scheduler_config.json``.
The UNet config is translated by `diffusion.models.diffusers_map.unet_config_from_diffusers`, which
refuses what our UNet cannot express; the weights by the explicit name map; the scheduler by its
class name. Nothing is executed: JSON, safetensors, and ``.bin`` only through
``torch.load(weights_only=True)``.
"""

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .fileio import atomic_write, read_json, write_json
from .models import UNet
from .models.diffusers_map import (
    diffusers_defaults,
    diffusers_unet_kwargs,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    unet_config_from_diffusers,
)
from .schedulers import Scheduler, get_scheduler

# diffusers scheduler class -> our scheduler name.
SCHEDULER_CLASSES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpmsolver++",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-ancestral",
    "HeunDiscreteScheduler": "heun",
    "UniPCMultistepScheduler": "unipc",
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

logger = logging.getLogger(__name__)


def is_diffusers_folder(index: dict[str, Any]) -> bool:
    """Whether a parsed ``model_index.json`` is diffusers' (it names a diffusers version)."""
    return "_diffusers_version" in index


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return load_file(path)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
            except pickle.UnpicklingError as e:
                raise ValueError(
                    f"{path} holds more than tensors and was not loaded: {str(e).splitlines()[0]}"
                ) from None
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a state dict")
            return state
    raise FileNotFoundError(f"{folder} has no UNet weights: expected one of {', '.join(WEIGHT_FILES)}")


def load_diffusers_unet(folder: str | Path) -> UNet:
    """Our `UNet` with the weights of a diffusers ``UNet2DModel`` folder (``config.json`` + weights).

    Raises:
        FileNotFoundError: a missing config or weights file.
        ValueError: a config our UNet cannot express (the message names the setting), or weights
            that do not fit the config.
    """
    folder = Path(folder)
    settings = read_json(folder / "config.json")
    if settings.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{folder}/config.json describes a {settings['_class_name']}; only UNet2DModel is supported")
    config = unet_config_from_diffusers(settings)
    state = from_diffusers_state_dict(_read_weights(folder), config)
    unet = UNet(config)
    unet.load_state_dict(state)
    return unet


def load_diffusers_scheduler(path: str | Path) -> Scheduler:
    """Our scheduler for a diffusers ``scheduler_config.json`` (its ``_class_name`` picks which).

    Raises:
        ValueError: an unsupported scheduler class or setting.
    """
    settings = read_json(path)
    class_name = settings.get("_class_name")
    if class_name not in SCHEDULER_CLASSES:
        raise ValueError(
            f"{path}: unsupported diffusers scheduler {class_name!r}; supported: {', '.join(SCHEDULER_CLASSES)}"
        )
    scheduler = get_scheduler(SCHEDULER_CLASSES[class_name], settings)
    # Settings we do not model are fine at diffusers' default, which is what we implement; any other
    # value would be silently ignored, so it is refused.
    defaults = diffusers_defaults(class_name)
    ours = scheduler.config.to_dict()
    for key, value in settings.items():
        if key.startswith("_") or key in ours or key not in defaults or key == "trained_betas":
            continue
        if value != defaults[key] and not (isinstance(value, list) and list(defaults[key] or []) == value):
            raise ValueError(
                f"{path}: unsupported diffusers {class_name} setting {key}={value!r} "
                f"(we implement {key}={defaults[key]!r})"
            )
    return scheduler


# Our schedulers that diffusers' DDPMPipeline can run as they are: it neither scales the initial noise
# nor the model input, so the σ-space (VE) samplers are left out.
EXPORTABLE = ("ddpm", "ddim", "dpmsolver++", "unipc")
_DIFFUSERS_BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2"}


def diffusers_scheduler_config(name: str, scheduler: Scheduler) -> dict[str, Any]:
    """The diffusers ``scheduler_config.json`` of one of our schedulers (registered name ``name``).

    Raises:
        ValueError: for a scheduler or a setting the diffusers class would run differently.
    """
    import diffusers

    if name not in EXPORTABLE:
        raise ValueError(
            f"the {name} sampler cannot be exported: diffusers' DDPMPipeline does not scale noise and inputs "
            f"for it; export with one of {', '.join(EXPORTABLE)} instead"
        )
    class_name = next(c for c, n in SCHEDULER_CLASSES.items() if n == name)
    config = scheduler.config
    if name in ("dpmsolver++", "unipc") and config.timestep_spacing != "trailing" and not config.use_karras_sigmas:
        raise ValueError(
            f"{name} with timestep_spacing={config.timestep_spacing!r} steps on other timesteps in diffusers; "
            "export it with 'trailing' spacing or Karras sigmas"
        )
    if name == "dpmsolver++" and config.solver_order == 3 and config.algorithm_type == "sde-dpmsolver++":
        raise ValueError("diffusers' third-order SDE DPM-Solver++ differs from ours; export dpmsolver++2m-sde or 3m")
    theirs = diffusers_defaults(class_name)
    ours = type(config)()
    settings = config.to_dict()
    for key, value in settings.items():
        if key not in theirs and value != getattr(ours, key):
            raise ValueError(f"diffusers' {class_name} has no setting {key}; it would ignore {key}={value!r}")
    settings = {k: v for k, v in settings.items() if k in theirs}
    settings["beta_schedule"] = _DIFFUSERS_BETA_SCHEDULES.get(config.beta_schedule, config.beta_schedule)
    return {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **settings}


def save_diffusers(unet: UNet, name: str, scheduler: Scheduler, path: str | Path) -> None:
    """Write a folder that ``diffusers.DDPMPipeline.from_pretrained`` loads, and this package too.

    Raises:
        ValueError: for a UNet ``UNet2DModel`` cannot express or a scheduler diffusers would run
            differently (see `diffusers_scheduler_config`); nothing is written then.
    """
    import diffusers

    unet_settings = diffusers_unet_kwargs(unet.config)  # raises before anything is written
    scheduler_settings = diffusers_scheduler_config(name, scheduler)
    state = {k: v.contiguous() for k, v in to_diffusers_state_dict(unet.state_dict(), unet.config).items()}
    path = Path(path)
    (path / "unet").mkdir(parents=True, exist_ok=True)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    version = diffusers.__version__
    write_json(
        path / "unet" / "config.json", {"_class_name": "UNet2DModel", "_diffusers_version": version, **unet_settings}
    )
    atomic_write(path / "unet" / "diffusion_pytorch_model.safetensors", lambda f: save_file(state, f))
    write_json(path / "scheduler" / "scheduler_config.json", scheduler_settings)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": version,
        "scheduler": ["diffusers", scheduler_settings["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    }
    write_json(path / "model_index.json", index)
    if unet.config.num_classes:
        logger.warning(
            "the model is class-conditional: diffusers' DDPMPipeline passes no class labels, so call the "
            "UNet2DModel with class_labels (0..%d, and %d for the unconditional null class) in your own loop",
            unet.config.num_classes - 1,
            unet.config.num_classes,
        )
