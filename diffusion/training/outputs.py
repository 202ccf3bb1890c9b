"""What a run writes into ``OUT`` beside its checkpoints, and how a restart keeps what it abandons.

A run that starts over (``--resume never``) or continues from an older checkpoint (``--resume PATH``)
abandons a history. Nothing of it is deleted: it is renamed into ``OUT/abandoned/<UTC time>-<reason>/``
under its own names (``checkpoints/step-N``, ``samples/step-N.png``, ``metrics.jsonl``, ``model/``,
...), each item by one rename, and ``--resume auto`` never looks there.
"""

import json
import logging
import re
from pathlib import Path

from ..checkpoint import CHECKPOINTS, abandoned_folder, checkpoints_after, move_aside
from ..fileio import MANIFEST_NAME, write_text

logger = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SAMPLES = "samples"  # samples/step-N.png
MODEL = "model"
LOSS_CURVE = "loss.png"
TRAIN_CONFIG = "train_config.json"
TENSORBOARD_PROJECT = "pixel-diffusion"  # accelerate's tracker writes OUT/<project>/events.out.tfevents.*
# Everything a run leaves in OUT, metrics first: moved in this order, a crash part way never leaves
# checkpoints in place whose metrics are gone.
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


def trim_metrics(out: Path, step: int) -> None:
    """Forget rows logged after ``step`` (left by a crash after the checkpoint): they are logged again."""
    path = out / METRICS
    if path.is_file():
        rows = [json.dumps(r) for r in read_metrics(path) if r["step"] <= step]
        write_text(path, "".join(r + "\n" for r in rows))


def abandon_after(out: Path, step: int) -> Path | None:
    """A run continuing from ``step`` while ``OUT`` holds checkpoints newer than it: move that later
    history aside (those checkpoints, grids of later steps, the final model, loss.png, and a full copy
    of metrics.jsonl, whose rows up to ``step`` stay in use) and return where it went."""
    newer = checkpoints_after(out, step)
    if not newer:
        return None
    folder = abandoned_folder(out, f"resumed-from-step-{step}")
    if (out / METRICS).is_file():  # copied first: a crash part way leaves every row somewhere
        write_text(folder / METRICS, (out / METRICS).read_text())
    names = [f"{CHECKPOINTS}/{path.name}" for path in newer]
    if (out / SAMPLES).is_dir():
        later = [p for p in (out / SAMPLES).iterdir() if (m := _SAMPLE.fullmatch(p.name)) and int(m.group(1)) > step]
        names += [f"{SAMPLES}/{p.name}" for p in sorted(later)]
    names += [name for name in (MODEL, LOSS_CURVE) if (out / name).exists()]
    move_aside(out, names, folder)
    logger.warning(
        "this run continues from step %d: the later history in %s (%s) is moved to %s, not deleted",
        step,
        out,
        ", ".join(p.name for p in newer),
        folder,
    )
    return folder


def set_old_model_aside(out: Path, new_model: Path, step: int) -> Path | None:
    """Before ``new_model`` (a complete model folder) becomes ``OUT/model``: an old ``OUT/model`` with other
    weights (a run extended past its first end) is moved aside and its new place returned; one with the
    same weights (a finished run started again) is left for the caller to replace."""
    old = out / MODEL
    digest = _weights_digest(old)
    if not old.is_dir() or (digest is not None and digest == _weights_digest(new_model)):
        return None
    folder = abandoned_folder(out, f"replaced-by-step-{step}")
    move_aside(out, [MODEL], folder)
    logger.warning("the model of step %d replaces %s; the old one is moved to %s", step, old, folder / MODEL)
    return folder


def _weights_digest(model: Path) -> str | None:
    """The SHA-256 of the model's weights as its manifest lists them; None without a readable manifest."""
    try:
        return json.loads((model / MANIFEST_NAME).read_text())["files"]["unet/model.safetensors"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def abandon_all(out: Path) -> Path | None:
    """``--resume never`` in a used ``OUT``: move the previous run aside whole and return where it went."""
    present = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not present:
        return None
    folder = abandoned_folder(out, "resume-never")
    move_aside(out, present, folder)
    logger.warning(
        "--resume never: the previous run in %s (%s) is moved to %s; starting over", out, ", ".join(present), folder
    )
    return folder
