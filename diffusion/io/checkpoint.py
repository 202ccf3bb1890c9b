"""Training checkpoints: one folder per step, made complete under a temporary name, then renamed.

``OUT/checkpoints/step-N/`` holds ``model.safetensors``, ``ema.safetensors``, ``optimizer.pt`` (read
back with ``weights_only=True``: tensors and plain containers only, no code), one
``rng-R.safetensors`` per process, ``trainer_state.json`` and ``manifest.json`` (each file's size and
SHA-256). A folder only ever appears under its final name once every file in it is on disk, so a
crash can leave a stray ``.tmp-*`` folder (ignored and cleaned up) but never a half-written ``step-N``.

A checkpoint damaged later (a bad disk, a copy cut short) fails its manifest check. ``--resume auto``
then renames it to ``corrupt-step-N`` (kept for inspection, never deleted), warns, and falls back to
the newest intact one; a checkpoint named by path is refused.

Nothing a run wrote is deleted because another run starts: what a restart abandons is renamed into
``OUT/abandoned/<UTC time>-<reason>/`` (see `abandoned_folder`, `move_aside`) and kept, and so is a
``step-N`` written again (`commit_checkpoint`).
"""

import contextlib
import errno
import logging
import os
import pickle
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .files import CorruptFolderError, read_json, verify_manifest, write_manifest

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
ABANDONED = "abandoned"  # OUT/abandoned/: what a restarted run left behind, kept
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
    """Write ``tmp``'s manifest, flush ``tmp`` to disk, rename it to ``step-N`` atomically, and keep only
    the ``keep`` newest."""
    write_manifest(tmp)
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    final = tmp.with_name(tmp.name.removeprefix(".tmp-"))
    if final.exists():  # the trainer writes no step twice; should one be, the old one is kept
        out = final.parent.parent
        folder = abandoned_folder(out, f"replaced-{final.name}")
        move_aside(out, [f"{CHECKPOINTS}/{final.name}"], folder)
        logger.warning("%s is written again; the one it replaces is moved to %s", final, folder)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    for _, old in list_checkpoints(final.parent.parent)[:-keep]:
        try:
            _remove(old)
        except OSError as e:  # the new checkpoint is safe; an old one left behind costs only space
            logger.warning("could not remove the old checkpoint %s (%s); remove it by hand", old, e)
    for stray in final.parent.glob(".tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)
    return final


def checkpoints_after(out: str | Path, step: int) -> list[Path]:
    """The complete checkpoints in ``out`` newer than ``step``, oldest first."""
    return [path for step_done, path in list_checkpoints(out) if step_done > step]


def abandoned_folder(out: str | Path, reason: str) -> Path:
    """Create and return ``OUT/abandoned/<UTC YYYYmmdd-HHMMSS>-<reason>/`` (``-2``, ``-3``, ... if taken)."""
    target = _unused_name(Path(out) / ABANDONED / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{reason}")
    target.mkdir(parents=True)
    return target


def _unused_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... the first that does not exist: a name is never reused."""
    target, n = path, 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}-{n}")
    return target


def move_aside(out: str | Path, names: list[str], folder: Path) -> None:
    """Rename each ``OUT/<name>`` (a file or folder, relative path) to ``folder/<name>``.

    One rename per item, each on the item's own filesystem, so a crash leaves every item whole, still
    in place or moved. A top-level folder that is a symbolic link or a mount point (``OUT/checkpoints``
    on another disk) stays, and its entries are moved instead. An entry whose folder lies outside
    ``OUT`` (through such a link), or that cannot be renamed into ``folder`` (another filesystem), is
    renamed into ``abandoned/<folder's name>/`` beside it, and ``folder/<name>`` links to it.

    Raises:
        OSError: an item could not be moved even beside itself; those before it are moved, it and the
            rest are in place.
    """
    out = Path(out)
    for name in names:
        source = out / name
        top = Path(name).parent == Path(".")
        if top and source.is_dir() and (source.is_symlink() or os.path.ismount(source)):
            move_aside(out, _entries(out, name), folder)
            continue
        home = source.parent.resolve()
        if home == out.resolve() / Path(name).parent:  # no link on the way: folder is on the same disk
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, folder / name)
                continue
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
            if top and source.is_dir():  # a mount point os.path.ismount misses (a bind mount)
                move_aside(out, _entries(out, name), folder)
                continue
        beside = home / ABANDONED / folder.name / source.name
        beside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, beside)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a filesystem without links: the log says where it went
            (folder / name).symlink_to(beside, target_is_directory=beside.is_dir())
        logger.info("%s stays on its own disk: moved to %s, linked from %s", source, beside, folder / name)


def _entries(out: Path, name: str) -> list[str]:
    """The entries of the folder ``OUT/<name>`` as names for `move_aside`, less its own ``abandoned/``."""
    return [f"{name}/{p.name}" for p in sorted((out / name).iterdir()) if p.name != ABANDONED]


def copy_checkpoint(source: Path, out: str | Path, step: int) -> Path:
    """Copy the checkpoint ``source`` into `pending_checkpoint(out, step)`, checked against its manifest,
    for `commit_checkpoint` to publish as ``OUT/checkpoints/step-N``."""
    tmp = begin_checkpoint(out, step)
    for file in sorted(source.iterdir()):
        if file.is_file():
            shutil.copyfile(file, tmp / file.name)
    check_checkpoint(tmp)
    return tmp


def is_own_checkpoint(out: str | Path, path: Path, step: int) -> bool:
    """Whether ``path`` (the checkpoint of ``step``) is ``OUT/checkpoints/step-N`` itself."""
    return path.resolve() == (checkpoint_root(out) / f"step-{step}").resolve()


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: first renamed to a ``.tmp-`` name (atomic), so that a crash mid-way
    leaves a stray temporary folder, cleaned up later, never a half-deleted ``step-N``."""
    doomed = path.with_name(f".tmp-removing-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by an earlier crash
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


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
    """The checkpoint to resume from: ``auto`` (the newest intact one in ``out``, or none), ``never``, or
    a path. With ``auto``, damaged checkpoints are renamed ``corrupt-step-N`` and skipped with a warning;
    with several processes, only the main one calls this.

    Raises:
        FileNotFoundError: ``resume`` is a path but not a checkpoint folder.
        CorruptFolderError: the checkpoint at that path is damaged, or ``auto`` found no intact one
            but damaged ones.
    """
    if resume == "never":
        return None
    if resume == "auto":
        for _, path in reversed(list_checkpoints(out)):
            try:
                check_checkpoint(path)
                return path
            except CorruptFolderError as e:
                kept = _quarantine(path)
                logger.warning("checkpoint %s is damaged (%s); kept as %s, falling back", path, e, kept.name)
        damaged = sorted(checkpoint_root(out).glob("corrupt-step-*"))
        if damaged:
            raise CorruptFolderError(
                f"no intact checkpoint in {checkpoint_root(out)}, only damaged ones "
                f"({', '.join(p.name for p in damaged)}); "
                f"start over with a new --out (or --resume never, which moves this run to {Path(out) / ABANDONED}/ "
                "and starts over), or restore a copy of a checkpoint and --resume it"
            )
        return None
    check_resume_path(resume)
    path = Path(resume)
    try:
        check_checkpoint(path)
    except CorruptFolderError as e:
        raise CorruptFolderError(f"--resume {resume}: damaged checkpoint: {e}; resume another one") from None
    return path


def check_resume_path(resume: str) -> None:
    """``FileNotFoundError`` for a ``--resume`` that is neither ``auto``, ``never`` nor a folder with a
    ``trainer_state.json`` (a quick look: the manifest is checked when the run resumes)."""
    if resume not in ("auto", "never") and not (Path(resume) / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")


def check_checkpoint(path: Path) -> None:
    """Check ``path`` against its manifest; one without a manifest, whose state does not say it had one, is
    taken as it is.

    Raises:
        CorruptFolderError: a file is missing, truncated or changed.
    """
    if not verify_manifest(path):
        if not (path / "trainer_state.json").is_file():
            raise CorruptFolderError(f"{path} has neither a manifest nor trainer_state.json")
        try:
            had_one = read_state(path).get("manifest", False)
        except ValueError as e:
            raise CorruptFolderError(str(e)) from None
        if had_one:
            raise CorruptFolderError(f"{path}/manifest.json is missing")
        logger.info("%s has no manifest (written by an older version): not verified", path)


def _quarantine(path: Path) -> Path:
    """Rename a damaged ``step-N`` to ``corrupt-step-N`` (``-2``, ``-3``, ... if taken) and return it."""
    target = _unused_name(path.with_name(f"corrupt-{path.name}"))
    os.replace(path, target)
    return target


def load_pickle_free(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: no code runs.

    Raises:
        ValueError: the file holds anything else (a class, a function call), or is not readable.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} holds more than tensors and plain containers, or is damaged; refused without running it ({first})"
        ) from None


def read_state(path: Path) -> dict[str, Any]:
    return read_json(path / "trainer_state.json")
