"""The training loop, on accelerate: the only module that imports it.

One optimiser step: ``grad_accum`` micro-batches (noise and timesteps from a dedicated generator,
the loss in float32, backward under accelerate's precision handling), gradient clipping, AdamW, the
learning-rate schedule, and the fp32 EMA. Checkpoints restore everything the next step depends on
(weights, EMA, optimiser, LR schedule, grad scaler, step, every RNG), and the data order is a function
of the step (see `sampler.py`), so a resumed run reproduces the uninterrupted one bit for bit on CPU.
"""

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import ImageFolder, printable
from ..image import make_grid, save_png
from ..io.checkpoint import (
    begin_checkpoint,
    check_resume_path,
    commit_checkpoint,
    is_own_checkpoint,
    load_pickle_free,
    pending_checkpoint,
    read_state,
    resolve_resume,
)
from ..io.files import check_writable, save_safetensors, write_json, write_text
from ..io.weights import load_weights, save_weights
from ..models import UNet
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline
from ..schedulers import DEFAULT_STEPS, DPMSolverMultistepScheduler, NoiseSchedule
from .config import TrainConfig, lr_factor, model_config, scheduler_config, unused_settings
from .ema import EMA
from .errors import TrainingError
from .loss import diffusion_loss, drop_labels
from .outputs import (
    LOSS_CURVE,
    METRICS,
    MODEL,
    SAMPLES,
    TENSORBOARD_PROJECT,
    TRAIN_CONFIG,
    abandon_after,
    abandon_all,
    adopt_checkpoint,
    check_model_target,
    install_model,
    read_metrics,
    trim_metrics,
)
from .plot import loss_curve
from .report import model_card, startup_lines
from .safety import disk_errors, install_stop_handlers, restore_handlers
from .sampler import StepBatchSampler

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
        self.out = Path(config.out)
        check_model_target(self.out)
        check_writable(self.out)
        # accelerate keeps its settings in a process-wide singleton; forget them so that a second run in
        # the same process (tests, notebooks) can choose another precision. The process group stays.
        AcceleratorState._reset_state()
        try:
            self.accelerator = Accelerator(
                mixed_precision=config.mixed_precision,
                log_with="tensorboard" if _has_tensorboard() else None,
                project_dir=str(self.out),
            )
        except ValueError as e:
            raise ValueError(f"--mixed-precision {config.mixed_precision}: {e}") from None
        self.unet_config = model_config(config, unet_overrides, self.accelerator.num_processes)
        if config.max_steps is None and config.epochs is None:
            raise ValueError("give --max-steps or --epochs to say how long to train")
        # What can be refused before the scan is: the run is at most --max-steps long.
        _refuse_unused(
            explicit, unused_settings(config, self.unet_config, config.max_steps, exact=config.epochs is None)
        )
        check_resume_path(config.resume)
        size = self.unet_config.sample_size
        if self.accelerator.is_main_process and Path(config.data).is_dir():  # else the scan says so at once
            logger.info("scanning %s for images ...", config.data)
        self.dataset = ImageFolder(
            config.data, size, config.channels, random_crop=config.random_crop, hflip=config.hflip
        )
        if config.class_cond:
            if self.dataset.report.labels is None:
                top = sum(len(p.relative_to(config.data).parts) == 1 for p in self.dataset.report.files)
                raise ValueError(
                    f"--class-cond needs every image in a class subfolder of {config.data} (DATA/<class>/...); "
                    f"{top} image(s) are at its top level"
                )
            self.unet_config = dataclasses.replace(self.unet_config, num_classes=len(self.dataset.class_names))
        self.steps_per_epoch = len(self.dataset) / config.batch_size
        self.total_steps = self._total_steps()
        _refuse_unused(explicit, unused_settings(config, self.unet_config, self.total_steps))

    def _total_steps(self) -> int:
        c = self.config
        candidates = [c.max_steps] if c.max_steps is not None else []
        if c.epochs is not None:
            candidates.append(max(1, math.ceil(c.epochs * self.steps_per_epoch)))
        return min(candidates)

    # ----- checkpoints -----

    def _save_checkpoint(self, step: int) -> None:
        """Write ``checkpoints/step-N``; a failed write (disk full, permissions) is a `TrainingError`.

        A step already on disk in this ``OUT`` is not written again (a loop that ended on a checkpoint, a
        finished run started again): replacing a complete checkpoint is the one write a crash could spoil.
        """
        if step == self.saved_step:
            return
        try:
            with disk_errors(f"the checkpoint of step {step}"):
                self._write_checkpoint(step)
        except TrainingError:
            if self.accelerator.is_main_process:
                shutil.rmtree(pending_checkpoint(self.out, step), ignore_errors=True)  # give the space back
            raise
        self.saved_step = step

    def _write_checkpoint(self, step: int) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            begin_checkpoint(self.out, step)
        acc.wait_for_everyone()
        tmp = pending_checkpoint(self.out, step)
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_safetensors(tmp / f"rng-{acc.process_index}.safetensors", rng)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_weights(acc.unwrap_model(self.model), tmp)
            save_safetensors(tmp / "ema.safetensors", self.ema.state_dict())
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "lr_scheduler": self.lr_scheduler.state_dict(),
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else {},
                },
                tmp / "optimizer.pt",
            )
            state = {
                "step": step,
                "world_size": acc.num_processes,
                "dataset_size": len(self.dataset),
                "config": self.config.to_dict(),
                "unet": self.unet_config.to_dict(),
                "class_names": self.class_names,
                "manifest": True,  # so that a step-N without its manifest.json is known to be damaged
                "elapsed_s": round(self._elapsed(), 3),  # training time of this history, summed over resumes
            }
            write_json(tmp / "trainer_state.json", state)
            commit_checkpoint(tmp, self.config.keep_checkpoints)
            logger.info("checkpoint written: %s", tmp.with_name(f"step-{step}"))
        acc.wait_for_everyone()

    def _check_same_run(self, path: Path, state: dict) -> None:
        """Refuse to continue a checkpoint under settings that would make it a different run."""
        # A setting added after the checkpoint was written had its default then.
        saved, now = TrainConfig().to_dict() | state["config"], self.config.to_dict()
        ignored = RESUMABLE_CHANGES | (set() if now["class_cond"] else {"cond_drop_prob"})  # unused unconditionally
        differ = [
            f"--{k.replace('_', '-')} {saved[k]!r} -> {now[k]!r}"
            for k in now
            if k not in ignored and saved[k] != now[k]
        ]
        if state.get("unet", self.unet_config.to_dict()) != self.unet_config.to_dict():
            differ.append("the UNet config")
        if state.get("class_names", self.class_names) != self.class_names:
            differ.append(f"the class subfolders ({state['class_names']} -> {self.class_names})")
        if state.get("dataset_size", len(self.dataset)) != len(self.dataset):
            differ.append(f"the number of images ({state['dataset_size']} -> {len(self.dataset)}){self._passed_over()}")
        if differ:
            raise ValueError(
                f"checkpoint {path} was written with other settings: {'; '.join(differ)}. To start a new run, use a "
                f"new --out (or --resume never, which moves this run to {self.out / 'abandoned'}/ and starts over); "
                "to continue this one, use the same settings"
            )

    def _passed_over(self) -> str:
        """Why the images may number fewer than an older version counted: the entries the scan passes over."""
        passed = self.dataset.report.passed_over
        if not passed:
            return ""
        names = [printable(p.relative_to(self.config.data).as_posix()) for p in passed]
        return (
            f" (this version passes over {len(passed)} hidden or tool-made entries such as {', '.join(names[:3])}; "
            "move them out of the data folder, or use a new --out)"
        )

    def _load_checkpoint(self, path: Path) -> int:
        acc = self.accelerator
        state = read_state(path)
        self._check_same_run(path, state)
        if state["world_size"] != acc.num_processes:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} process(es); resume it with the same "
                f"number (this run has {acc.num_processes})"
            )
        load_weights(acc.unwrap_model(self.model), path, "model")
        self.ema.load_state_dict(load_file(path / "ema.safetensors"))
        saved = load_pickle_free(path / "optimizer.pt")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        if acc.scaler is not None and saved["scaler"]:
            acc.scaler.load_state_dict(saved["scaler"])
        rng = load_file(path / f"rng-{acc.process_index}.safetensors")
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))  # absent from checkpoints of older versions
        return int(state["step"])

    # ----- outputs -----

    @property
    def class_names(self) -> list[str]:
        """The classes the model is conditioned on (label i is ``class_names[i]``); empty if unconditional."""
        return self.dataset.class_names if self.config.class_cond else []

    def _pipeline(self) -> DiffusionPipeline:
        """The EMA weights in a fresh fp32 UNet, with the run's default sampler."""
        unet = UNet(self.unet_config)
        self.ema.copy_to(unet)
        scheduler = DPMSolverMultistepScheduler(scheduler_config(self.config))
        return DiffusionPipeline(unet, scheduler, self.class_names)

    def _write_samples(self, step: int) -> None:
        c = self.config
        pipe = self._pipeline().to(self.accelerator.device)  # on the training device, not the CPU
        # A class-conditional grid cycles through the classes, guided at the pipeline's default scale.
        labels = [i % len(self.class_names) for i in range(c.num_samples)] if self.class_names else None
        images = pipe(num_images=c.num_samples, num_inference_steps=c.sample_steps, seed=0, class_labels=labels)
        meta = {"step": str(step), "sampler": pipe.scheduler_name(), "steps": str(c.sample_steps), "seed": "0"}
        (self.out / SAMPLES).mkdir(exist_ok=True)
        grid = make_grid(images)
        save_png(grid, self.out / SAMPLES / f"step-{step}.png", meta)
        if self.accelerator.log_with:
            pixels = np.asarray(grid)  # (h, w, c), or (h, w) for grayscale
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("samples", pixels.reshape(*pixels.shape[:2], -1), step, dataformats="HWC")

    def _log(self, row: dict) -> None:
        with open(self.out / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

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

    def _elapsed(self) -> float:
        """Seconds of training in this run's history: earlier sessions' plus this one's so far."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def _log_summary(self, parameters: int, start: int, resume_from: Path | None) -> None:
        lines = startup_lines(
            config=self.config,
            images=len(self.dataset),
            skipped=len(self.dataset.report.skipped),
            class_names=self.class_names,
            parameters=parameters,
            device=str(self.accelerator.device),
            processes=self.accelerator.num_processes,
            total=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            start=start,
            resume_from=resume_from,
        )
        for line in lines:
            logger.info("%s", line)
        c = self.config
        if c.warmup_steps > self.total_steps:
            logger.warning(
                "the learning rate warms up over %d steps (--warmup-steps), longer than this run (%d steps): it never "
                "reaches --lr %g; lower --warmup-steps",
                c.warmup_steps,
                self.total_steps,
                c.lr,
            )
        if c.lr_schedule == "cosine" and c.warmup_steps >= self.total_steps:
            logger.warning(
                "--lr-schedule cosine decays the learning rate after the warmup (%d steps), which lasts this whole "
                "run (%d steps): it decays only if the run is extended past the warmup; lower --warmup-steps",
                c.warmup_steps,
                self.total_steps,
            )

    # ----- the loop -----

    def train(self, stop_at_step: int | None = None, progress: bool = False) -> Path | None:
        """Train to ``total_steps`` and return the final model folder.

        With ``stop_at_step``, stop there instead (as an interruption would): write a checkpoint and
        return None; running again with ``resume="auto"`` continues the same run. ``progress`` shows a
        tqdm bar (loss, learning rate, img/s, ETA) on the main process.
        """
        c, acc = self.config, self.accelerator
        set_seed(c.seed + acc.process_index)  # dropout draws from torch's global RNG
        self.generator = torch.Generator().manual_seed(c.seed * 7919 + acc.process_index)
        model = UNet(self.unet_config)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=c.fused_adamw or None
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, c, self.total_steps))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema = EMA(acc.unwrap_model(self.model), c.ema_decay)  # after prepare: on the training device
        schedule = NoiseSchedule(scheduler_config(c))

        start, self.saved_step, self.elapsed_before, self.outputs_open = 0, None, 0.0, False
        # The main process checks the checkpoints (and renames damaged ones); the others take its choice.
        choice = [resolve_resume(self.out, c.resume) if acc.is_main_process else None]
        if acc.num_processes > 1:
            broadcast_object_list(choice)
        resume_from = choice[0]
        if resume_from is not None:
            start = self._load_checkpoint(resume_from)
            self.saved_step = start  # OUT/checkpoints/step-N is that checkpoint, or will be a copy of it
            logger.info("resuming from %s (step %d)%s", resume_from, start, " [--resume auto]" * (c.resume == "auto"))
        if acc.is_main_process:
            # This run continues from `start`: what a previous run left beyond it is another history, moved
            # to OUT/abandoned/ (never deleted), so that --resume auto and the metrics never mix two.
            if c.resume == "never":
                abandon_all(self.out)
            elif resume_from is None:  # nothing to resume (checkpoints deleted, a link to an unmounted disk)
                abandon_all(self.out, "no-checkpoint")
            elif not is_own_checkpoint(self.out, resume_from, start):
                adopt_checkpoint(self.out, resume_from, start, c.keep_checkpoints)
            else:
                abandon_after(self.out, start)
            trim_metrics(self.out, start)
            self._log_summary(sum(p.numel() for p in model.parameters()), start, resume_from)
        acc.wait_for_everyone()
        forward = torch.compile(self.model) if c.compile else self.model
        if c.gradient_checkpointing:
            acc.unwrap_model(self.model).gradient_checkpointing = True

        sampler = StepBatchSampler(
            len(self.dataset),
            batch_size=c.batch_size,
            grad_accum=c.grad_accum,
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=c.seed,
            start_step=start,
            end_step=self.total_steps,
        )
        # Its own generator: creating a DataLoader iterator otherwise draws from torch's global RNG,
        # which dropout also uses, and a resume would shift that stream.
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=c.num_workers, generator=torch.Generator())
        loader = iter(loader)

        stop = {"signal": None}
        handlers = install_stop_handlers(stop)
        bar = tqdm(total=self.total_steps, initial=start, disable=not (progress and acc.is_main_process), desc="train")
        step, tick, tick_step = start, time.perf_counter(), start
        self.session_start = tick
        try:
            end = min(self.total_steps, stop_at_step or self.total_steps)
            while step < end:
                loss_sum = torch.zeros((), dtype=torch.float32)
                for micro in range(c.grad_accum):
                    x0, labels = next(loader)
                    x0 = x0.to(acc.device)
                    if c.class_cond:  # drawn only here, so unconditional runs keep their random streams
                        labels = drop_labels(labels, len(self.class_names), c.cond_drop_prob, self.generator)
                    labels = labels.to(acc.device) if c.class_cond else None
                    noise = torch.randn(x0.shape, generator=self.generator).to(acc.device)
                    t = torch.randint(0, c.num_train_timesteps, (x0.shape[0],), generator=self.generator)
                    t = t.to(acc.device)
                    noisy = schedule.add_noise(x0, noise, t)
                    target = schedule.training_target(x0, noise, t)
                    sync = micro == c.grad_accum - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                        output = forward(noisy, t, labels)
                        loss = diffusion_loss(
                            output,
                            target,
                            schedule.snr(t),
                            prediction_type=c.prediction_type,
                            weighting=c.loss_weighting,
                            snr_gamma=c.snr_gamma,
                        )
                        acc.backward(loss / c.grad_accum)
                    loss_sum += loss.detach().float().cpu() / c.grad_accum
                if not torch.isfinite(loss_sum):
                    raise TrainingError(
                        f"loss became {loss_sum.item()} at step {step + 1}; stopped without saving it. The last "
                        "checkpoint is intact: lower --lr, or try --mixed-precision no, then resume"
                    )
                if c.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if not acc.optimizer_step_was_skipped:  # fp16: the grad scaler skips steps with inf gradients
                    self.lr_scheduler.step()
                    self.ema.update(acc.unwrap_model(self.model))
                step += 1
                bar.update(1)
                self._open_outputs()
                if stop["signal"] is not None:
                    acc.set_trigger()
                stopping = acc.check_trigger()  # every process stops after the same step, or none does
                if stopping:
                    stop["signal"] = stop["signal"] or "a signal on another process"

                # The last step of this session is always logged: a stop or an interruption too.
                if step % c.log_every == 0 or step == end or stopping:
                    now = time.perf_counter()
                    img_s = (step - tick_step) * c.batch_size / (now - tick)
                    tick, tick_step = now, step
                    row = {
                        "step": step,
                        "loss": loss_sum.item(),
                        "lr": self.lr_scheduler.get_last_lr()[0],
                        "img_per_s": round(img_s, 2),
                        "epoch": round(step / self.steps_per_epoch, 4),
                    }
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{img_s:.1f}")
                    if acc.is_main_process:
                        with disk_errors("metrics.jsonl"):
                            self._log(row)
                if stopping:
                    break  # the checkpoint is written below
                if step % c.checkpoint_every == 0 and step < self.total_steps:
                    self._save_checkpoint(step)
                if c.sample_every and step % c.sample_every == 0 and acc.is_main_process:
                    with disk_errors(f"the samples of step {step}"):
                        self._write_samples(step)
        finally:
            bar.close()
            restore_handlers(handlers)

        self._open_outputs()  # when no step ran (a finished run started again), before anything is written
        self._save_checkpoint(step)
        if stop["signal"] is not None:
            raise KeyboardInterrupt(f"stopped by {stop['signal']} at step {step}; checkpoint written")
        if step < self.total_steps:
            return None
        model_dir = self.out / MODEL
        if acc.is_main_process:
            self._write_model(step)
            with disk_errors(LOSS_CURVE):
                self._write_loss_curve()
        acc.end_training()
        return model_dir

    def _write_model(self, step: int) -> None:
        """Write the final model and its card (``README.md``, outside the weights' manifest) whole under a
        temporary name, then rename it: ``OUT/model`` is never half-written. One already there with the
        same weights is left as it is (the user's edits kept); one with other weights is moved to
        ``OUT/abandoned/`` (see `install_model`)."""
        tmp = self.out / ".tmp-model"
        try:
            with disk_errors("the final model"):
                shutil.rmtree(tmp, ignore_errors=True)
                pipe = self._pipeline()
                pipe.save_pretrained(tmp)
                write_text(tmp / "README.md", self._model_card(pipe, step))
                install_model(self.out, tmp, step)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # after a failure: give the space back

    def _model_card(self, pipe: DiffusionPipeline, step: int) -> str:
        return model_card(
            config=self.config,
            unet=self.unet_config,
            unet_overrides=self.unet_overrides,
            class_names=self.class_names,
            parameters=sum(p.numel() for p in pipe.unet.parameters()),
            images=len(self.dataset),
            skipped=len(self.dataset.report.skipped),
            steps=step,
            elapsed_s=self._elapsed(),
            metrics=read_metrics(self.out / METRICS),
            processes=self.accelerator.num_processes,
            device=str(self.accelerator.device),
            sampler=pipe.scheduler_name(),
            sampler_steps=DEFAULT_STEPS,
            guidance_scale=DEFAULT_GUIDANCE_SCALE,
        )

    def _write_loss_curve(self) -> None:
        rows = read_metrics(self.out / METRICS)
        loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], self.out / LOSS_CURVE)


def _refuse_unused(explicit: Collection[str], unused: dict[str, str]) -> None:
    """Raise one ValueError for the ``explicit`` settings that ``unused`` says have no effect."""
    reasons = [reason for name, reason in unused.items() if name in explicit]
    if reasons:
        raise ValueError("; ".join(reasons))


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
