"""The model folder: what `DiffusionPipeline.save_pretrained` writes and `from_pretrained` reads.

It follows diffusers' pipeline layout so that it can grow into a diffusers export::

    model_index.json              format name and version, component classes, default sampler, class names,
                                  the background training composited transparency on (absent: white), and
                                  for a distilled model its `SamplingRecord` as "sampling" (absent: none)
    unet/config.json              UNetConfig fields (num_classes for a class-conditional model)
    unet/model.safetensors        weights (the EMA weights for a trained model; a distilled model's student
                                  for its default step count)
    unet/model-{N}steps.safetensors  a distilled model's student for each other trained step count N (same
                                  config.json)
    scheduler/scheduler_config.json  the noise schedule and the default sampler's settings
    manifest.json                 size and SHA-256 of the weights, checked on every load

Nothing in it is executed on load: JSON and safetensors only. A folder without a manifest loads
unchecked. The JSON files are left out of the manifest on purpose: they are meant to be read and edited
by hand (class names, the default sampler), and a damaged one fails to parse with a clear message anyway.

`read_model_folder` reads three other things as models too:

- a diffusers pipeline folder (`diffusion.io.diffusers_folder`);
- a training checkpoint ``OUT/checkpoints/step-N`` (`diffusion.io.checkpoint`): its EMA weights, the run's
  default sampler and class names, which is the model folder the run would write at that step;
- a Hugging Face Hub id (``owner/name``) that names no local folder, and whose ``owner`` is no local
  folder either (``runs/x`` beside ``runs/`` is a missing local folder): downloaded into the Hugging Face
  cache (configs and weights only), or found there when offline (``HF_HUB_OFFLINE=1``) or when the
  download fails (`hub_snapshot`).
"""

import contextlib
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from ..image import Background
from ..models import UNet, UNetConfig
from ..schedulers import Scheduler, get_scheduler
from .assets import ASSETS
from .checkpoint import check_checkpoint, read_state
from .diffusers_folder import (
    BACKGROUND_KEY,
    CLASS_NAMES_KEY,
    is_diffusers_folder,
    load_diffusers_scheduler,
    load_diffusers_unet,
)
from .files import CorruptFolderError, read_json, verify_manifest, write_json, write_manifest
from .sampling_record import SamplingRecord
from .weights import WEIGHTS_NAME, load_checked, read_safetensors, save_weights

# The shipped models (`diffusion.io.assets`: package data of a wheel, or assets/ of a source checkout), by
# the name that `from_pretrained` and ``--model`` take (a local folder of the same name comes first); the
# first one is the default.
SHIPPED_MODELS = {
    "fashion-mnist": ASSETS / "fashion-mnist",
    "noto-emoji": ASSETS / "noto-emoji",
    "fashion-mnist-fast": ASSETS / "fashion-mnist-fast",  # fashion-mnist distilled to 1, 2 or 4 steps
}
SHIPPED_MODEL = SHIPPED_MODELS["fashion-mnist"]
FORMAT_NAME = "pixel-diffusion"
FORMAT_VERSION = 1
# The default sampler of a training run (`run_sampler`): the trainer's sample grids and final model use
# it, and a checkpoint is read with it.
CHECKPOINT_SAMPLER = "dpmsolver++3m-sde"
# A Hugging Face Hub repo id: owner/name, letters, digits and - _ . (huggingface_hub's own rule).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# The files of a model on the hub, by exact name: a pattern such as unet/*.safetensors would fetch variants
# (*.fp16.safetensors) too. Either format's weights, and diffusers' .bin ones only when there are neither.
_HUB_FILES = [
    "model_index.json",
    "manifest.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
    "unet/diffusion_pytorch_model.safetensors",
    f"unet/{WEIGHTS_NAME}",
]
_HUB_STEP_WEIGHTS = "unet/model-*steps.safetensors"  # a distilled model's other students (`step_weights_name`)
_HUB_BIN_WEIGHTS = "unet/diffusion_pytorch_model.bin"


def step_weights_name(num_inference_steps: int) -> str:
    """The weights file in ``unet/`` of a distilled model's student for a step count other than its default."""
    return f"model-{num_inference_steps}steps.safetensors"


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder holds, as `read_model` reads it."""

    unet: UNet  # the default UNet (a distilled model's student for its default step count)
    scheduler: Scheduler  # the default sampler
    class_names: list[str]
    background: Background  # what training composited transparency on
    sampling: SamplingRecord | None = None  # a distilled model's step counts and guidance range
    step_unets: dict[int, UNet] = field(default_factory=dict)  # a distilled model's other students, by step count


def check_step_unets(
    unet: UNet, sampling: SamplingRecord | None, step_unets: Mapping[int, UNet] | None
) -> dict[int, UNet]:
    """``step_unets`` as a dict, checked against ``sampling``: one UNet of ``unet``'s config for every trained
    step count but the default, and a guidance range only for a UNet with a guidance embedding.

    Raises:
        ValueError: for other step counts, another config, or a guidance range without the embedding.
    """
    step_unets = dict(step_unets or {})
    if sampling is None:
        if step_unets:
            raise ValueError("step_unets need a sampling record (sampling=SamplingRecord(...)) naming their steps")
        return step_unets
    if not isinstance(sampling, SamplingRecord):
        raise ValueError(f"sampling must be a SamplingRecord or None, got {type(sampling).__name__}")
    others = list(sampling.student_steps)
    if set(step_unets) != set(others):
        raise ValueError(
            f"step_unets must hold one UNet for each trained step count but the default ({sampling.default_steps}): "
            f"{others}, got {list(step_unets)}"
        )
    for n, student in step_unets.items():
        if not isinstance(student, UNet) or student.config != unet.config:
            raise ValueError(f"the {n}-step UNet must be a UNet of the default UNet's config (one UNetConfig for all)")
    if sampling.guidance_range is not None and not unet.config.guidance_embedding:
        raise ValueError("the sampling record gives a guidance range, but the UNet has no guidance embedding")
    return step_unets


def write_model_folder(
    path: str | Path,
    unet: UNet,
    scheduler: Scheduler,
    scheduler_name: str,
    class_names: list[str],
    background: Background = "white",
    *,
    sampling: SamplingRecord | None = None,
    step_unets: Mapping[int, UNet] | None = None,
) -> None:
    """Write the folder; ``scheduler_name`` is the default sampler's name (an alias where one matches);
    ``background``, what training composited transparency on, is recorded when it is not white. A distilled
    model gives its ``sampling`` record and the students of its other step counts, ``step_unets``
    (`check_step_unets`); ``unet`` is then the student of its default step count."""
    step_unets = check_step_unets(unet, sampling, step_unets)
    path = Path(path)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    for n, student in sorted(step_unets.items()):
        save_weights(student, path / "unet", step_weights_name(n))
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
    } | ({"background": background} if background != "white" else {})
    index |= {"sampling": sampling.to_dict()} if sampling is not None else {}
    write_json(path / "model_index.json", index)
    write_manifest(path, [f"unet/{WEIGHTS_NAME}", *(f"unet/{step_weights_name(n)}" for n in sorted(step_unets))])


def read_model_folder(path: str | Path | None) -> tuple[UNet, Scheduler, list[str], Background]:
    """(UNet, default scheduler, class names, background) of the model `read_model` reads: for a distilled
    model, its default student, without the record and the other students."""
    folder = read_model(path)
    return folder.unet, folder.scheduler, folder.class_names, folder.background


def read_model(path: str | Path | None) -> ModelFolder:
    """The `ModelFolder` of a model folder, a diffusers folder, a training checkpoint, a shipped model's name
    (`SHIPPED_MODELS`) or a Hugging Face Hub id (see the module docstring); None is the first shipped model.

    Raises:
        FileNotFoundError: the folder or one of its files is missing; a hub id that is neither on the hub
            nor in the cache.
        CorruptFolderError: a file differs from the folder's manifest (truncated, changed).
        ValueError: the folder is not a model, or its files disagree with each other.
    """
    if path is None or (str(path) in SHIPPED_MODELS and not os.path.exists(path)):
        name = next(iter(SHIPPED_MODELS)) if path is None else str(path)  # None: the default, never ./NAME
        shipped = SHIPPED_MODELS[name]
        if not shipped.is_dir():
            raise FileNotFoundError(
                f"the shipped model {name} is not in this installation of pixel-diffusion (not at {shipped}); "
                "update or reinstall it to get the model, otherwise pass the path of a trained model (--model PATH)"
            )
        path = shipped
    if _is_hub_id(path):
        path = hub_snapshot(str(path))
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} not found")
    if (path / "trainer_state.json").is_file() and not (path / "model_index.json").is_file():
        return ModelFolder(*read_checkpoint(path))
    if not (path / "model_index.json").is_file():
        hint = ""
        if (path / "model").is_dir() or (path / "checkpoints").is_dir():
            hint = f"; a training run's model is {path / 'model'}, its checkpoints {path / 'checkpoints'}/step-N"
        raise ValueError(f"{path} is not a model folder (no model_index.json){hint}")
    index = read_json(path / "model_index.json")
    if is_diffusers_folder(index):  # a diffusers DDPMPipeline / DDIMPipeline folder
        unet = load_diffusers_unet(path / "unet")
        scheduler = load_diffusers_scheduler(path / "scheduler" / "scheduler_config.json")
        where = path / "model_index.json"
        return ModelFolder(
            unet, scheduler, _class_names(index, CLASS_NAMES_KEY, where), _background(index, BACKGROUND_KEY, where)
        )
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
    where = path / "model_index.json"
    sampling = SamplingRecord.from_dict(index["sampling"], where) if "sampling" in index else None
    unet = UNet.from_pretrained(path / "unet")
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = get_scheduler(index.get("default_scheduler", "dpmsolver++"), scheduler_config)
    class_names, background = _class_names(index, "class_names", where), _background(index, "background", where)
    return ModelFolder(unet, scheduler, class_names, background, sampling, _read_step_unets(path, unet, sampling))


def _read_step_unets(path: Path, unet: UNet, sampling: SamplingRecord | None) -> dict[int, UNet]:
    """The students of a distilled model's other step counts, each a UNet of ``unet``'s config."""
    students: dict[int, UNet] = {}
    for n in sampling.student_steps if sampling is not None else ():
        file = path / "unet" / step_weights_name(n)
        state = read_safetensors(file, f" (the {n}-step student that model_index.json's sampling record lists)")
        students[n] = UNet(unet.config).eval()
        try:
            load_checked(students[n], state, "model")
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None
    return students


def _class_names(data: dict[str, Any], key: str, where: Path) -> list[str]:
    """``data[key]`` (absent: none), checked to be a list of names; ``where`` is the file, for the error."""
    names = data.get(key, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{where}: {key} must be a list of names, got {names!r}")
    return names


def _background(data: dict[str, Any], key: str, where: Path) -> Background:
    """``data[key]`` (absent: white, as every model before the setting), checked to be a background."""
    background = data.get(key, "white")
    if background not in get_args(Background):
        raise ValueError(f"{where}: {key} must be one of {', '.join(get_args(Background))}, got {background!r}")
    return background


def read_checkpoint(path: Path) -> tuple[UNet, Scheduler, list[str], Background]:
    """(UNet, default scheduler, class names, background) of a training checkpoint: the model folder its run
    would write at that step. The weights are the EMA's, copied into a fresh UNet as the trainer does.

    Raises:
        CorruptFolderError: a file differs from the checkpoint's manifest.
        ValueError: ``trainer_state.json`` or ``ema.safetensors`` do not describe a model.
    """
    try:
        check_checkpoint(path)
    except CorruptFolderError as e:
        raise CorruptFolderError(f"checkpoint {path} is damaged: {e}; use another checkpoint of the run") from None
    state = read_state(path)
    if isinstance(state.get("config"), dict) and state["config"].get("distill_from"):
        run = path.parent.parent
        raise ValueError(
            f"{path} is a checkpoint of a distillation run, whose student samples only with its round's steps: use "
            f"the run's model ({run / 'model'}) or a finished round ({run / 'rounds'}/steps-N)"
        )
    try:
        config, scheduler = UNetConfig.from_dict(state["unet"]), run_sampler(state["config"])
    except KeyError as e:
        raise ValueError(f"{path}/trainer_state.json has no {e} setting; it does not describe a model") from None
    except TypeError:
        raise ValueError(
            f"{path}/trainer_state.json does not describe a model (config and unet are not objects)"
        ) from None
    ema = read_safetensors(path / "ema.safetensors", ": the checkpoint has no EMA weights")
    ema.pop("__num_updates__", None)  # the EMA's update count (training/ema.py), not a weight
    unet = UNet(config)
    unet.load_weights(ema)  # EMA.copy_to: the fp32 shadow of every parameter, by name
    where = path / "trainer_state.json"
    return unet, scheduler, _class_names(state, "class_names", where), _background(state["config"], "background", where)


def run_sampler(run: Mapping[str, Any]) -> Scheduler:
    """The default sampler of a training run whose `TrainConfig` fields are ``run``: DPM-Solver++ 3M SDE
    (`CHECKPOINT_SAMPLER`) with trailing spacing on the run's noise schedule, which gave the best quality
    per model evaluation in docs/benchmarks.md.

    Raises:
        KeyError: ``run`` lacks a field of the noise schedule.
    """
    schedule = {
        "num_train_timesteps": run["num_train_timesteps"],
        "beta_schedule": run["beta_schedule"],
        "rescale_betas_zero_snr": run["zero_terminal_snr"],
        "prediction_type": run["prediction_type"],
        "timestep_spacing": "trailing",
    }
    return get_scheduler(CHECKPOINT_SAMPLER, schedule)


def _is_hub_id(path: str | Path) -> bool:
    """Whether ``path`` names no local folder and reads as a hub id: ``owner/name`` (huggingface_hub's
    rule) where no folder ``owner`` exists here (``runs/x`` beside ``runs/`` is a missing local folder)."""
    text = str(path)
    if os.path.exists(text) or not _HUB_ID.fullmatch(text) or ".." in text or os.path.isdir(text.split("/")[0]):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)  # e.g. no "--" (the cache's separator)
    except HFValidationError:
        return False
    return True


def _http_errors() -> tuple[type[Exception], ...]:
    """The transport errors (a refused connection, a timeout) of the HTTP client huggingface_hub uses:
    httpx2 or httpx in recent releases; requests', in older ones, are OSErrors."""
    errors = []
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).HTTPError)
    return tuple(errors)


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of the Hugging Face Hub model ``repo_id``, downloaded into the Hugging Face cache,
    or found there when offline (``HF_HUB_OFFLINE``) or when the download fails for any reason (no
    network, a hub that does not answer, an outage, a refused token).

    A hub that does not answer is waited for ``HF_HUB_ETAG_TIMEOUT`` seconds (10 by default), each
    download ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds without data; huggingface_hub sets no timeout on the
    file listing that follows the first answer, so a hub that answers once and then stalls is waited for.

    Raises:
        FileNotFoundError: not in the cache, and the hub has no such model or cannot be reached (or
            offline); the message says how to get it.
        ValueError: not in the cache, and the hub answered with an error (an outage, a refused token).
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    # The environment as it is now: huggingface_hub reads it once, when it is imported.
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    home = os.environ.get("HF_HOME")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or (home and f"{home}/hub")
    cache = cache or constants.HF_HUB_CACHE
    failure: Exception | None = None
    if not offline:
        timeout = constants.HF_HUB_ETAG_TIMEOUT
        fetch = {"repo_id": repo_id, "cache_dir": cache, "etag_timeout": timeout}
        try:
            # snapshot_download's own first request has no timeout: this one, bounded, goes first.
            HfApi().repo_info(repo_id, timeout=timeout)
            folder = Path(snapshot_download(**fetch, allow_patterns=[*_HUB_FILES, _HUB_STEP_WEIGHTS]))
            if not any((folder / name).is_file() for name in _HUB_FILES if name.endswith(".safetensors")):
                folder = Path(snapshot_download(**fetch, allow_patterns=[_HUB_BIN_WEIGHTS]))
            return folder
        except (OSError, ValueError, HfHubHTTPError, *_http_errors()) as e:  # JSON errors are ValueErrors
            failure = e
    try:
        return Path(snapshot_download(repo_id=repo_id, cache_dir=cache, local_files_only=True))
    except (OSError, ValueError):
        pass
    if isinstance(failure, RepositoryNotFoundError):
        raise FileNotFoundError(
            f"model folder {repo_id} not found, and the Hugging Face Hub has no model {repo_id} "
            "(a private or gated one needs `hf auth login`)"
        ) from None
    if isinstance(failure, HfHubHTTPError):
        first = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        raise ValueError(f"could not download {repo_id} from the Hugging Face Hub ({first}); try again later") from None
    if failure is None:
        why = "HF_HUB_OFFLINE is set"
    else:
        first = (str(failure).strip().splitlines() or [""])[0]
        why = f"the Hugging Face Hub cannot be reached ({type(failure).__name__}{': ' if first else ''}{first})"
    raise FileNotFoundError(
        f"model folder {repo_id} not found, and the Hub model {repo_id} is not in the Hugging Face cache "
        f"({cache}) while {why}: get it with `hf download {repo_id} --local-dir DIR` where the hub is "
        "reachable and pass DIR, or pass another model folder"
    ) from None
