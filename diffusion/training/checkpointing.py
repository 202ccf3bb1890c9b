"""A run's checkpoint as training sees it: what it holds and when it may be continued.

`RunState` is everything the next optimiser step depends on besides the step itself (which fixes the
data order, see `sampler.py`): weights, EMA, optimiser, learning-rate schedule, grad scaler and every
RNG. The ``write_``/``read_`` functions save and restore it; `check_same_run` refuses to continue a
checkpoint under settings that would make it another run. The files themselves (atomic publishing,
manifests, damaged checkpoints) are `diffusion.io.checkpoint`'s.
"""

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..data import ImageFolder, TrainingImages, printable
from ..io.checkpoint import load_pickle_free
from ..io.files import save_safetensors
from ..io.weights import load_weights, save_weights
from ..models import UNetConfig
from .config import TrainConfig
from .ema import EMA

logger = logging.getLogger(__name__)

# Settings a resumed run may change: how long, how often to save/sample/log, and where things are.
RESUMABLE_CHANGES = frozenset(
    {
        "data",
        "out",
        "resume",
        "max_steps",
        "epochs",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "sample_steps",
        "num_samples",
        "log_every",
        "num_workers",
        "compile",
        "gradient_checkpointing",
    }
)


@dataclasses.dataclass
class RunState:
    """What a checkpoint restores."""

    model: nn.Module  # the UNet itself, unwrapped from accelerate's wrappers
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    ema: EMA
    generator: torch.Generator  # label dropout, noise and timesteps (`training_loss`)


def write_rng_states(folder: Path, run: RunState, rank: int) -> None:
    """Write this process's RNG states (each process has its own file) into the pending checkpoint."""
    rng = {"torch": torch.get_rng_state(), "generator": run.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_safetensors(folder / f"rng-{rank}.safetensors", rng)


def read_rng_states(path: Path, run: RunState, rank: int) -> None:
    """Restore this process's RNG states; ``run.generator`` may be replaced by one on another device."""
    rng = load_file(path / f"rng-{rank}.safetensors")
    torch.set_rng_state(rng["torch"])
    run.generator = generator_for_state(run.generator, rng["generator"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def generator_for_state(generator: torch.Generator, state: torch.Tensor) -> torch.Generator:
    """``generator`` set to ``state``, or, for the state of a generator of another kind, a generator that
    continues it: a CPU one for a checkpoint of a version that drew on the CPU (its runs go on as they
    began), else ``generator`` reseeded from the state, with a warning (a CUDA run resumed without CUDA)."""
    if state.numel() == generator.get_state().numel():
        return generator.set_state(state)
    if state.numel() == torch.Generator().get_state().numel():
        return torch.Generator().set_state(state)
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little")
    logger.warning("the checkpoint's noise generator is of a device this run lacks: it continues from a new stream")
    return torch.Generator(device=generator.device).manual_seed(seed)


def write_run_state(folder: Path, run: RunState) -> None:
    """Write the weights, the EMA and the optimiser with its schedule and grad scaler (the main process's part)."""
    save_weights(run.model, folder)
    save_safetensors(folder / "ema.safetensors", run.ema.state_dict())
    torch.save(
        {
            "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.lr_scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        },
        folder / "optimizer.pt",
    )


def read_run_state(path: Path, run: RunState) -> None:
    """Load what `write_run_state` wrote; the RNG states are `read_rng_states`'."""
    load_weights(run.model, path, "model")
    run.ema.load_state_dict(load_file(path / "ema.safetensors"))
    saved = load_pickle_free(path / "optimizer.pt")
    run.optimizer.load_state_dict(saved["optimizer"])
    run.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if run.scaler is not None and saved["scaler"]:
        run.scaler.load_state_dict(saved["scaler"])


def check_same_run(
    path: Path,
    state: dict,
    config: TrainConfig,
    unet: UNetConfig,
    class_names: list[str],
    dataset: TrainingImages,
    processes: int,
) -> None:
    """Refuse to continue the checkpoint ``path`` (whose ``trainer_state.json`` is ``state``) under
    settings, a UNet, classes, images or a number of processes that would make it a different run."""
    # A setting added after the checkpoint was written had its default then.
    saved, now = TrainConfig().to_dict() | state["config"], config.to_dict()
    ignored = RESUMABLE_CHANGES | (set() if now["class_cond"] else {"cond_drop_prob"})  # unused unconditionally
    if now.get("distill_from"):
        ignored -= {"max_steps", "epochs"}  # the run's length places its distillation rounds
    differ = [
        f"--{k.replace('_', '-')} {saved[k]!r} -> {now[k]!r}" for k in now if k not in ignored and saved[k] != now[k]
    ]
    if state.get("unet", unet.to_dict()) != unet.to_dict():
        differ.append("the UNet config")
    if state.get("class_names", class_names) != class_names:
        differ.append(f"the class subfolders ({state['class_names']} -> {class_names})")
    if state.get("dataset_size", len(dataset)) != len(dataset):
        differ.append(
            f"the number of images ({state['dataset_size']} -> {len(dataset)}){_passed_over(dataset, config)}"
        )
    if differ:
        raise ValueError(
            f"checkpoint {path} was written with other settings: {'; '.join(differ)}. To start a new run, use a "
            f"new --out (or --resume never, which moves this run to {Path(config.out) / 'abandoned'}/ and starts "
            "over); to continue this one, use the same settings"
        )
    if state["world_size"] != processes:
        raise ValueError(
            f"checkpoint {path} was written by {state['world_size']} process(es); resume it with the same "
            f"number (this run has {processes})"
        )


def _passed_over(dataset: TrainingImages, config: TrainConfig) -> str:
    """Why the images may number fewer than an older version counted: the entries the scan passes over."""
    passed = dataset.report.passed_over if isinstance(dataset, ImageFolder) else []
    if not passed:
        return ""
    names = [printable(p.relative_to(config.data).as_posix()) for p in passed]
    return (
        f" (this version passes over {len(passed)} hidden or tool-made entries such as {', '.join(names[:3])}; "
        "move them out of the data folder, or use a new --out)"
    )
