"""What a run writes into ``OUT`` beside its checkpoints (metrics rows, the final model, the loss curve),
and how a restart keeps what it abandons.

A run that starts over (``--resume never``), continues from an older checkpoint (``--resume PATH`` in
``OUT/checkpoints``) or from one elsewhere (another run's, or one in ``OUT/abandoned/``) abandons a
history. Nothing of it is deleted: it is renamed into ``OUT/abandoned/<UTC time>-<reason>/`` under its
own names (``checkpoints/step-N``, ``samples/step-N.png``, ``metrics.jsonl``, ``model/``, ...), each item
by one rename (see `move_aside` for folders on another disk), and ``--resume auto`` never looks there.
"""

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..image import make_grid, save_png
from ..io.checkpoint import (
    ABANDONED,
    CHECKPOINTS,
    abandoned_folder,
    checkpoint_root,
    checkpoints_after,
    commit_checkpoint,
    copy_checkpoint,
    is_own_checkpoint,
    move_aside,
    pending_checkpoint,
)
from ..io.files import MANIFEST_NAME, CorruptFolderError, verify_manifest, write_text
from ..io.weights import WEIGHTS_NAME
from ..pipeline import DiffusionPipeline
from .errors import TrainingError
from .plot import loss_curve
from .safety import disk_errors

logger = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SAMPLES = "samples"  # samples/step-N.png
MODEL = "model"
LOSS_CURVE = "loss.png"
TRAIN_CONFIG = "train_config.json"
TENSORBOARD_PROJECT = "pixel-diffusion"  # accelerate's tracker writes OUT/<project>/events.out.tfevents.*
# Everything a run leaves in OUT, in the order a restart moves it aside. metrics.jsonl goes first, so a
# crash part way can leave checkpoints in OUT whose rows are already moved (kept whole in the abandoned
# folder), but never rows whose checkpoints are gone: a run started over them would trim those rows
# (`trim_metrics`), and they would be lost.
RUN_OUTPUTS = (METRICS, CHECKPOINTS, SAMPLES, MODEL, LOSS_CURVE, TRAIN_CONFIG, TENSORBOARD_PROJECT)
_SAMPLE = re.compile(r"step-(\d+)\.png")


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a line cut short by a crash is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping an incomplete line of %s", path)
    return rows


def append_metrics(out: Path, row: dict) -> None:
    """Add one row to metrics.jsonl."""
    with open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def write_sample_grid(out: Path, pipe: DiffusionPipeline, step: int, num_images: int, steps: int) -> Image.Image:
    """Sample ``num_images`` from seed 0 with ``steps`` of ``pipe``'s sampler into ``samples/step-N.png``; a
    class-conditional grid cycles through the classes, guided at the pipeline's default scale."""
    labels = [i % len(pipe.class_names) for i in range(num_images)] if pipe.class_names else None
    images = pipe(num_images=num_images, num_inference_steps=steps, seed=0, class_labels=labels)
    meta = {"step": str(step), "sampler": pipe.scheduler_name(), "steps": str(steps), "seed": "0"}
    (out / SAMPLES).mkdir(exist_ok=True)
    grid = make_grid(images)
    save_png(grid, out / SAMPLES / f"step-{step}.png", meta)
    return grid


def write_loss_curve(out: Path) -> None:
    rows = read_metrics(out / METRICS)
    loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], out / LOSS_CURVE)


def trim_metrics(out: Path, step: int) -> None:
    """Forget rows logged after ``step`` (left by a crash after the checkpoint): they are logged again."""
    path = out / METRICS
    if path.is_file():
        rows = [json.dumps(r) for r in read_metrics(path) if r["step"] <= step]
        write_text(path, "".join(r + "\n" for r in rows))


def continue_history(out: Path, resume: str, resume_from: Path | None, step: int, keep: int) -> None:
    """Make ``OUT`` hold the one history that continues from ``step`` of the checkpoint ``resume_from``
    (None: a new run from step 0), as ``--resume`` asked: whatever a previous run left beyond it is
    another history, moved aside so that ``--resume auto`` and the metrics never mix two."""
    if resume == "never":
        abandon_all(out)
    elif resume_from is None:  # nothing to resume (checkpoints deleted, a link to an unmounted disk)
        abandon_all(out, "no-checkpoint")
    elif not is_own_checkpoint(out, resume_from, step):
        adopt_checkpoint(out, resume_from, step, keep)
    else:
        abandon_after(out, step)
    trim_metrics(out, step)


def abandon_after(out: Path, step: int) -> Path | None:
    """A run continuing from ``step`` while ``OUT`` holds checkpoints newer than it: move that later
    history aside (those checkpoints, grids of later steps, the final model, loss.png and the TensorBoard
    log, which the run starts afresh; copies of metrics.jsonl and train_config.json, whose rows up to
    ``step`` stay in use) and return where it went."""
    newer = checkpoints_after(out, step)
    if not newer:
        return None
    folder = abandoned_folder(out, f"resumed-from-step-{step}")
    with _moving(out, folder):
        for name in (METRICS, TRAIN_CONFIG):  # copied first: a crash part way leaves every row somewhere
            if (out / name).is_file():
                write_text(folder / name, (out / name).read_text())
        names = [f"{CHECKPOINTS}/{path.name}" for path in newer]
        if (out / SAMPLES).is_dir():
            later = [
                p for p in (out / SAMPLES).iterdir() if (m := _SAMPLE.fullmatch(p.name)) and int(m.group(1)) > step
            ]
            names += [f"{SAMPLES}/{p.name}" for p in sorted(later)]
        names += [name for name in (MODEL, LOSS_CURVE, TENSORBOARD_PROJECT) if _present(out / name)]
        move_aside(out, names, folder)
    logger.warning(
        "this run continues from step %d: the later history in %s (%s) is moved to %s, not deleted",
        step,
        out,
        ", ".join(p.name for p in newer),
        folder,
    )
    return folder


def abandon_all(out: Path, reason: str = "resume-never") -> Path | None:
    """A run starting over in a used ``OUT`` (``--resume never``, or ``--resume auto`` with no checkpoint
    left to resume): move the previous run aside whole and return where it went."""
    folder = _abandon_run(out, reason)
    if folder is not None:
        logger.warning(
            "%s: the previous run in %s (%s) is moved to %s; starting over",
            "--resume never" if reason == "resume-never" else "no checkpoint to resume",
            out,
            ", ".join(sorted(p.name for p in folder.iterdir())),
            folder,
        )
    return folder


def adopt_checkpoint(out: Path, source: Path, step: int, keep: int) -> Path | None:
    """A run continuing from ``source``, the checkpoint of ``step`` outside ``OUT/checkpoints`` (another
    run's, or one in ``OUT/abandoned/``): move the run in ``OUT`` aside whole, as ``--resume never`` does,
    and start ``OUT``'s history afresh from a copy of ``source`` as ``checkpoints/step-N``, with the
    metrics rows up to ``step`` of the run ``source`` belongs to (``source/../../metrics.jsonl``) when
    there is one. Return where the previous run went."""
    rows = read_metrics(source.parent.parent / METRICS) if source.parent.name == CHECKPOINTS else []
    rows = [row for row in rows if row["step"] <= step]
    try:
        pending = copy_checkpoint(source, out, step)  # first: a failed copy leaves OUT's run in place
    except OSError as e:
        shutil.rmtree(pending_checkpoint(out, step), ignore_errors=True)
        raise TrainingError(
            f"could not copy {source} into {checkpoint_root(out)}: {e.strerror or e}; nothing was moved. Free "
            "space (or fix permissions), then run the same command again"
        ) from None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(source.absolute().parts[-3:]))[-80:]
    folder = _abandon_run(out, f"resumed-from-{slug}", spare=pending)
    if folder is not None:
        logger.warning(
            "this run continues from %s, which is not in %s: the run that was there is moved to %s, not deleted",
            source,
            checkpoint_root(out),
            folder,
        )
    try:
        write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        commit_checkpoint(pending, keep)
    except OSError as e:
        raise TrainingError(
            f"could not write the copy of {source} into {out}: {e.strerror or e}. The run that was there is in "
            f"{folder}; free space (or fix permissions), then run the same command again"
        ) from None
    logger.info("%s starts from a copy of %s, with its %d metrics rows", out, source, len(rows))
    return folder


def _abandon_run(out: Path, reason: str, spare: Path | None = None) -> Path | None:
    """Move every run output of ``OUT`` into a new abandoned folder named for ``reason`` and return it; the
    folder ``spare`` in ``OUT/checkpoints`` stays. None when there is nothing to move."""
    names = []
    for name in RUN_OUTPUTS:
        if name == CHECKPOINTS and spare is not None and (out / name).is_dir():
            names += [
                f"{name}/{p.name}" for p in sorted((out / name).iterdir()) if p.name not in (spare.name, ABANDONED)
            ]
        elif _present(out / name):
            names.append(name)
    if not names:
        return None
    folder = abandoned_folder(out, reason)
    with _moving(out, folder):
        move_aside(out, names, folder)
    return folder


def check_model_target(out: Path) -> None:
    """Refuse, before any training, an ``OUT/model`` that is a link or a mount point: the final model is
    put in place by renaming a complete folder onto ``OUT/model``, which cannot replace either."""
    model = out / MODEL
    if model.is_symlink() or os.path.ismount(model):
        kind = "a link" if model.is_symlink() else "a mount point"
        raise ValueError(
            f"{model} is {kind}; the final model is renamed into place there, which {kind} cannot take. "
            "Make it a plain folder (or remove it), or use a new --out"
        )


def write_model(out: Path, pipe: DiffusionPipeline, card: str, step: int) -> None:
    """Write the final model and its card (``README.md``, outside the weights' manifest) whole under a
    temporary name, then make it ``OUT/model`` (`install_model`): it is never half-written."""
    tmp = out / ".tmp-model"
    try:
        with disk_errors("the final model"):
            shutil.rmtree(tmp, ignore_errors=True)
            pipe.save_pretrained(tmp)
            write_text(tmp / "README.md", card)
            install_model(out, tmp, step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a failure: give the space back


def install_model(out: Path, new_model: Path, step: int) -> None:
    """Make ``new_model`` (a complete model folder beside ``OUT/model``) ``OUT/model``. One that already
    holds these weights, intact (a finished run started again), is left as it is, with the user's edits to
    its README.md and model_index.json, and ``new_model`` removed; any other is moved aside (a run
    extended past its first end), never deleted."""
    old = out / MODEL
    if _present(old):
        if _intact_with_weights(old, _weights_digest(new_model)):
            shutil.rmtree(new_model)
            logger.info("%s already holds the weights of step %d: left as it is", old, step)
            return
        folder = abandoned_folder(out, f"replaced-by-step-{step}")
        move_aside(out, [MODEL], folder)
        logger.warning("the model of step %d replaces %s; the old one is moved to %s", step, old, folder / MODEL)
    os.replace(new_model, old)


def _intact_with_weights(model: Path, digest: str | None) -> bool:
    """Whether ``model`` is a model folder whose manifest lists weights of SHA-256 ``digest`` and holds."""
    if digest is None or not model.is_dir() or _weights_digest(model) != digest:
        return False
    try:
        return verify_manifest(model)
    except CorruptFolderError:
        return False


def _weights_digest(model: Path) -> str | None:
    """The SHA-256 of the model's weights as its manifest lists them; None without a readable manifest."""
    try:
        return json.loads((model / MANIFEST_NAME).read_text())["files"][f"unet/{WEIGHTS_NAME}"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


@contextlib.contextmanager
def _moving(out: Path, folder: Path) -> Iterator[None]:
    """Turn a failed move aside into a one-line `TrainingError` that says where everything is."""
    try:
        yield
    except OSError as e:
        raise TrainingError(
            f"could not move {e.filename or 'a file'} aside: {e.strerror or e}. Nothing is deleted: what was moved is "
            f"in {folder}, the rest is still in {out}; move it by hand, or use a new --out"
        ) from None
