"""The trainer's checkpoints: ``OUT/checkpoints/step-N`` written by every process of a run together, and read
back to resume the same run.

- `save_checkpoint`: the main process begins the folder, every process writes its RNG states, the main
  process the `RunState` and ``trainer_state.json`` (`trainer_state`), then publishes it whole; a failed
  write is a `TrainingError`, and the space it took is given back;
- `load_checkpoint`: the checkpoint of this same run (`check_same_run`) restored into the trainer.

What a checkpoint holds, and when it may be continued, is `checkpointing.py`'s; its folders (atomic
publishing, manifests, damaged checkpoints) are `diffusion.io.checkpoint`'s.
"""

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import printable
from ..io.checkpoint import begin_checkpoint, commit_checkpoint, pending_checkpoint, read_state
from ..io.files import write_json
from .checkpointing import RunState, check_same_run, read_rng_states, read_run_state, write_rng_states, write_run_state
from .config import total_steps
from .errors import TrainingError
from .feed import SkippedItems, decoded_folder
from .safety import disk_errors

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)


def run_state(trainer: "Trainer") -> RunState:
    """The trainer's `RunState`: the weights it trains (unwrapped), their EMA, AdamW, the learning-rate
    schedule, the grad scaler and its generator."""
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    return RunState(model, trainer.optimizer, trainer.lr_scheduler, acc.scaler, trainer.ema, trainer.generator)


def save_checkpoint(trainer: "Trainer", step: int) -> None:
    """Write ``checkpoints/step-N``; a failed write (disk full, permissions) is a `TrainingError`.

    A step already on disk in this ``OUT`` is not written again (a loop that ended on a checkpoint, a
    finished run started again): replacing a complete checkpoint is the one write a crash could spoil.
    """
    if step == trainer.saved_step:
        return
    try:
        with disk_errors(f"the checkpoint of step {step}"):
            _write_checkpoint(trainer, step)
    except TrainingError:
        if trainer.accelerator.is_main_process:
            shutil.rmtree(pending_checkpoint(trainer.out, step), ignore_errors=True)  # give the space back
        raise
    trainer.saved_step = step


def _write_checkpoint(trainer: "Trainer", step: int) -> None:
    acc = trainer.accelerator
    if acc.is_main_process:
        begin_checkpoint(trainer.out, step)
    acc.wait_for_everyone()
    tmp = pending_checkpoint(trainer.out, step)
    write_rng_states(tmp, run_state(trainer), acc.process_index)
    trainer.skipped.share(acc)  # every process's, in the checkpoint
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_run_state(tmp, run_state(trainer))
        write_json(tmp / "trainer_state.json", trainer_state(trainer, step))
        commit_checkpoint(tmp, trainer.config.keep_checkpoints)
        logger.info("checkpoint written: %s", tmp.with_name(f"step-{step}"))
    acc.wait_for_everyone()


def trainer_state(trainer: "Trainer", step: int) -> dict[str, Any]:
    """``trainer_state.json`` of the checkpoint of ``step``: the run it belongs to, and how far it got."""
    return {
        "step": step,
        "world_size": trainer.accelerator.num_processes,
        "dataset_size": len(trainer.dataset),
        "config": trainer.config.to_dict(),
        "unet": trainer.unet_config.to_dict(),
        "class_names": trainer.class_names,
        "skipped": trainer.skipped.known,  # items that did not decode so far, and why
        # How the data was read: by name (an item decoded when used), or a folder decoded at start.
        "listing": "decoded" if getattr(trainer.dataset, "validated", False) else "names",
        "manifest": True,  # so that a step-N without its manifest.json is known to be damaged
        "elapsed_s": round(trainer._elapsed(), 3),  # training time of this history, summed over resumes
    }


def load_checkpoint(trainer: "Trainer", path: Path) -> dict[str, Any]:
    """Load the checkpoint ``path`` of this same run (`check_same_run`) into ``trainer`` and return its
    ``trainer_state.json``."""
    acc = trainer.accelerator
    state = read_state(path)
    trainer.skipped = SkippedItems(state.get("skipped"))
    if state.get("listing", "decoded") == "decoded" and state.get("dataset_size") != len(trainer.dataset):
        _decode_folder(trainer)  # a run that began by decoding its folder goes on with the same images
    config, unet_config, class_names = trainer.config, trainer.unet_config, trainer.class_names
    check_same_run(path, state, config, unet_config, class_names, trainer.dataset, acc.num_processes)
    run = run_state(trainer)
    read_run_state(path, run)
    read_rng_states(path, run, acc.process_index)
    trainer.generator = run.generator
    return state


def _decode_folder(trainer: "Trainer") -> None:
    """Make the trainer's data the folder's decodable images, as versions that decoded every file at start
    listed them, with the length of the run that follows from their number."""
    decoded = decoded_folder(trainer.dataset, trainer.config)
    if decoded is None:
        return
    root = Path(trainer.config.data)
    trainer.dataset = decoded
    trainer.skipped = SkippedItems(
        {printable(p.relative_to(root).as_posix()): why for p, why in decoded.report.skipped}
    )
    trainer.steps_per_epoch = len(decoded) / trainer.config.batch_size
    trainer.total_steps = total_steps(trainer.config, trainer.steps_per_epoch)
