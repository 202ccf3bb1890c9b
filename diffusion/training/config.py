"""`TrainConfig`: every setting of a training run, saved as ``train_config.json`` in the output folder,
and what derives from it: the UNet config, the noise schedule (as the default sampler's config), the
run's length and the learning-rate schedule.

`TrainConfig.__post_init__` and `model_config` are where settings enter the library: they raise a
one-line ``ValueError`` for a wrong one; the code behind them asserts what they guarantee.

The command-line flags of ``train.py`` are generated from these fields (see `diffusion.cli`), so a
field's comment is also its ``--help`` text.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..config import check_types, config_from_dict, config_to_dict, validate_literals
from ..data import Background, background_with_rgba
from ..io.files import read_json
from ..io.model_folder import run_sampler
from ..models import UNet, UNetConfig, preset
from ..models.unet_config import MAX_SIDE
from ..schedulers import DPMSolverConfig
from ..schedulers.base import trailing_timesteps

# Limits that refuse, before any work, values that no run could finish or fit (docs/reliability.md).
# accelerate seeds numpy with seed + process index, which must stay below 2**32: room for 1024 processes.
MAX_TRAIN_SEED = 2**32 - 1024
MAX_NUM_WORKERS = 256  # data-loading processes; more exhaust a machine long before they help
MAX_TRAIN_TIMESTEPS = 1_000_000  # T: the noise schedule keeps a few float64 arrays of T entries
MAX_EPOCHS = 1e9  # so that epochs x steps per epoch is a finite number of steps
MAX_NUM_SAMPLES = 1024  # images of a sample grid, which training generates in one batch
MAX_PARAMETERS = 1_000_000_000  # UNet parameters: 4 GB of float32 weights, 16 GB with AdamW and gradients


DistillMethod = Literal["progressive", "consistency"]  # Salimans & Ho 2022; Song et al. 2023


@dataclass(kw_only=True)
class TrainConfig:
    """A training run. ``data`` and ``out`` are required; everything else has a default."""

    # data
    data: str = ""  # folder of images (searched recursively), prepared dataset, or Hugging Face dataset
    out: str = ""  # output folder for checkpoints, samples, logs and the final model
    image_size: tuple[int, int] | None = None  # N or HxW (height x width) to train at; None: the preset's size
    channels: Literal[1, 3, 4] = 3  # 1 grayscale, 3 RGB, 4 RGBA (alpha kept, 255 where opaque); images are converted
    background: Background = "white"  # what transparency is composited on at 1/3 channels; random: seeded, per item
    random_crop: bool = False  # random instead of center crop after resizing the shorter side
    hflip: bool = True  # random horizontal flips
    num_workers: int = 0  # data-loading worker processes
    class_cond: bool = False  # class-conditional: a class per first-level subfolder of --data (or --label-column)
    image_column: str | None = None  # Hugging Face --data: the image column; None: image, or the one Image column
    label_column: str | None = None  # Hugging Face --data: the class column for --class-cond; None: label
    cond_drop_prob: float = 0.1  # with --class-cond: chance a label becomes the null class (for guidance)
    # model
    preset: Literal["ddpm-cifar10", "small", "tiny"] = "small"  # UNet preset; its fields can be overridden
    model_config: str | None = None  # JSON file of UNetConfig fields, applied over the preset
    # optimisation
    batch_size: int = 64  # global batch: across processes and gradient-accumulation micro-steps
    grad_accum: int = 1  # micro-steps per optimiser step
    lr: float = 2e-4  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 500  # linear learning-rate warmup from 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warmup: constant, or cosine to 0
    max_steps: int | None = None  # total optimiser steps of the run (a resume continues to the same end)
    epochs: float | None = None  # or: passes over the data; with both, the run stops at the first reached
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables
    # precision and speed
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; weights, loss and EMA stay fp32
    compile: bool = False  # torch.compile the model
    fused_adamw: bool = False  # one fused AdamW kernel for all parameters: faster steps, other rounding
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    # EMA
    ema_decay: float = 0.9999  # EMA decay, warmed up as min(decay, (1 + n) / (10 + n))
    # diffusion
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"  # what the model predicts
    loss_weighting: Literal["uniform", "min-snr"] = "uniform"  # Min-SNR: Hang et al. 2023
    snr_gamma: float = 5.0  # γ of Min-SNR weighting
    num_train_timesteps: int = 1000  # T
    beta_schedule: Literal["linear", "scaled_linear", "cosine", "sigmoid"] = "linear"  # β_t schedule
    zero_terminal_snr: bool = False  # rescale betas to zero terminal SNR (pair with v_prediction)
    # distillation: progressive (Salimans & Ho 2022) or consistency (Song et al. 2023), guidance folded in (Meng
    # et al. 2023)
    distill_from: str | None = None  # teacher model (folder, checkpoint or shipped name): train a few-step student
    distill_method: DistillMethod = "progressive"  # progressive: rounds halving the steps; consistency: any step count
    distill_start_steps: int = 32  # student steps of the first round (its teacher: the model, at twice as many)
    distill_end_steps: int = 1  # student steps of the last round; each round halves them; --max-steps is shared
    distill_keep_steps: int = 4  # the model keeps the last round's student and those of this many steps or fewer
    distill_guidance_min: float = 1.0  # class-conditional teacher: the student takes w in [min, max] as an input
    distill_guidance_max: float = 2.0  # the top of that range
    distill_levels: int = 64  # consistency: levels of the teacher's ODE (trailing timesteps of T)
    # run control
    seed: int = 0  # seeds data order, augmentation, noise, timesteps and dropout
    checkpoint_every: int = 500  # steps between checkpoints (also written at the end and on Ctrl-C)
    keep_checkpoints: int = 3  # keep this many most recent checkpoints
    resume: str = "auto"  # auto: latest checkpoint in OUT if any; never; or a checkpoint path
    sample_every: int = 500  # steps between sample grids from the EMA model; 0 disables
    sample_steps: int = 20  # steps of the default sampler (DPM-Solver++ 3M SDE) for those grids
    num_samples: int = 16  # images per grid
    log_every: int = 10  # steps between metrics.jsonl lines

    def __post_init__(self) -> None:
        check_types(self, flags=True)
        validate_literals(self)
        positive = ("batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints")
        positive += ("sample_steps", "num_samples", "log_every")
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "sample_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.seed > MAX_TRAIN_SEED:
            raise ValueError(f"--seed must be at most {MAX_TRAIN_SEED} (2**32 - 1024), got {self.seed}")
        if self.num_workers > MAX_NUM_WORKERS:
            raise ValueError(f"--num-workers must be at most {MAX_NUM_WORKERS}, got {self.num_workers}")
        if not 2 <= self.num_train_timesteps <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(
                f"--num-train-timesteps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {self.num_train_timesteps}"
            )
        if self.sample_every and self.sample_steps > self.num_train_timesteps:
            raise ValueError(
                f"--sample-steps {self.sample_steps} must be at most --num-train-timesteps ({self.num_train_timesteps})"
            )
        if self.num_samples > MAX_NUM_SAMPLES:
            raise ValueError(f"--num-samples must be at most {MAX_NUM_SAMPLES} (one grid), got {self.num_samples}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size {self.batch_size} must be divisible by --grad-accum ({self.grad_accum})")
        if self.model_config == "":
            raise ValueError("--model-config was given an empty string; give a JSON file or leave it out")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be a positive integer, got {self.max_steps!r}")
        if self.epochs is not None and not 0 < self.epochs <= MAX_EPOCHS:
            raise ValueError(f"--epochs must be in (0, {MAX_EPOCHS:.0e}], got {self.epochs!r}")
        for name in ("lr", "snr_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.cond_drop_prob <= 1:
            raise ValueError(f"--cond-drop-prob must be in [0, 1], got {self.cond_drop_prob!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if self.channels == 4 and self.background != "white":
            raise ValueError(background_with_rgba(self.background, "train"))
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError(
                "--zero-terminal-snr needs --prediction-type v_prediction or sample: at zero SNR the noise "
                "prediction carries no information about the image, and sampling divides by zero"
            )
        self._check_distillation()
        if self.image_size is not None and not (
            isinstance(self.image_size, tuple | list)
            and len(self.image_size) == 2
            and all(type(side) is int and 1 <= side <= MAX_SIDE for side in self.image_size)
        ):
            raise ValueError(f"--image-size must be N or HxW with sides in [1, {MAX_SIDE}], got {self.image_size!r}")

    def _check_distillation(self) -> None:
        """A guidance range; consistency: levels within T; progressive: round step counts that halve from start to
        end, and a positive kept count."""
        start, end, keep = self.distill_start_steps, self.distill_end_steps, self.distill_keep_steps
        if self.distill_from == "":
            raise ValueError("--distill-from was given an empty string; give the teacher model or leave it out")
        if self.distill_from is None:
            return  # unused; train.py refuses the ones typed (`unused_settings`)
        low, high = self.distill_guidance_min, self.distill_guidance_max
        if not 0 <= low <= high or not math.isfinite(high):
            raise ValueError(f"the guidance range must satisfy 0 <= --distill-guidance-min <= max, got [{low}, {high}]")
        if self.distill_method == "consistency":
            if not 1 <= self.distill_levels <= self.num_train_timesteps:
                raise ValueError(
                    f"--distill-levels must be in [1, {self.num_train_timesteps}] (--num-train-timesteps), "
                    f"got {self.distill_levels}"
                )
            return  # the round flags are progressive distillation's; train.py refuses the ones typed
        if not 1 <= end <= start <= self.num_train_timesteps // 2:
            raise ValueError(
                f"--distill-start-steps {start} and --distill-end-steps {end} must satisfy 1 <= end <= start <= "
                f"{self.num_train_timesteps // 2} (half of --num-train-timesteps)"
            )
        if start % end or (start // end) & (start // end - 1):
            raise ValueError(
                f"--distill-start-steps {start} must be --distill-end-steps {end} times a power of 2 (each round "
                f"halves the steps), e.g. {end * 2 ** max(0, (start // end).bit_length() - 1)}"
            )
        if keep < 1:
            raise ValueError(f"--distill-keep-steps must be a positive integer, got {keep}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, data)


def model_config(config: TrainConfig, unet_overrides: dict | None = None, num_processes: int = 1) -> UNetConfig:
    """The preset, overridden by ``--model-config`` JSON, by UNet flags, then by the data's channels and size.
    ``num_processes`` share each batch: one forward pass holds ``batch_size / grad_accum / num_processes``.

    Raises:
        ValueError: for a batch the processes cannot share evenly, a bad override, a micro-batch too large
            for one forward pass (`UNetConfig.check_forward_size`), or a UNet over `MAX_PARAMETERS`.
    """
    overrides = read_json(config.model_config) if config.model_config else {}
    overrides |= unet_overrides or {}
    overrides["in_channels"] = config.channels
    if config.image_size is not None:
        overrides["sample_size"] = tuple(config.image_size)
    if overrides.get("out_channels") not in (None, config.channels):
        raise ValueError(f"out_channels must equal --channels ({config.channels}) for training a denoiser")
    if overrides.get("guidance_embedding"):
        raise ValueError("guidance_embedding is for a guidance-distilled student, which --distill-from trains")
    if overrides.get("num_classes") is not None:
        raise ValueError(
            "num_classes comes from the data: use --class-cond, which makes one class per first-level subfolder"
        )
    try:
        unet = UNetConfig.from_dict({**preset(config.preset).to_dict(), **overrides})
    except TypeError as e:
        source = f"--model-config {config.model_config}" if config.model_config else "the UNet flags"
        raise ValueError(f"{source}: a value has the wrong type ({e})") from None
    check_batches(config, unet, num_processes)
    with torch.device("meta"):  # counts the parameters without allocating them
        parameters = sum(p.numel() for p in UNet(unet).parameters())
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"this UNet would have {parameters:,} parameters, over the limit of {MAX_PARAMETERS:,}: lower "
            "--base-channels, --channel-mult or --num-res-blocks"
        )
    return unet


def check_batches(config: TrainConfig, unet: UNetConfig, num_processes: int) -> None:
    """Refuse a batch the processes cannot share evenly, or a forward pass (a micro-batch, a sample grid)
    too large for ``unet`` (`UNetConfig.check_forward_size`)."""
    if config.batch_size % (config.grad_accum * num_processes):
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by --grad-accum ({config.grad_accum}) times the "
            f"number of processes ({num_processes})"
        )
    height, width = unet.sample_size
    unet.check_forward_size(
        max(1, config.batch_size // config.grad_accum // num_processes),
        height,
        width,
        "lower --batch-size, raise --grad-accum, or lower --image-size or --base-channels",
    )
    if config.sample_every:  # the sample grids are generated in one batch, with both guidance branches
        rows = config.num_samples * (2 if config.class_cond else 1)
        unet.check_forward_size(rows, height, width, "lower --num-samples, or --sample-every 0")


def unused_settings(
    config: TrainConfig, unet: UNetConfig, total_steps: int | None = None, exact: bool = True
) -> dict[str, str]:
    """The settings that would have no effect in this run, each mapped to why, naming the setting that
    makes it so and the way out. Those that depend on the run's length are checked when ``total_steps``
    is given; with ``exact=False`` it is an upper bound (``--max-steps`` before ``--epochs`` is known).
    ``train.py`` refuses the ones its user typed (a default is never refused). A warmup longer than the
    run, or a cosine schedule inside it, still sets every step's learning rate: the trainer warns instead.
    """
    found = _distillation_unused(config)
    if config.channels == 4:  # white, the default, is the only background TrainConfig lets through
        found["background"] = background_with_rgba(config.background, "train")
    run = f"the run ({'' if exact else 'at most '}{total_steps} steps)"
    if not config.class_cond:
        found["cond_drop_prob"] = (
            "--cond-drop-prob has no effect without --class-cond: add --class-cond, or leave it out"
        )
    if config.loss_weighting != "min-snr":
        found["snr_gamma"] = (
            f"--snr-gamma has no effect with --loss-weighting {config.loss_weighting}: add --loss-weighting "
            "min-snr, or leave it out"
        )
    grids = ("sample_steps", "num_samples")
    if not config.sample_every:
        for name in grids:
            found[name] = (
                f"--{name.replace('_', '-')} has no effect with --sample-every 0 (no sample grids): leave it out, "
                "or give --sample-every N"
            )
    elif total_steps is not None and config.sample_every > total_steps:
        why = f"--sample-every {config.sample_every} is longer than {run}: no grid is written"
        found["sample_every"] = f"{why}; lower it, or --sample-every 0 to write none"
        for name in grids:
            found[name] = f"--{name.replace('_', '-')} has no effect: {why}; lower --sample-every, or leave it out"
    if not unet.attention_levels and not unet.mid_attention:
        for name in ("num_heads", "head_channels"):
            found[name] = (
                f"--{name.replace('_', '-')} has no effect: this UNet has no attention (--attention-levels is "
                "empty and --no-mid-attention); give --attention-levels, or leave it out"
            )
    elif unet.head_channels is not None:
        found["num_heads"] = (
            f"--num-heads has no effect while head_channels is {unet.head_channels} (from --head-channels, "
            f"--model-config or --preset {config.preset}): heads are channels // head_channels. To set the number of "
            'heads, leave out --head-channels and give --model-config FILE with {"head_channels": null} (or use '
            "--preset ddpm-cifar10, which counts heads)"
        )
    if len(unet.channel_mult) == 1:
        for name in ("resample", "downsample_padding"):
            found[name] = (
                f"--{name.replace('_', '-')} has no effect: with one level (--channel-mult "
                f"{unet.channel_mult[0]}) the UNet never down- or upsamples; give more levels, or leave it out"
            )
    elif unet.resample == "resblock":
        found["downsample_padding"] = (
            "--downsample-padding has no effect with --resample resblock (it pads strided-conv downsampling): "
            "use --resample conv, or leave it out"
        )
    return found


# What a student takes from its teacher (`distill_run.student_settings`): its UNet, data format and noise schedule.
FROM_TEACHER = ("preset", "model_config", "image_size", "channels", "background", "class_cond", "prediction_type")
FROM_TEACHER += ("num_train_timesteps", "beta_schedule", "zero_terminal_snr", "loss_weighting", "snr_gamma")


def _distillation_unused(config: TrainConfig) -> dict[str, str]:
    """The distillation flags without ``--distill-from``; with it, the settings the student takes from the teacher."""
    if config.distill_from is None:
        names = [f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("distill_")]
        why = "has no effect without --distill-from: add it, or leave it out"
        return {n: f"--{n.replace('_', '-')} {why}" for n in names}
    why = "has no effect with --distill-from: the student has its teacher's UNet, images and noise schedule"
    names = list(FROM_TEACHER) + [f.name for f in dataclasses.fields(UNetConfig)]
    found = {n: f"--{n.replace('_', '-')} {why}; leave it out" for n in names}
    found["sample_steps"] = "--sample-steps has no effect with --distill-from: a round's grid uses its student's steps"
    if config.distill_method == "consistency":
        for name in ("distill_start_steps", "distill_end_steps", "distill_keep_steps"):
            found[name] = (
                f"--{name.replace('_', '-')} has no effect with --distill-method consistency (one student samples "
                "with any step count): leave it out, or use --distill-method progressive"
            )
    else:
        found["distill_levels"] = (
            "--distill-levels has no effect with --distill-method progressive (its rounds set the levels): leave it "
            "out, or use --distill-method consistency"
        )
    if not config.class_cond:  # `student_settings` has set it from the teacher
        for name in ("distill_guidance_min", "distill_guidance_max", "cond_drop_prob"):
            found[name] = f"--{name.replace('_', '-')} has no effect: the teacher is unconditional; leave it out"
    return found


def scheduler_config(config: TrainConfig) -> DPMSolverConfig:
    """The run's noise schedule, as its default sampler's config (`model_folder.run_sampler`)."""
    return run_sampler(config.to_dict()).config


def round_steps(config: TrainConfig) -> tuple[int, ...]:
    """The student steps of each round: --distill-start-steps halved down to --distill-end-steps."""
    steps, n = [], config.distill_start_steps
    while n >= config.distill_end_steps:
        steps.append(n)
        n //= 2
    return tuple(steps)


def kept_steps(config: TrainConfig) -> tuple[int, ...]:
    """The step counts whose students the final model keeps: the last round's, and --distill-keep-steps or fewer."""
    steps = round_steps(config)
    return tuple(sorted({steps[-1], *(n for n in steps if n <= config.distill_keep_steps)}))


def consistency_steps(config: TrainConfig) -> tuple[int, ...]:
    """The step counts a consistency student's record recommends, the largest its default (and its grids'):
    those of 1, 2 and 4 whose trailing timesteps are among the ``--distill-levels`` it trained on."""
    return tuple(n for n in (1, 2, 4) if nested(config.num_train_timesteps, config.distill_levels, n))


def nested(T: int, fine: int, coarse: int) -> bool:
    """Whether the trailing timesteps of ``coarse`` steps are every (fine / coarse)-th of those of ``fine``."""
    stride, rest = divmod(fine, coarse)
    return not rest and np.array_equal(trailing_timesteps(T, fine)[::stride], trailing_timesteps(T, coarse))


def epoch_steps(epochs: float, steps_per_epoch: float) -> int:
    """The optimiser steps of ``epochs`` passes over the data: at least one."""
    return max(1, math.ceil(epochs * steps_per_epoch))


def total_steps(config: TrainConfig, steps_per_epoch: float) -> int:
    """The run's length in optimiser steps: ``--max-steps`` or ``--epochs``, whichever ends it first."""
    lengths = [] if config.max_steps is None else [config.max_steps]
    if config.epochs is not None:
        lengths.append(epoch_steps(config.epochs, steps_per_epoch))
    assert lengths, "Trainer refuses a run without --max-steps or --epochs"
    return min(lengths)


def lr_factor(step: int, config: TrainConfig, total: int) -> float:
    """Linear warmup to 1, then constant or cosine decay to 0 at ``total``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0
