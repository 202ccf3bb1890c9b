"""The model folder: what `DiffusionPipeline.save_pretrained` writes and `from_pretrained` reads.

It follows diffusers' pipeline layout so that it can grow into a diffusers export::

    model_index.json              format name and version, component classes, default sampler, class names
    unet/config.json              UNetConfig fields (num_classes for a class-conditional model)
    unet/model.safetensors        weights (the EMA weights for a trained model)
    scheduler/scheduler_config.json  the noise schedule and the default sampler's settings
    manifest.json                 size and SHA-256 of the weights, checked on every load

Nothing in it is executed on load: JSON and safetensors only. A diffusers pipeline folder is read too
(`diffusion.interop`). A folder without a manifest (written before manifests existed) loads unchecked.
The JSON files are left out of the manifest on purpose: they are meant to be read and edited by hand
(class names, the default sampler), and a damaged one fails to parse with a clear message anyway.
"""

from pathlib import Path
from typing import Any

from .fileio import CorruptFolderError, read_json, verify_manifest, write_json, write_manifest
from .interop import CLASS_NAMES_KEY, is_diffusers_folder, load_diffusers_scheduler, load_diffusers_unet
from .models import UNet
from .models.persistence import WEIGHTS_NAME
from .schedulers import Scheduler, get_scheduler

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist"
FORMAT_NAME = "pixel-diffusion"
FORMAT_VERSION = 1


def write_model_folder(
    path: str | Path, unet: UNet, scheduler: Scheduler, scheduler_name: str, class_names: list[str]
) -> None:
    """Write the folder; ``scheduler_name`` is the default sampler's name (an alias where one matches)."""
    path = Path(path)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    write_json(
        path / "scheduler" / "scheduler_config.json",
        {"_class_name": type(scheduler).__name__, **scheduler.config.to_dict()},
    )
    index = {
        "_class_name": "DiffusionPipeline",
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "unet": ["diffusion", "UNet"],
        "scheduler": ["diffusion", type(scheduler).__name__],
        "default_scheduler": scheduler_name,
        "class_names": class_names,
    }
    write_json(path / "model_index.json", index)
    write_manifest(path, [f"unet/{WEIGHTS_NAME}"])


def read_model_folder(path: str | Path | None) -> tuple[UNet, Scheduler, list[str]]:
    """(UNet, default scheduler, class names) of a model folder; None is the shipped model.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        CorruptFolderError: a file differs from the folder's manifest (truncated, changed).
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
        return unet, scheduler, _class_names(index, CLASS_NAMES_KEY, path / "model_index.json")
    if index.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}/model_index.json is not a {FORMAT_NAME} model index")
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {index.get('format_version')!r}; this version of "
            f"pixel-diffusion reads version {FORMAT_VERSION}"
        )
    try:
        verify_manifest(path)
    except CorruptFolderError as e:
        raise CorruptFolderError(
            f"model folder {path} is damaged: {e}. Copy it again, or rewrite it from the run's last checkpoint "
            "(the same train.py command with --resume auto)"
        ) from None
    unet = UNet.from_pretrained(path / "unet")
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = get_scheduler(index.get("default_scheduler", "dpmsolver++"), scheduler_config)
    return unet, scheduler, _class_names(index, "class_names", path / "model_index.json")


def _class_names(data: dict[str, Any], key: str, where: Path) -> list[str]:
    """``data[key]`` (absent: none), checked to be a list of names; ``where`` is the file, for the error."""
    names = data.get(key, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{where}: {key} must be a list of names, got {names!r}")
    return names
