"""Training checkpoints: one folder per step, made complete under a temporary name, then renamed.

``OUT/checkpoints/step-N/`` holds ``model.safetensors``, ``ema.safetensors``, ``optimizer.pt`` (read
back with ``weights_only=True``: tensors and plain containers only, no code), one
``rng-R.safetensors`` per process and ``trainer_state.json``. A folder only ever appears under its
final name once every file in it is on disk, so a crash can leave a stray ``.tmp-*`` folder (ignored
and cleaned up) but never a half-written ``step-N``.
"""

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .fileio import read_json

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_root(out: str | Path) -> Path:
    return Path(out) / CHECKPOINTS


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out``, oldest first."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def pending_checkpoint(out: str | Path, step: int) -> Path:
    """The temporary folder that `commit_checkpoint` publishes as ``step-N``."""
    return checkpoint_root(out) / f".tmp-step-{step}"


def begin_checkpoint(out: str | Path, step: int) -> Path:
    """Create (empty) and return `pending_checkpoint(out, step)`."""
    tmp = pending_checkpoint(out, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: Path, keep: int) -> Path:
    """Flush ``tmp`` to disk, rename it to ``step-N`` atomically, and keep only the ``keep`` newest."""
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    final = tmp.with_name(tmp.name.removeprefix(".tmp-"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    for _, old in list_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stray in final.parent.glob(".tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)
    return final


def remove_checkpoints_after(out: str | Path, step: int) -> None:
    """Delete checkpoints newer than ``step``: a run that restarts there abandons that history."""
    for step_done, path in list_checkpoints(out):
        if step_done > step:
            logger.warning("removing %s, newer than this run's start (step %d)", path, step)
            shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_resume(out: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` (latest in ``out``, or none), ``never``, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def load_pickle_free(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: no code runs."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state(path: Path) -> dict[str, Any]:
    return read_json(path / "trainer_state.json")
