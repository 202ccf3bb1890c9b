"""The training loop, on accelerate (which only this module and `processes.py` import).

`Trainer` reads in the order a run meets its pieces:

- ``__init__``: the edge: refuses settings that cannot work, scans the data, fixes the run's length;
- `Trainer.train`: the outline below, each line one piece;
- ``_set_up``: seeds, the model, AdamW with the learning-rate schedule (`config.lr_factor`), the fp32
  EMA and the noise schedule;
- ``_resume``: loads the checkpoint ``--resume`` picks (`trainer_checkpoints.py`) and tidies ``OUT`` for the
  history that continues (`outputs.py`);
- ``_step``: one optimiser step: ``grad_accum`` micro-batches of `training_loss` (`loss.py`, the whole
  objective), backward under accelerate's precision handling, gradient clipping, AdamW, the learning-rate
  schedule and the EMA;
- ``_after_step``: stop signals, the metrics row, checkpoints and sample grids (what several processes
  agree on, and how: `processes.py`);
- ``_finish``: the last checkpoint, the final model with its card (`report.py`) and the loss curve.

Checkpoints restore everything the next step depends on (`checkpointing.RunState`), and the data order
is a function of the step (`sampler.py`), so a resumed run reproduces the uninterrupted one bit for bit
on CPU.
"""

import contextlib
import dataclasses
import importlib.util
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data import to_unit
from ..io.checkpoint import check_resume_path, resolve_resume
from ..io.files import check_writable, write_json
from ..models import UNet
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline
from ..schedulers import DPMSolverMultistepScheduler, NoiseSchedule
from .config import TrainConfig, check_batches, lr_factor, model_config, scheduler_config, total_steps, unused_settings
from .distill_run import Distillation, check_teacher_classes, open_teacher, student_settings
from .ema import EMA
from .errors import TrainingError
from .feed import SkippedItems, micro_batches, open_data
from .loss import training_loss
from .outputs import (
    LOSS_CURVE,
    METRICS,
    MODEL,
    TENSORBOARD_PROJECT,
    TRAIN_CONFIG,
    append_metrics,
    check_model_target,
    continue_history,
    read_metrics,
    write_loss_curve,
    write_model,
    write_sample_grid,
)
from .processes import agree_to_stop, any_process, on_main
from .report import length_warnings, model_card, startup_lines, working_folder
from .safety import disk_errors, install_stop_handlers, restore_handlers
from .trainer_checkpoints import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class Trainer:
    """Runs `TrainConfig`; `train()` returns the final model folder.

    ``explicit`` names the settings (TrainConfig or UNet fields) the caller chose on purpose, as
    ``train.py`` passes the flags typed on its command line: one that would have no effect in this run
    (`unused_settings`) is refused with the reason, before the data scan where possible.
    """

    def __init__(
        self, config: TrainConfig, unet_overrides: dict | None = None, *, explicit: Collection[str] = ()
    ) -> None:
        if not config.data or not config.out:
            raise ValueError("both --data (a folder of images) and --out (an output folder) are required")
        self.config = config
        self.unet_overrides = dict(unet_overrides or {})
        self.start_folder = working_folder()  # the model card's paths are relative to it
        self.out = Path(config.out)
        check_model_target(self.out)
        check_writable(self.out)
        # accelerate keeps its settings in a process-wide singleton; forget them so that a second run in
        # the same process (tests, notebooks) can choose another precision. The process group stays.
        AcceleratorState._reset_state()
        try:
            self.accelerator = Accelerator(
                mixed_precision=config.mixed_precision,
                log_with="tensorboard" if importlib.util.find_spec("tensorboard") else None,
                project_dir=str(self.out),
            )
        except ValueError as e:
            raise ValueError(f"--mixed-precision {config.mixed_precision}: {e}") from None
        self.teacher = None  # with --distill-from: the model distilled (`distill_run.py`)
        if config.distill_from is not None:
            self.teacher = open_teacher(config, self.accelerator.device)
            self.config = config = student_settings(config, self.teacher)
            guided = self.teacher.unet.config.num_classes is not None
            self.unet_config = dataclasses.replace(self.teacher.unet.config, guidance_embedding=guided)
            check_batches(config, self.unet_config, self.accelerator.num_processes)
        else:
            self.unet_config = model_config(config, unet_overrides, self.accelerator.num_processes)
        if config.max_steps is None and config.epochs is None:
            raise ValueError("give --max-steps or --epochs to say how long to train")
        # What can be refused before the scan is: the run is at most --max-steps long.
        _refuse_unused(
            explicit, unused_settings(config, self.unet_config, config.max_steps, exact=config.epochs is None)
        )
        check_resume_path(config.resume)
        self.dataset = open_data(config, self.accelerator, self.unet_config.sample_size)
        self.skipped = SkippedItems()
        if config.class_cond:
            if self.dataset.labels is None:
                why = self.dataset.unlabelled_reason
                raise ValueError(why if self.teacher is None else f"the teacher is class-conditional: {why}")
            if self.teacher is not None:
                check_teacher_classes(self.teacher, self.dataset.class_names)
            self.unet_config = dataclasses.replace(self.unet_config, num_classes=len(self.dataset.class_names))
        self.steps_per_epoch = len(self.dataset) / config.batch_size
        self.total_steps = total_steps(config, self.steps_per_epoch)
        _refuse_unused(explicit, unused_settings(config, self.unet_config, self.total_steps))
        self.distill = None if self.teacher is None else Distillation(self.teacher, config, self.total_steps, self.out)

    # ----- the run -----

    def train(self, stop_at_step: int | None = None, progress: bool = False) -> Path | None:
        """Train to ``total_steps`` and return the final model folder.

        With ``stop_at_step``, stop there instead (as an interruption would): write a checkpoint and
        return None; running again with ``resume="auto"`` continues the same run. ``progress`` shows a
        tqdm bar (loss, learning rate, img/s, ETA) on the main process.
        """
        forward = self._set_up()
        resumed = self._resume()
        start = 0 if resumed is None else int(resumed["step"])
        loader = micro_batches(self.dataset, self.config, self.accelerator, start, self.total_steps)
        stop = {"signal": None}  # set by SIGINT/SIGTERM: the step finishes, then the run checkpoints and stops
        handlers = install_stop_handlers(stop)
        self._start_session(start, resumed, progress)
        step, end = start, min(self.total_steps, stop_at_step or self.total_steps)
        try:
            while step < end:
                loss = self._step(loader, forward, step)
                step += 1
                if self._after_step(step, end, loss, stop):
                    break  # the checkpoint is written below
        finally:
            self.bar.close()
            restore_handlers(handlers)
        return self._finish(step, stop)

    def _set_up(self) -> Callable[..., torch.Tensor]:
        """Seed, then build the model, AdamW and its schedule, the EMA and the noise schedule; return the
        model as the steps call it."""
        c, acc = self.config, self.accelerator
        set_seed(c.seed + acc.process_index)  # dropout draws from torch's global RNG
        # Label dropout, noise and timesteps draw from their own generator on the training device, saved in
        # every checkpoint.
        self.generator = torch.Generator(device=acc.device).manual_seed(c.seed * 7919 + acc.process_index)
        model = UNet(self.unet_config)
        if self.distill is not None:  # the student starts as its teacher (a guidance embedding that adds nothing)
            missing, unexpected = model.load_state_dict(self.teacher.unet.state_dict(), strict=False)
            assert not unexpected and all(k.startswith("guidance_embed.") for k in missing), (missing, unexpected)
            self.distill.autocast = acc.autocast
        self.num_parameters = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=c.fused_adamw or None
        )
        schedule = (
            (lambda s: self.distill.rounds.lr_factor(s, c))
            if self.distill
            else (lambda s: lr_factor(s, c, self.total_steps))
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema = EMA(acc.unwrap_model(self.model), c.ema_decay)  # after prepare: on the training device
        self.schedule = NoiseSchedule(scheduler_config(c)).to(acc.device)
        if c.gradient_checkpointing:
            acc.unwrap_model(self.model).gradient_checkpointing = True
        return torch.compile(self.model) if c.compile else self.model

    def _resume(self) -> dict | None:
        """Continue from the checkpoint ``--resume`` picks, if there is one, and return its
        ``trainer_state.json`` (None: a new run from step 0)."""
        c = self.config
        # The main process checks the checkpoints (and renames damaged ones); the others take its choice.
        resume_from = on_main(self.accelerator, lambda: resolve_resume(self.out, c.resume))
        start, resumed = 0, None
        if resume_from is not None:
            resumed = load_checkpoint(self, resume_from)
            start = int(resumed["step"])
            logger.info("resuming from %s (step %d)%s", resume_from, start, " [--resume auto]" * (c.resume == "auto"))

        def tidy_out() -> None:
            continue_history(self.out, c.resume, resume_from, start, c.keep_checkpoints)
            self._log_summary(start, resume_from)

        on_main(self.accelerator, tidy_out)  # the others wait until OUT holds the history that continues
        return resumed

    def _start_session(self, start: int, resumed: dict | None, progress: bool) -> None:
        """The state of this session's loop, all set here: it starts at ``start``, resumed from the
        checkpoint whose ``trainer_state.json`` is ``resumed`` (None: a new run)."""
        # OUT/checkpoints/step-N is the checkpoint resumed from, or will be a copy of it: not written again.
        self.saved_step = None if resumed is None else start
        # Training seconds of the sessions before this one; absent from checkpoints of older versions.
        self.elapsed_before = 0.0 if resumed is None else float(resumed.get("elapsed_s", 0.0))
        self.outputs_open = False  # train_config.json and the TensorBoard log: after the first step
        show = progress and self.accelerator.is_main_process
        self.bar = tqdm(total=self.total_steps, initial=start, disable=not show, desc="train")
        self.session_start = self.tick = time.perf_counter()  # tick: when the last metrics row was logged
        self.tick_step = start  # the step of that row
        # Whether a loss since `checked_step` was NaN or infinite: kept on the device, so that a step never
        # waits for it; read where the run logs, checkpoints, samples or ends (`_check_losses`).
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.accelerator.device)
        self.checked_step = start

    def _step(self, loader: Iterator, forward: Callable[..., torch.Tensor], step: int) -> torch.Tensor:
        """Optimiser step ``step + 1``; returns its loss (the mean over micro-batches, a float32 scalar on the
        training device: reading it waits for the device, so only logging does)."""
        c, acc = self.config, self.accelerator
        if self.distill is not None:
            self.distill.before_step(self, step)
        loss_sum = torch.zeros((), dtype=torch.float32, device=acc.device)
        for micro in range(c.grad_accum):
            images, labels, skipped = next(loader)
            self.skipped.note(skipped)
            # Pinned on CUDA, the copy need not wait; elsewhere (MPS) an unpinned source must be copied in order.
            copy = {"device": acc.device, "non_blocking": acc.device.type == "cuda"}
            x0 = to_unit(images.to(**copy))
            labels = labels.to(**copy) if c.class_cond else None
            sync = micro == c.grad_accum - 1  # DDP averages gradients across processes once, after the last
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                loss = self._loss(forward, x0, labels, step)
                acc.backward(loss / c.grad_accum)  # the gradient of the mean over the micro-batches
            loss_sum += loss.detach().float() / c.grad_accum
        self.nonfinite |= ~torch.isfinite(loss_sum)  # on the device: read by `_check_losses`
        if c.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not acc.optimizer_step_was_skipped:  # fp16: the grad scaler skips steps with inf gradients
            self.lr_scheduler.step()
            self.ema.update(acc.unwrap_model(self.model))
        return loss_sum

    def _loss(self, forward: Callable[..., torch.Tensor], x0: torch.Tensor, labels: torch.Tensor | None, step: int):
        """The objective of one micro-batch: `training_loss`, or a distillation round's (`distill_run.py`)."""
        if self.distill is not None:
            return self.distill.loss(forward, self.schedule, x0, labels, self.generator, step)
        c = self.config
        return training_loss(
            forward,
            self.schedule,
            x0,
            labels,
            self.generator,
            weighting=c.loss_weighting,
            snr_gamma=c.snr_gamma,
            cond_drop_prob=c.cond_drop_prob,
            null_label=len(self.class_names),
        )

    def _after_step(self, step: int, end: int, loss: torch.Tensor, stop: dict) -> bool:
        """Log, checkpoint and sample after ``step`` as the settings ask; True when the run stops now."""
        c, acc = self.config, self.accelerator
        self.bar.update(1)
        self._open_outputs()
        logging = step % c.log_every == 0 or step == end  # the last step of a session is always logged
        stopping = agree_to_stop(self.accelerator, stop, logging)
        if logging or stopping:
            self._check_losses(step, loss)
            self._log_step(step, loss)
        if stopping:
            return True
        if step % c.checkpoint_every == 0 and step < self.total_steps:
            self._check_losses(step, loss)  # never a checkpoint of weights that a NaN reached
            save_checkpoint(self, step)
        if c.sample_every and step % c.sample_every == 0:
            self._check_losses(step, loss)  # on every process: they all stop, or none does
            if acc.is_main_process:
                with disk_errors(f"the samples of step {step}"):
                    self._write_samples(step)
        return False

    def _check_losses(self, step: int, loss: torch.Tensor | None = None) -> None:
        """Stop if a loss since the last check, on any process, was NaN or infinite (``loss``: that of
        ``step``); the weights it reached are never saved. Every process calls it at the same steps."""
        # Gradients are averaged: a NaN on one process reaches the weights of all.
        if step > self.checked_step and any_process(self.accelerator, self.nonfinite):
            value = loss.item() if loss is not None and step == self.checked_step + 1 else None
            if value is not None and not math.isfinite(value):
                what = f"{value} at step {step}"
            elif step == self.checked_step + 1:
                what = f"nan or infinite at step {step} on another process"
            else:
                what = f"nan or infinite at one of steps {self.checked_step + 1}-{step}"
            raise TrainingError(
                f"loss became {what}; stopped without saving it. The last checkpoint is intact: lower --lr, or "
                "try --mixed-precision no, then resume"
            )
        self.checked_step = step

    def _finish(self, step: int, stop: dict) -> Path | None:
        """Checkpoint the last step; at the end of the run, write the final model and the loss curve."""
        acc = self.accelerator
        self._open_outputs()  # when no step ran (a finished run started again), before anything is written
        self._check_losses(step)
        save_checkpoint(self, step)
        if stop["signal"] is not None:
            raise KeyboardInterrupt(f"stopped by {stop['signal']} at step {step}; checkpoint written")
        if step < self.total_steps:
            return None
        if acc.is_main_process:
            self._write_model(step)
            with disk_errors(LOSS_CURVE):
                write_loss_curve(self.out)
        acc.end_training()
        return self.out / MODEL

    # ----- outputs -----

    @property
    def class_names(self) -> list[str]:
        """The classes the model is conditioned on (label i is ``class_names[i]``); empty if unconditional."""
        return self.dataset.class_names if self.config.class_cond else []

    def ema_unet(self) -> UNet:
        """The EMA weights in a fresh fp32 UNet."""
        unet = UNet(self.unet_config)
        self.ema.copy_to(unet)
        return unet

    def _pipeline(self) -> DiffusionPipeline:
        """The EMA weights with the run's default sampler and background (a distillation run: the student of
        the round, with its steps)."""
        unet = self.ema_unet()
        if self.distill is not None:
            steps = self.distill.rounds.steps[self.distill.round]
            return self.distill.pipeline({steps: unet}, steps)
        scheduler = DPMSolverMultistepScheduler(scheduler_config(self.config))
        return DiffusionPipeline(unet, scheduler, self.class_names, self.config.background)

    def _write_samples(self, step: int) -> None:
        pipe = self._pipeline().to(self.accelerator.device)  # on the training device, not the CPU
        steps = self.config.sample_steps if self.distill is None else pipe.default_steps
        grid = write_sample_grid(self.out, pipe, step, self.config.num_samples, steps)
        if self.accelerator.log_with:
            pixels = np.asarray(grid)  # (h, w, c), or (h, w) for grayscale
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("samples", pixels.reshape(*pixels.shape[:2], -1), step, dataformats="HWC")

    def _open_outputs(self) -> None:
        """Write ``train_config.json`` and start the TensorBoard log, once: after the first step, so that a
        run failing before it (bad data, out of memory) leaves nothing in ``OUT``."""
        if self.outputs_open:
            return
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            write_json(self.out / TRAIN_CONFIG, {"train": c.to_dict(), "unet": self.unet_config.to_dict()})
        if acc.log_with:
            scalars = {k: v for k, v in c.to_dict().items() if isinstance(v, int | float | str | bool)}
            acc.init_trackers(TENSORBOARD_PROJECT, config=scalars)
        self.outputs_open = True

    def _log_step(self, step: int, loss: torch.Tensor) -> None:
        """The metrics row of ``step``: to metrics.jsonl, TensorBoard and the progress bar."""
        now = time.perf_counter()
        img_s = (step - self.tick_step) * self.config.batch_size / (now - self.tick)
        self.tick, self.tick_step = now, step
        row = {
            "step": step,
            "loss": loss.item(),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "img_per_s": round(img_s, 2),
            "epoch": round(step / self.steps_per_epoch, 4),
        }
        row |= self.skipped.metrics(self.accelerator)  # the items that did not decode, once there are any
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{img_s:.1f}")
        if self.accelerator.is_main_process:
            with disk_errors(METRICS):
                append_metrics(self.out, row)
                self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def _elapsed(self) -> float:
        """Seconds of training in this run's history: earlier sessions' plus this one's so far."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def _facts(self) -> dict:
        """What the start-up summary and the model card both say about the run."""
        acc, images = self.accelerator, self.dataset
        return {
            "config": self.config,
            # A listed folder counts the files it replaced; a decoded one has left them out already.
            "images": len(images) - (0 if getattr(images, "validated", False) else len(self.skipped.known)),
            "skipped": images.known_skipped + len(self.skipped.known),
            "class_names": self.class_names,
            "parameters": self.num_parameters,
            "device": str(acc.device),
            "processes": acc.num_processes,
        }

    def _log_summary(self, start: int, resume_from: Path | None) -> None:
        facts = self._facts() | {"total": self.total_steps, "steps_per_epoch": self.steps_per_epoch}
        for line in startup_lines(**facts, start=start, resume_from=resume_from):
            logger.info("%s", line)
        for line in length_warnings(self.config, self.total_steps):
            logger.warning("%s", line)

    def _write_model(self, step: int) -> None:
        """The final model and its card: one already in ``OUT/model`` with the same weights is left as it
        is (the user's edits kept); one with other weights is moved to ``OUT/abandoned/``."""
        pipe = self._pipeline() if self.distill is None else self.distill.final_pipeline(self)
        with disk_errors("the final model"):
            card = self._model_card(pipe, step)  # reads metrics.jsonl
        write_model(self.out, pipe, card, step)

    def _model_card(self, pipe: DiffusionPipeline, step: int) -> str:
        metrics = read_metrics(self.out / METRICS)
        return model_card(
            **self._facts(),
            unet=self.unet_config,
            unet_overrides=self.unet_overrides,
            steps=step,
            elapsed_s=self._elapsed(),
            metrics=metrics,
            sampler=pipe.scheduler_name(),
            sampler_steps=pipe.default_steps,
            guidance_scale=DEFAULT_GUIDANCE_SCALE,
            start_folder=self.start_folder,
        )


def _refuse_unused(explicit: Collection[str], unused: dict[str, str]) -> None:
    """Raise one ValueError for the ``explicit`` settings that ``unused`` says have no effect."""
    reasons = [reason for name, reason in unused.items() if name in explicit]
    if reasons:
        raise ValueError("; ".join(reasons))
