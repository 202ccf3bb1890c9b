"""Reading diffusers pipeline folders (``DDPMPipeline.save_pretrained`` and the hub's google/ddpm-* models).

A diffusers folder holds ``model_index.json`` (``_class_name`` such as ``DDPMPipeline``,
``_diffusers_version``), ``unet/config.json`` (a ``UNet2DModel`` config) with
``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``), and ``scheduler/scheduler_config.json``.
The UNet config is translated by `diffusion.models.diffusers_map.unet_config_from_diffusers`, which
refuses what our UNet cannot express; the weights by the explicit name map; the scheduler by its
class name. Nothing is executed: JSON, safetensors, and ``.bin`` only through
``torch.load(weights_only=True)``.
"""

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .fileio import read_json
from .models import UNet
from .models.diffusers_map import from_diffusers_state_dict, unet_config_from_diffusers
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
    return get_scheduler(SCHEDULER_CLASSES[class_name], settings)
