"""``diffusion-sample`` / ``sample.py``: generate images, edit images, interpolate."""

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..arguments import DTYPES, MAX_NUM_IMAGES
from ..editing import DEFAULT_JUMP_LENGTH, DEFAULT_STRENGTH, effective_strength
from ..guidance import RANDOM_CLASSES
from ..image import MODES, save_interpolation
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, DiffusionPipeline
from ..rng import seed_list
from ..schedulers import SCHEDULER_NAMES, SCHEDULERS, resolve_scheduler_name
from .common import DEVICES, ArgumentParser, device_from_flag, given_flags, named_as_flags, run_command
from .sample_files import list_models, output_folder, read_image, write_batches, write_grid

DEFAULT_FRAMES = 8  # of --interpolate
DEFAULT_NUM_IMAGES = 16
# The samplers that take Karras et al.'s noise levels (--karras): those whose config has the setting.
KARRAS_SAMPLERS = tuple(
    name
    for name, cls in SCHEDULERS.items()
    if "use_karras_sigmas" in {f.name for f in dataclasses.fields(cls.config_class)}
)


def parse_seeds(text: str) -> list[int]:
    """``0-63``, ``1,5,9`` or a mix (``0-3,10``) -> a list of seeds (at most `MAX_NUM_IMAGES`)."""
    ranges: list[range] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise ValueError
            ranges.append(range(low, high + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0-63 or 1,5,9, got {text!r}") from None
    if sum(map(len, ranges)) > MAX_NUM_IMAGES:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_NUM_IMAGES} seeds")
    return [seed for seeds in ranges for seed in seeds]


def sample_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffusion-sample",
        description="Generate images from a trained model (by default the Fashion-MNIST model shipped in "
        "assets/). Image i of a run with --seed S uses seed S+i and is written as OUT/<seed>.png, so it "
        "does not depend on --batch-size; --seeds picks exact seeds.",
        epilog=f"Samplers: {', '.join(SCHEDULER_NAMES)}. Example: python sample.py --num-images 64 --grid grid.png",
    )
    _add_sampling_arguments(parser)
    _add_run_arguments(parser)
    _add_class_arguments(parser)
    _add_editing_arguments(parser)
    return parser


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the sampler and the seeds."""
    parser.add_argument(
        "--model",
        default=None,
        help="model folder (train.py writes OUT/model), a checkpoint (OUT/checkpoints/step-N), a shipped model's "
        "name (see --list-models) or a Hugging Face Hub id (default: fashion-mnist, shipped)",
    )
    parser.add_argument("--list-models", action="store_true", help="list the shipped models and exit")
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images to generate (default: {DEFAULT_NUM_IMAGES})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"sampler steps (default: {DEFAULT_STEPS}, or a distilled model's own)"
    )
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
    seeds.add_argument("--seed", type=int, default=None, help="first seed; image i uses seed+i (default: 0)")
    seeds.add_argument("--seeds", type=parse_seeds, default=None, help="exact seeds, e.g. 0-63 or 1,5,9")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the images go, and how the model runs."""
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--out", default="samples", help="folder for <seed>.png files (default: samples)")
    parser.add_argument("--grid", default=None, help="also write all images as one grid PNG here")
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: CUDA, else MPS (Apple), else the CPU (default: auto)"
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="UNet precision (default: fp32)")
    parser.add_argument(
        "--channels-last", action="store_true", help="NHWC weights and inputs: faster convolutions (CPU and GPU)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet: faster steps after a first slow compile"
    )


def _add_class_arguments(parser: argparse.ArgumentParser) -> None:
    cond = parser.add_argument_group("class-conditional models (trained with --class-cond)")
    cond.add_argument(
        "--class",
        dest="class_labels",
        default=None,
        help="class name or id for every image, one per image (comma-separated), 'all': --num-images of each "
        "class, one grid row per class, or 'none': the unconditional model (default for a class-conditional "
        "model: a class drawn per image from its seed; with --init-image: none)",
    )
    cond.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"classifier-free guidance w: 0 unconditional, 1 conditional, more follows the class closer "
        f"(default for a class-conditional model: {DEFAULT_GUIDANCE_SCALE})",
    )
    cond.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale φ in [0, 1] (default: 0)")


def _add_editing_arguments(parser: argparse.ArgumentParser) -> None:
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
    edit.add_argument(
        "--jump-length",
        type=int,
        default=None,
        help=f"RePaint: steps per run (default: {DEFAULT_JUMP_LENGTH})",
    )
    edit.add_argument(
        "--interpolate",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="write OUT/interpolation.png (a strip) and .gif between two seeds, or two images (DDIM-inverted with "
        "--steps steps); the sampler defaults to ddim",
    )
    edit.add_argument("--frames", type=int, default=None, help=f"frames of --interpolate (default: {DEFAULT_FRAMES})")


def _sampler_settings(args: argparse.Namespace) -> dict[str, object]:
    """The sampler settings --eta and --karras ask for."""
    settings: dict[str, object] = {"eta": args.eta} if args.eta is not None else {}
    return settings | ({"use_karras_sigmas": True} if args.karras else {})


def _class_labels(text: str | None, pipe: DiffusionPipeline, seeds: Sequence[int]) -> tuple[list[str] | None, int]:
    """--class as one label per image, and the grid's columns (0: as square as possible)."""
    num_images, num_classes = len(seeds), pipe.unet.config.num_classes
    if text == "none" or (text is None and num_classes is None):
        return None, 0
    names = pipe.class_names or [str(i) for i in range(num_classes or 0)]
    if text is None:  # a class-conditional model: a class per image, from its seed
        return [names[i] for i in pipe.random_class_labels(num_images, seeds).tolist()], 0
    if text == "all":
        if num_classes is None:
            raise ValueError("--class all needs a class-conditional model; this model is unconditional")
        return [name for name in names for _ in range(num_images)], num_images
    labels = [part.strip() for part in text.split(",")]
    return (labels if len(labels) > 1 else labels * num_images), 0


# The pipeline's argument names in its messages, and the flags that set them here.
FLAGS = {
    "num_inference_steps": "--steps",
    "num_images": "--num-images",
    "batch_size": "--batch-size",
    "class_labels": "--class",
    "guidance_scale": "--guidance-scale",
    "guidance_rescale": "--guidance-rescale",
    "mask_image": "--mask",
    "strength": "--strength",
    "jump_length": "--jump-length",
    "resample": "--resample",
    "num_frames": "--frames",
    "eta": "--eta",
    "image=...": "--init-image",
}


def _check_combinations(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse flags that would have no effect with the others given: every flag acts or is refused."""
    if args.interpolate is not None:
        editing = {"init_image", "mask", "strength", "resample", "jump_length"}
        ignored = given & ({"num_images", "seed", "seeds", "grid"} | editing)
        if ignored:
            flags = ", ".join(sorted(f"--{name.replace('_', '-')}" for name in ignored))
            raise ValueError(
                f"--interpolate A B takes its seeds or images from A and B and writes OUT/interpolation.png; "
                f"leave out {flags}"
            )
        return
    if args.frames is not None:
        raise ValueError("--frames is the frame count of --interpolate: give --interpolate too")
    if args.seeds is not None and "num_images" in given:
        raise ValueError(f"--seeds gives the images ({len(args.seeds)} seeds); leave out --num-images")
    if args.class_labels == "all" and args.seeds is not None:
        raise ValueError("--class all numbers its images from --seed; it does not take --seeds")
    if args.init_image is None:
        for flag in ("mask", "strength"):
            if flag in given:
                raise ValueError(f"--{flag} edits an image: give --init-image too")
    # Which flags were typed only the CLI knows: the pipeline sees values, and takes its defaults silently.
    if args.mask is None and ("resample" in given or "jump_length" in given):
        raise ValueError("--resample and --jump-length are RePaint settings for inpainting: give --mask too")
    if "jump_length" in given and args.resample == 1:
        raise ValueError("--jump-length sets the runs that RePaint redoes: give --resample 2 or more too")


def _check_sampler_flags(args: argparse.Namespace, sampler: str, default_of: str) -> None:
    """--eta and --karras apply to some samplers only: name the one in use (``default_of`` whose default it
    is, unless --scheduler chose it) and how to pick another."""
    which = f"the sampler is {sampler}" + ("" if args.scheduler else f" ({default_of}'s default)")
    if args.eta is not None and resolve_scheduler_name(sampler)[0] != "ddim":
        raise ValueError(f"--eta is DDIM's stochasticity, but {which}; add --scheduler ddim")
    if args.karras and resolve_scheduler_name(sampler)[0] not in KARRAS_SAMPLERS:
        raise ValueError(f"--karras needs a σ-space sampler ({', '.join(KARRAS_SAMPLERS)}), but {which}")


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-sample``: generate images from a trained model."""
    parser = sample_parser()
    args = parser.parse_args(argv)
    given = given_flags(sample_parser, argv)

    return run_command("diffusion-sample", lambda: _sample(args, given))


def _sample(args: argparse.Namespace, given: set[str]) -> int:
    start = time.perf_counter()
    if args.list_models:
        if given - {"list_models"}:
            raise ValueError("--list-models lists the shipped models and exits; give it alone")
        print(list_models())
        return 0
    for flag in ("model", "out", "grid", "init_image", "mask", "scheduler"):
        if getattr(args, flag) == "":
            raise ValueError(f"--{flag.replace('_', '-')} was given an empty string; give a name or leave it out")
    _check_combinations(args, given)
    seeds = _seeds(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    out = output_folder(args)
    pipe = _load_pipeline(args)
    args.steps = pipe.default_steps if args.steps is None else args.steps
    if args.interpolate:
        return _interpolate(args, pipe, out, start)
    # Editing keeps the image's content: no random class unless asked (the null class instead).
    class_text = "none" if args.class_labels is None and args.init_image else args.class_labels
    labels, columns = _class_labels(class_text, pipe, seeds)
    if args.class_labels == "all":
        seeds = range(seeds[0], seeds[0] + len(labels))
    sampler = args.scheduler or pipe.scheduler_name()
    _check_sampler_flags(args, sampler, "the model")
    call, meta = _sampling_call(args, pipe, sampler, guided=labels is not None)
    images = write_batches(pipe, call, seeds, labels, out, meta, FLAGS)
    where = f"{len(images)} image{'s' * (len(images) != 1)} to {out}/"
    if args.grid:
        grid_meta = {"seeds": f"{seeds[0]}..{seeds[-1]}", "sampler": sampler}
        write_grid(images, args.grid, columns, grid_meta)
        where += f" and a grid to {args.grid}"
    karras = ", Karras σ" if args.karras else ""
    scale = meta.get("guidance_scale")
    distilled = pipe.unet.config.guidance_embedding  # w is the UNet's input
    how = "in one pass (guidance-distilled)" if distilled else "both branches in each evaluation"
    guided = f", guidance {scale:g}: {how}" if scale not in (None, 0, 1) else ""
    print(
        f"wrote {where} in {time.perf_counter() - start:.1f} s "
        f"({sampler}{karras}, {args.steps} steps, {meta['nfe']} NFE{guided})"
    )
    return 0


def _seeds(args: argparse.Namespace) -> Sequence[int]:
    """The images' seeds: --seeds, else --num-images of them from --seed."""
    if args.seeds is not None:
        return args.seeds
    num_images = DEFAULT_NUM_IMAGES if args.num_images is None else args.num_images
    if num_images < 1:
        raise ValueError(f"--num-images must be a positive integer, got {num_images}")
    if num_images > MAX_NUM_IMAGES:
        raise ValueError(f"--num-images must be at most {MAX_NUM_IMAGES}, got {num_images}")
    # The library counts images; this command's count is --num-images.
    with named_as_flags({"seed": "--seed", f"{num_images} images": f"--num-images {num_images}"}):
        return seed_list(0 if args.seed is None else args.seed, num_images)


def _load_pipeline(args: argparse.Namespace) -> DiffusionPipeline:
    """--model, refused unless its images are ones this command can read and write (L, RGB, RGBA)."""
    pipe = DiffusionPipeline.from_pretrained(args.model, device=device_from_flag(args.device), dtype=DTYPES[args.dtype])
    channels = pipe.unet.config.in_channels
    if channels not in MODES:
        raise ValueError(
            f"--model {args.model} makes {channels}-channel images, and diffusion-sample reads and writes images of "
            "1 (L), 3 (RGB) or 4 (RGBA) channels: give another --model, or sample this one from Python with "
            "DiffusionPipeline and output_type='tensor'"
        )
    if args.channels_last:
        pipe.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.compile()
    return pipe


def _sampling_call(
    args: argparse.Namespace, pipe: DiffusionPipeline, sampler: str, guided: bool
) -> tuple[dict[str, Any], dict[str, object]]:
    """The pipeline arguments every batch shares, and the metadata every image carries (``nfe``: per image)."""
    settings = _sampler_settings(args)
    jump_length = DEFAULT_JUMP_LENGTH if args.jump_length is None else args.jump_length
    channels = pipe.unet.config.in_channels
    image = read_image(args.init_image, channels, "--init-image", pipe.input_colour) if args.init_image else None
    mask = read_image(args.mask, 1, "--mask") if args.mask else None
    strength = effective_strength(args.strength, inpainting=mask is not None) if image is not None else None
    with named_as_flags(FLAGS):
        scheduler = pipe.make_scheduler(sampler, **settings)
        nfe = pipe.num_model_evaluations(
            args.steps,
            scheduler,
            strength=strength,
            inpainting=mask is not None,
            jump_length=jump_length,
            resample=args.resample,
        )
    scale = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    meta = {
        "sampler": sampler,
        "steps": args.steps,
        "nfe": nfe,
        "model": str(args.model or "shipped: assets/fashion-mnist"),
    }
    meta |= settings | ({"guidance_scale": scale} if guided else {})
    meta |= {"init_image": args.init_image, "strength": strength} if image is not None else {}
    meta |= {"mask": args.mask, "resample": args.resample, "jump_length": jump_length} if mask is not None else {}
    call = {"num_inference_steps": args.steps, "scheduler": scheduler, "guidance_scale": args.guidance_scale}
    call |= {"guidance_rescale": args.guidance_rescale, "batch_size": args.batch_size, "image": image}
    call |= {"strength": args.strength, "mask_image": mask, "jump_length": jump_length, "resample": args.resample}
    return call, meta


def _interpolate(args: argparse.Namespace, pipe: DiffusionPipeline, out: Path, start: float) -> int:
    """``sample.py --interpolate A B``: a strip PNG and an animated GIF of --frames frames."""
    _check_sampler_flags(args, args.scheduler or "ddim", "--interpolate")
    num_frames = DEFAULT_FRAMES if args.frames is None else args.frames
    seeds = [_int_or_none(point) for point in args.interpolate]  # None: an image
    labels = _interpolation_class(args, pipe, seeds[0])
    given_seeds = [seed for seed in seeds if seed is not None]
    with named_as_flags({"seeds": "--interpolate seeds"}):
        seed_list(given_seeds, len(given_seeds))
    if labels == RANDOM_CLASSES and seeds[0] is None:
        raise ValueError("--class random in --interpolate draws the start seed's class, and A is an image")
    if labels == RANDOM_CLASSES and None in seeds:
        # An image is inverted with the class its frame is drawn with, which the pipeline picks only once it
        # interpolates: the class the start seed draws.
        labels = int(pipe.random_class_labels(1, [seeds[0]])[0])
    ends = [
        _interpolation_end(args, pipe, point, labels) if seed is None else seed
        for seed, point in zip(seeds, args.interpolate, strict=True)
    ]
    with named_as_flags(FLAGS):
        frames = pipe.interpolate(
            ends[0],
            ends[1],
            num_frames=num_frames,
            num_inference_steps=args.steps,
            scheduler=pipe.make_scheduler(args.scheduler or "ddim", **_sampler_settings(args)),
            class_labels=labels,
            guidance_scale=args.guidance_scale,
            guidance_rescale=args.guidance_rescale,
            batch_size=args.batch_size,
            progress=True,
        )
    meta = {"from": args.interpolate[0], "to": args.interpolate[1], "frames": num_frames, "steps": args.steps}
    save_interpolation(frames, out, meta)
    print(
        f"wrote {out}/interpolation.png and {out}/interpolation.gif ({num_frames} frames) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _interpolation_class(args: argparse.Namespace, pipe: DiffusionPipeline, start: int | None) -> str | None:
    """The one class of every frame: --class, else for a class-conditional model the class the start seed
    draws (``"random"``), or none when A is an image."""
    if args.class_labels is None:
        conditional = pipe.unet.config.num_classes is not None
        return RANDOM_CLASSES if conditional and start is not None else None
    if "," in args.class_labels or args.class_labels == "all":
        raise ValueError("--interpolate takes one --class for all frames")
    return None if args.class_labels == "none" else args.class_labels


def _interpolation_end(
    args: argparse.Namespace, pipe: DiffusionPipeline, path: str, labels: str | int | None
) -> torch.Tensor:
    """The latent that DDIM regenerates the image at ``path`` from, inverted with the frames' class."""
    if args.scheduler not in (None, "ddim") or args.karras or args.eta:
        raise ValueError(
            "--interpolate between images regenerates DDIM-inverted latents with ddim at eta 0; "
            "leave out --scheduler, --eta and --karras"
        )
    image = read_image(path, pipe.unet.config.in_channels, "--interpolate", pipe.input_colour)
    with named_as_flags(FLAGS):
        return pipe.invert(image, args.steps, class_labels=labels, guidance_scale=args.guidance_scale)[0]


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
