"""How one network's folder is written and read: ``config.json`` + ``model.safetensors``, never pickle.

``config.json`` holds the model's config fields plus ``_class_name`` (as diffusers' configs do), so a
folder says what it contains. Weights are checked by name and shape before loading, and every
problem is a one-line ``FileNotFoundError`` or ``ValueError``.
"""

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .files import read_json, save_safetensors, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_model(module: nn.Module, directory: str | Path, class_name: str, config: dict[str, Any]) -> None:
    """Write ``config.json`` (``config`` plus ``_class_name``) and ``model.safetensors``, each atomically."""
    save_weights(module, directory)
    write_json(Path(directory) / CONFIG_NAME, {"_class_name": class_name, **config})


def save_weights(module: nn.Module, directory: str | Path, name: str = WEIGHTS_NAME) -> None:
    """Write ``directory/name`` (``model.safetensors``) atomically (the folder is created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_safetensors(directory / name, state, metadata={"format": "pt"})


def read_model_config(directory: str | Path, class_name: str, what: str) -> dict[str, Any]:
    """The config fields in ``directory/config.json`` (``_``-keys dropped), checked to be a ``class_name``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory {directory} not found")
    data = read_json(directory / CONFIG_NAME)
    if data.get("_class_name") != class_name:
        raise ValueError(f"{directory / CONFIG_NAME} is not a pixel-diffusion {class_name} config")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def read_safetensors(path: str | Path, missing: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing (``missing`` says what that means) or unreadable file
    is a one-line `FileNotFoundError` / `ValueError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{missing}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def load_weights(module: nn.Module, directory: str | Path, what: str) -> None:
    """Load ``directory/model.safetensors`` into ``module`` after checking every name and shape."""
    load_checked(module, read_safetensors(Path(directory) / WEIGHTS_NAME), what)


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict, refusing missing, unexpected or wrongly shaped tensors by name."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not match the {what} config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, want in expected.items():
        if state[name].shape != want.shape:
            found = tuple(state[name].shape)
            raise ValueError(f"weight {name} has shape {found} but the config needs {tuple(want.shape)}")
    module.load_state_dict(state)
