"""What a run tells people about itself: the start-up summary and warnings it logs, and the model card
(``README.md``) it writes into ``OUT/model``, with a ``train.py`` command rebuilt from its config. The
card's paths are relative to the folder the run started in, so that it reads the same in any checkout."""

import dataclasses
import os
import shlex
from pathlib import Path

from .. import __version__
from ..io.sampling_record import SamplingRecord
from ..models import UNetConfig
from .config import FROM_TEACHER, TrainConfig, consistency_steps, epoch_steps, kept_steps, round_steps

PRECISIONS = {"no": "fp32", "bf16": "bf16 autocast (weights fp32)", "fp16": "fp16 autocast (weights fp32)"}
SHOWN_CLASSES = 10  # class names in the start-up summary; the model card lists every one


def class_list(names: list[str], limit: int | None = None) -> str:
    """``2 (cats, dogs)``; past ``limit`` names, the rest is counted: ``40 (a, b, ... and 38 more)``."""
    shown = names if limit is None or len(names) <= limit else names[:limit]
    more = f" ... and {len(names) - len(shown)} more" if len(shown) < len(names) else ""
    return f"{len(names)} ({', '.join(shown)}{more})"


def length_source(config: TrainConfig, total: int, steps_per_epoch: float) -> str:
    """Which flag set the run's length, and what the other one would have given."""
    if config.max_steps is None:
        return f"--epochs {config.epochs:g} at {steps_per_epoch:g} steps per epoch"
    if config.epochs is None:
        return f"--max-steps {config.max_steps}"
    by_epochs = epoch_steps(config.epochs, steps_per_epoch)
    first = "--max-steps" if config.max_steps == total else "--epochs"
    return f"{first} is reached first: --max-steps {config.max_steps}, --epochs {config.epochs:g} = {by_epochs} steps"


def startup_lines(
    *,
    config: TrainConfig,
    images: int,
    skipped: int,
    class_names: list[str],
    parameters: int,
    device: str,
    processes: int,
    total: int,
    steps_per_epoch: float,
    start: int,
    resume_from: Path | None,
) -> list[str]:
    """The summary logged before the first step, one item per line."""
    classes = class_list(class_names, SHOWN_CLASSES) if class_names else "none (unconditional)"
    unet = f"UNet: {parameters:,} parameters (preset {config.preset}"
    unet += f", --model-config {config.model_config})" if config.model_config else ")"
    if config.distill_from:
        unet = f"UNet: {parameters:,} parameters (the teacher's, {config.distill_from})"
    if resume_from is None:
        where = "a new run from step 0"
    else:
        where = f"resuming from {resume_from} at step {start} ({total - start} to go)"
    return [
        f"images: {images} found under {config.data} ({skipped} skipped)",
        f"classes: {classes}",
        unet,
        f"device: {device} x {processes} process(es); precision: {PRECISIONS[config.mixed_precision]}; "
        f"seed: {config.seed}",
        f"output folder: {config.out}",
        f"steps: {total} in total ({length_source(config, total, steps_per_epoch)}); {where}",
    ]


def length_warnings(config: TrainConfig, total: int) -> list[str]:
    """Learning-rate settings this run's length makes odd (the run still uses them): one line each."""
    found = []
    if config.warmup_steps > total:
        found.append(
            f"the learning rate warms up over {config.warmup_steps} steps (--warmup-steps), longer than this run "
            f"({total} steps): it never reaches --lr {config.lr:g}; lower --warmup-steps"
        )
    if config.lr_schedule == "cosine" and config.warmup_steps >= total:
        found.append(
            f"--lr-schedule cosine decays the learning rate after the warmup ({config.warmup_steps} steps), which "
            f"lasts this whole run ({total} steps): it decays only if the run is extended past the warmup; lower "
            "--warmup-steps"
        )
    return found


# ----- the model card -----


def _flag(name: str, value: object) -> list[str]:
    """The argument words that make ``train.py`` parse ``value`` for field ``name``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if name in ("image_size", "sample_size"):
        return ["--image-size", f"{value[0]}x{value[1]}"]
    if isinstance(value, tuple | list):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, str(value)]  # str() of a float reads back as the same float


def train_command(config: TrainConfig, unet_overrides: dict | None = None, processes: int = 1, width: int = 0) -> str:
    """A shell command that runs ``train.py`` with ``config`` and the UNet flags in ``unet_overrides``:
    every field that differs from its default (``--data`` and ``--out`` always; ``--resume`` never).
    With ``width``, lines of about that length, broken before a flag and continued with a backslash."""
    words = ["python", "train.py"]
    if processes > 1:
        words = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), "train.py"]
    defaults = TrainConfig()
    inherited = FROM_TEACHER if config.distill_from else ()  # train.py refuses them with --distill-from
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in inherited:
            continue
        if field.name in ("data", "out") or (field.name != "resume" and value != getattr(defaults, field.name)):
            words += _flag(field.name, value)
    overrides = unet_overrides or {}
    for field in dataclasses.fields(UNetConfig):  # those train.py has no flag for follow from --channels
        value = overrides.get(field.name)
        if value is None or field.name in ("in_channels", "out_channels", "num_classes"):
            continue
        if field.name == "sample_size" and config.image_size is not None:
            continue  # --image-size wins over it
        words += _flag(field.name, value)
    units = [shlex.quote(words[0])]  # a flag with its value, kept on one line
    for word in map(shlex.quote, words[1:]):
        if word.startswith("--"):
            units.append(word)
        else:
            units[-1] += " " + word
    lines = [units[0]]
    for unit in units[1:]:
        if width and len(lines[-1]) + 1 + len(unit) > width:
            lines.append("   ")
        lines[-1] += " " + unit
    return " \\\n".join(lines)


def duration(seconds: float) -> str:
    """``12.3 s``, ``39 min 48 s`` or ``2 h 05 min 09 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {s:02d} s" if hours else f"{minutes} min {s:02d} s"


def working_folder() -> str | None:
    """The current folder, which the card's paths are relative to; None if it is gone (deleted under us)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def portable(path: str, start: str | None) -> str:
    """``path`` as it works in any checkout: relative to ``start``, the folder the run started in
    (``data/cats``, or ``../data/cats``), rather than one machine's absolute folders, where it can be."""
    if start is None or not Path(path).is_absolute():
        return path
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except (ValueError, OSError):  # another drive on Windows (no relative path leads there), a folder gone
        return path


def folder_name(path: str, start: str | None) -> str:
    """The name of the folder ``path`` (relative to ``start``) leads to: ``cats`` for ``/data/cats``, for
    ``.`` run inside it, or for ``..`` run inside ``cats/train``."""
    try:
        return Path(start or "", path).resolve().name or path
    except OSError:  # a relative path, and no start folder to resolve it from
        return Path(path).name or path


def model_card(
    *,
    config: TrainConfig,
    unet: UNetConfig,
    unet_overrides: dict | None,
    class_names: list[str],
    parameters: int,
    images: int,
    skipped: int,
    steps: int,
    elapsed_s: float,
    metrics: list[dict],
    processes: int,
    device: str,
    sampler: str,
    sampler_steps: int,
    guidance_scale: float,
    start_folder: str | None,
) -> str:
    """The ``README.md`` of a trained model folder, in the shape of ``assets/fashion-mnist/README.md``. Its
    paths are `portable` from ``start_folder`` (`working_folder` when the run started): the card and its
    command read the same in any checkout."""
    title = folder_name(config.data, start_folder)
    config = _portable_paths(config, start_folder)
    height, width = unet.sample_size
    kind = "class-conditional" if class_names else "unconditional"
    rows = [
        ("architecture", _architecture(config, unet, unet_overrides, parameters, len(class_names))),
        *([("distillation", _distillation(config))] if config.distill_from else []),
        ("conditioning", _conditioning(config, class_names, guidance_scale)),
        ("weights", f"EMA of the training weights (decay {config.ema_decay:g}), float32, `unet/model.safetensors`"),
        ("diffusion", _diffusion(config, sampler, sampler_steps)),
        ("data", _data(config, images, skipped, (height, width))),
        ("trained by", f"pixel-diffusion {__version__} `train.py` on {device} x {processes} process(es), "
         f"precision {PRECISIONS[config.mixed_precision]}"),
    ]  # fmt: skip
    return "\n".join(
        [
            f"# Model card: {title} {height}x{width}, {kind}",
            "",
            "`DiffusionPipeline.from_pretrained(PATH)` and `python sample.py --model PATH` load this folder.",
            "",
            "| | |",
            "|---|---|",
            *[f"| {key} | {value} |" for key, value in rows],
            "",
            "## Command",
            "",
            "```bash",
            train_command(config, unet_overrides, processes, width=100),
            "```",
            "",
            f"- **Steps:** {steps:,} steps of batch {config.batch_size}: {steps * config.batch_size:,} images, "
            f"{steps * config.batch_size / images:.3g} epochs.",
            f"- **Loss:** {_loss(metrics)}.",
            f"- **Wall time:** {duration(elapsed_s)} of training, summed over the sessions that led to these "
            "weights (steps redone after an interruption count once).",
            "",
        ]
    )


def _data(config: TrainConfig, images: int, skipped: int, size: tuple[int, int]) -> str:
    """The card's data row: the source, its image count, the size and colours trained at, the background."""
    colour = {1: "grayscale", 3: "RGB", 4: "RGBA"}[config.channels]
    if config.channels != 4 and config.background != "white":
        colour += ", transparency on " + ("black" if config.background == "black" else "a random colour per item")
    return f"`{config.data}`: {images:,} images ({skipped} skipped), fitted to {size[0]}x{size[1]} {colour}"


def _portable_paths(config: TrainConfig, start_folder: str | None) -> TrainConfig:
    """``config`` with its data, output and model-config paths `portable` from ``start_folder``."""
    return dataclasses.replace(
        config,
        data=portable(config.data, start_folder),
        out=portable(config.out, start_folder),
        model_config=config.model_config and portable(config.model_config, start_folder),
    )


def _architecture(
    config: TrainConfig, unet: UNetConfig, unet_overrides: dict | None, parameters: int, classes: int
) -> str:
    origin = (
        f"UNet preset `{config.preset}`{' with --model-config ' + config.model_config if config.model_config else ''}"
        f"{' and UNet flags' if unet_overrides else ''}"
    )
    if config.distill_from:
        origin = "the teacher's UNet" + (" with a guidance embedding" if unet.guidance_embedding else "")
    text = (
        f"{origin}: {parameters:,} parameters, channels {unet.base_channels}, "
        f"mult {tuple(unet.channel_mult)}, {unet.num_res_blocks} res block(s) per level, attention at levels "
        f"{tuple(unet.attention_levels)}{' and in the middle' if unet.mid_attention else ''}, "
        f"{unet.in_channels} input channel(s)"
    )
    return text + (f", {classes} classes + the null class" if classes else "")


def _distillation(config: TrainConfig) -> str:
    """The card's row for a distilled student: teacher, rounds (or levels), the step counts and the guidance range."""
    if config.distill_method == "consistency":
        steps = consistency_steps(config)
        recommended = SamplingRecord("consistency", steps, max(steps)).steps_text()  # "1, 2 or 4"
        text = (
            f"consistency distillation (Song et al. 2023) of `{config.distill_from}`: one student that maps each of "
            f"{config.distill_levels} levels of its teacher's ODE to the clean image; samples with any step count "
            f"(`--steps`; {recommended} recommended, {max(steps)} by default) by multistep consistency "
            "sampling"
        )
    else:
        rounds = ", ".join(str(n) for n in round_steps(config))
        kept = ", ".join(str(n) for n in kept_steps(config))
        text = (
            f"progressive distillation (Salimans & Ho 2022) of `{config.distill_from}`: rounds of {rounds} student "
            f"DDIM steps, each step trained to match two of its teacher's; samples with {kept} steps (`--steps`)"
        )
    if config.class_cond:
        text += (
            f"; classifier-free guidance folded in for w in [{config.distill_guidance_min:g}, "
            f"{config.distill_guidance_max:g}] (Meng et al. 2023): one forward pass per step"
        )
    return text


def _conditioning(config: TrainConfig, class_names: list[str], guidance_scale: float) -> str:
    if not class_names:
        return "none (unconditional)"
    return (
        f"the class (`class_labels`: {', '.join(f'`{n}`' for n in class_names)}); trained with "
        f"{config.cond_drop_prob:.0%} of labels dropped to the null class, for classifier-free guidance "
        f"(default w = {guidance_scale:g})"
    )


def _diffusion(config: TrainConfig, sampler: str, sampler_steps: int) -> str:
    text = f"T = {config.num_train_timesteps}, {config.beta_schedule} betas"
    text += ", rescaled to zero terminal SNR" if config.zero_terminal_snr else ""
    return text + f", {config.prediction_type} prediction; default sampler `{sampler}`, {sampler_steps} steps"


def _loss(metrics: list[dict]) -> str:
    if not metrics:
        return "no metrics were logged"
    last = metrics[-10:]
    return (
        f"the last logged loss was {metrics[-1]['loss']:.4g} (step {metrics[-1]['step']}); the mean of the "
        f"last {len(last)} logged losses was {sum(r['loss'] for r in last) / len(last):.4g}"
    )
