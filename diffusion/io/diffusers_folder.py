"""Reading and writing diffusers pipeline folders (``DDPMPipeline`` and the hub's google/ddpm-* models).

A diffusers folder holds ``model_index.json`` (``_class_name`` such as ``DDPMPipeline``,
``_diffusers_version``), ``unet/config.json`` (a ``UNet2DModel`` config) with
``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``), and ``scheduler/scheduler_config.json``.
The UNet config is translated by `diffusion.models.diffusers_map.unet_config_from_diffusers`, which
refuses what our UNet cannot express; the weights by the explicit name map; the scheduler by its
class name. Nothing is executed: JSON, safetensors, and ``.bin`` only through
``torch.load(weights_only=True)``.

An export adds ``_class_names`` to ``model_index.json`` for a class-conditional model: diffusers skips
``_``-keys when it loads a pipeline (any other key would be taken for a component), and we read the
names back. An export goes to a new or empty folder only, written in a temporary one and moved into
place when complete (`write_folder`), so a refused or failed one leaves nothing behind and nothing that
was there is overwritten.
"""

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..models import UNet
from ..models.diffusers_map import (
    diffusers_defaults,
    diffusers_unet_kwargs,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    unet_config_from_diffusers,
)
from ..schedulers import ALIASES, Scheduler, get_scheduler, registered_name, scheduler_name
from .files import read_json, save_safetensors, write_json

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
# diffusers' multistep schedulers, whose "linspace" and "leading" grids are not ours.
_MULTISTEP_CLASSES = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

logger = logging.getLogger(__name__)


CLASS_NAMES_KEY = "_class_names"  # in an exported model_index.json; diffusers ignores "_" keys
BACKGROUND_KEY = "_background"  # there too, when the model was trained on another background than white


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
    """Our scheduler for a diffusers ``scheduler_config.json`` (its ``_class_name`` picks which). A
    DPM-Solver++ or UniPC one spaced other than "trailing", without Karras σs, loads with a warning: its
    timesteps are not diffusers' (`diffusion.schedulers.config`).

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
    config = scheduler.config
    if class_name in _MULTISTEP_CLASSES and config.timestep_spacing != "trailing" and not config.use_karras_sigmas:
        # diffusers' multistep schedulers space n + 1 points and drop the last; ours space n (schedulers/sigmas.py).
        logger.warning(
            "%s: diffusers' %s spaces %r timesteps over n + 1 points and drops the last, we space n, so our %s "
            'samples other timesteps; set "timestep_spacing": "trailing" there for the ones both take',
            path,
            class_name,
            config.timestep_spacing,
            SCHEDULER_CLASSES[class_name],
        )
    return scheduler


# Our schedulers that diffusers' DDPMPipeline can run as they are: it neither scales the initial noise
# nor the model input, so the σ-space (VE) samplers are left out.
EXPORTABLE = ("ddpm", "ddim", "dpmsolver++", "unipc")
# The sampler a model's default is exported as when diffusers would run the default differently (export
# with another one by name to choose). Each keeps the model's noise schedule and the settings it shares.
NEAREST_EXPORTABLE = {
    # diffusers' third-order SDE step weighs the history differently (see DPMSolverMultistepScheduler.
    # third_order_weight): the same solver and the same noise per step, at second order.
    "dpmsolver++3m-sde": "dpmsolver++2m-sde",
    # DDIM (η = 0) is the Euler step of the same ODE written in x_t instead of x_t/√ᾱ_t (Song et al.
    # 2021, eq. 14; Karras et al. 2022, sec. 4): the same images from the same timesteps.
    "euler": "ddim",
    # An ancestral Euler step in σ has the mean and variance of the DDPM posterior (eq. 7 of Ho et al.
    # 2020; DDIM with η = 1): the same images from the same seeds.
    "euler-ancestral": "ddpm",
    # Heun is second order and deterministic at two model evaluations per step: DPM-Solver++ 2M is the
    # second-order deterministic solver diffusers runs as we do, at one.
    "heun": "dpmsolver++2m",
}
# DDIM and DDPM step on timesteps: a sampler with Karras σs goes to the DPM-Solver++ that keeps them.
_KARRAS_NEAREST = {"ddim": "dpmsolver++2m", "ddpm": "dpmsolver++2m-sde"}
_DIFFUSERS_BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2"}


def _as_sampler(scheduler: Scheduler, target: str) -> Scheduler:
    """Sampler ``target`` (an alias too) with ``scheduler``'s noise schedule and the settings both have."""
    base, fields = ALIASES.get(target, (target, {}))
    names = {f.name for f in dataclasses.fields(get_scheduler(base).config)}
    return get_scheduler(target, {k: v for k, v in scheduler.config.to_dict().items() if k in names} | fields)


def _spacing_refusal(scheduler: Scheduler) -> str | None:
    """Why diffusers would step ``scheduler`` on other timesteps than we do, or None."""
    name, config = registered_name(scheduler), scheduler.config
    way_out = (
        "export it with the ddpm sampler (diffusers runs DDPM on every spacing as we do), or set "
        '"timestep_spacing": "trailing" in the model\'s scheduler/scheduler_config.json'
    )
    if name in ("dpmsolver++", "unipc") and config.timestep_spacing != "trailing" and not config.use_karras_sigmas:
        # diffusers' multistep schedulers space n + 1 points and drop the last (see schedulers/sigmas.py).
        return (
            f"{name} with timestep_spacing={config.timestep_spacing!r} steps on other timesteps in diffusers; {way_out}"
        )
    if name == "ddim" and config.timestep_spacing == "linspace":
        # diffusers' DDIM steps from t to t - T//n, which is the previous "linspace" timestep for no n.
        return f"ddim with timestep_spacing='linspace' steps differently in diffusers; {way_out}"
    return None


def nearest_exportable(scheduler: Scheduler) -> Scheduler:
    """``scheduler`` itself, or the sampler diffusers runs as we do that an export takes instead: the
    `NEAREST_EXPORTABLE` one (one with Karras σs keeps them), and DDPM where diffusers would step that
    one's timestep spacing differently (diffusers' DDPM looks each previous timestep up, as ours does, so
    it runs every spacing as we do). The same noise schedule and the settings both have either way."""
    target = NEAREST_EXPORTABLE.get(scheduler_name(scheduler))
    picked = scheduler
    if target is not None:
        if scheduler.config.to_dict().get("use_karras_sigmas"):
            target = _KARRAS_NEAREST.get(target, target)
        picked = _as_sampler(scheduler, target)
    if _spacing_refusal(picked) is not None:
        picked = _as_sampler(scheduler, "ddpm")
    return picked


def diffusers_scheduler_config(name: str, scheduler: Scheduler) -> dict[str, Any]:
    """The diffusers ``scheduler_config.json`` of one of our schedulers (registered name ``name``).

    Raises:
        ValueError: for a scheduler or a setting the diffusers class would run differently.
    """
    import diffusers

    label = scheduler_name(scheduler)
    if name not in EXPORTABLE:
        nearest = NEAREST_EXPORTABLE.get(label)
        hint = f" ({nearest} is the nearest)" if nearest else ""
        raise ValueError(
            f"the {label} sampler cannot be exported: diffusers' DDPMPipeline does not scale noise and inputs "
            f"for it; export with one of {', '.join(EXPORTABLE)} instead{hint}"
        )
    class_name = next(c for c, n in SCHEDULER_CLASSES.items() if n == name)
    config = scheduler.config
    if (why := _spacing_refusal(scheduler)) is not None:
        raise ValueError(why)
    if name == "dpmsolver++" and config.solver_order == 3 and config.algorithm_type == "sde-dpmsolver++":
        raise ValueError(
            "diffusers' third-order SDE DPM-Solver++ differs from ours; export dpmsolver++2m-sde (the nearest) or 3m"
        )
    if name == "unipc" and config.solver_type == "bh1":
        raise ValueError("diffusers' UniPC with solver_type='bh1' returns NaN at its last step; export it with 'bh2'")
    theirs = diffusers_defaults(class_name)
    ours = type(config)()
    settings = config.to_dict()
    for key, value in settings.items():
        if key not in theirs and value != getattr(ours, key):
            raise ValueError(f"diffusers' {class_name} has no setting {key}; it would ignore {key}={value!r}")
    settings = {k: v for k, v in settings.items() if k in theirs}
    settings["beta_schedule"] = _DIFFUSERS_BETA_SCHEDULES.get(config.beta_schedule, config.beta_schedule)
    return {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **settings}


def save_diffusers(
    unet: UNet,
    name: str,
    scheduler: Scheduler,
    path: str | Path,
    class_names: Sequence[str] = (),
    *,
    nearest: bool = True,
    background: str = "white",
) -> str:
    """Write a folder that ``diffusers.DDPMPipeline.from_pretrained`` loads, and this package too, at a
    new or empty ``path`` (`write_folder`). Returns the name of the sampler exported.

    Args:
        name: ``scheduler``'s registered name (`SCHEDULERS`).
        class_names: stored as ``_class_names`` in ``model_index.json`` for `read_model_folder`.
        background: what training composited transparency on; stored as ``_background`` when not white.
        nearest: export a sampler diffusers would run differently as the one `nearest_exportable` picks,
            with a warning; if False, it is refused.

    Raises:
        ValueError: ``path`` holds files; a UNet ``UNet2DModel`` cannot express (a guidance-distilled one
            among them) or a scheduler diffusers would run differently (see `diffusers_scheduler_config`).
            Nothing is written then.
    """
    import diffusers

    assert name == registered_name(scheduler), (name, scheduler)
    check_new_folder(path)  # before any work
    if unet.config.guidance_embedding:
        raise ValueError(
            "a guidance-distilled model takes the guidance scale as an input, which diffusers' UNet2DModel has no "
            "place for; it cannot be exported to diffusers (save it as a pixel-diffusion model folder)"
        )
    if nearest:
        scheduler, name = _nearest_with_warning(scheduler, name)
    unet_settings = diffusers_unet_kwargs(unet.config)  # raises before anything is written
    scheduler_settings = diffusers_scheduler_config(name, scheduler)
    state = {k: v.contiguous() for k, v in to_diffusers_state_dict(unet.state_dict(), unet.config).items()}
    version = diffusers.__version__
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": version,
        "scheduler": ["diffusers", scheduler_settings["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    }
    if class_names:
        index[CLASS_NAMES_KEY] = list(class_names)
    if background != "white":
        index[BACKGROUND_KEY] = background

    def write(folder: Path) -> None:
        (folder / "unet").mkdir()
        (folder / "scheduler").mkdir()
        unet_config = {"_class_name": "UNet2DModel", "_diffusers_version": version, **unet_settings}
        write_json(folder / "unet" / "config.json", unet_config)
        save_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", state)
        write_json(folder / "scheduler" / "scheduler_config.json", scheduler_settings)
        write_json(folder / "model_index.json", index)

    write_folder(path, write)
    _warn_what_the_pipeline_cannot_run(unet, name)
    return scheduler_name(scheduler)


def _nearest_with_warning(scheduler: Scheduler, name: str) -> tuple[Scheduler, str]:
    """`nearest_exportable` of ``scheduler`` and its registered name, with a warning when that is another."""
    picked = nearest_exportable(scheduler)
    if picked is scheduler:
        return scheduler, name
    label = scheduler_name(scheduler)
    if registered_name(picked) == "ddpm" and NEAREST_EXPORTABLE.get(label) != "ddpm":
        label += f" with timestep_spacing={scheduler.config.timestep_spacing!r}"
    logger.warning(
        "diffusers runs the %s sampler differently: exporting %s, the nearest one it runs as we do "
        "(export another by name to choose)",
        label,
        scheduler_name(picked),
    )
    return picked, registered_name(picked)


def _warn_what_the_pipeline_cannot_run(unet: UNet, name: str) -> None:
    """Warn that an exported folder needs a loop of one's own: for class labels, or for UniPC."""
    if unet.config.num_classes:
        logger.warning(
            "the model is class-conditional: diffusers' DDPMPipeline passes no class labels, so call the "
            "UNet2DModel with class_labels (0..%d, and %d for the unconditional null class) in your own loop",
            unet.config.num_classes - 1,
            unet.config.num_classes,
        )
    if name == "unipc":
        logger.warning(
            "diffusers' DDPMPipeline cannot call UniPCMultistepScheduler (its step takes no generator): the "
            "folder loads, and its unet and scheduler sample as ours in your own loop"
        )


def check_new_folder(path: str | Path, name: str | None = None) -> None:
    """Refuse a ``path`` that `write_folder` would not write to; ``name`` stands for it in the message
    (a command's ``--out PATH``).

    Raises:
        ValueError: ``path`` holds files.
        NotADirectoryError: ``path`` is a file.
        FileNotFoundError: ``path`` is a link to nothing.
    """
    path = Path(path)
    name = name or str(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{name} is a link to {os.readlink(path)}, which does not exist")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} is a file; give a folder to write the model to")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{name} already holds files; give a new or empty folder (nothing is overwritten)")


def write_folder(path: str | Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary folder, then move what it wrote to ``path``, a new or empty folder:
    nothing that is there is overwritten or deleted.

    A missing ``path`` is the temporary folder, made beside it, renamed. An empty one (a mount point, a
    link to a folder elsewhere) gets the entries of a temporary folder made inside it, on its own file
    system, renamed up one by one, ``model_index.json`` last. If ``write`` or a rename fails (a refused
    setting, a full disk, Ctrl-C), the entries placed, the temporary folder and any parent folder made
    for it are removed: ``path`` is as it was.

    Raises:
        ValueError, NotADirectoryError, FileNotFoundError: see `check_new_folder`.
    """
    path = Path(path)
    check_new_folder(path)
    if path.is_dir():
        _write_into_empty(path, write)
        return
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()][::-1]  # outermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_folder(path.parent, f".{path.name}.tmp-")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
                folder.rmdir()
        raise


def _write_into_empty(path: Path, write: Callable[[Path], None]) -> None:
    """`write_folder` into the empty folder ``path``: what it placed is removed again on any failure."""
    tmp = _temporary_folder(path, ".tmp-")
    placed: list[Path] = []
    try:
        write(tmp)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):  # the index last
            target = path / entry.name
            if os.path.lexists(target):  # written by someone else meanwhile: never replaced
                raise ValueError(f"{target} appeared while the model was written to {path}; nothing was replaced")
            os.replace(entry, target)
            placed.append(target)
        tmp.rmdir()
    except BaseException:
        for target in placed:  # only what this call put there
            with contextlib.suppress(OSError):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temporary_folder(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` with the mode mkdir would give it (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp
