"""``diffusion-export``: write a model in diffusers' format."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..fileio import check_writable
from ..pipeline import DiffusionPipeline
from .common import ArgumentParser, run_command


def export_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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

    return run_command("diffusion-export", main)
