"""``diffusion-export``: write a model in diffusers' format, or as our own model folder."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..io.diffusers_folder import check_new_folder, write_folder
from ..io.files import check_writable
from ..pipeline import DiffusionPipeline
from .common import ArgumentParser, named_as_flags, run_command


def export_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffusion-export",
        description="Write a model folder in another format: --to diffusers writes a folder that "
        "diffusers.DDPMPipeline.from_pretrained loads (and this package too); --to pixel-diffusion writes our "
        "own model folder, e.g. from a training checkpoint. --out must be a new or empty folder (nothing is "
        "overwritten); the folder appears whole or not at all.",
        epilog="Example: diffusion-export --model runs/mine/model --to diffusers --out hf-model --scheduler ddim",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, diffusers folder, training checkpoint (OUT/checkpoints/step-N) or Hugging Face Hub "
        "id (default: the shipped model)",
    )
    parser.add_argument("--to", choices=("diffusers", "pixel-diffusion"), required=True, help="the target format")
    parser.add_argument("--out", required=True, help="the folder to write: a new or empty one")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="export with this sampler instead of the model's own (diffusers' DDPMPipeline runs ddpm, ddim, "
        "dpmsolver++ (not 3M SDE) and unipc as we do; without this flag a model's other default is exported "
        "as the nearest of those: dpmsolver++3m-sde as dpmsolver++2m-sde, euler as ddim, euler-ancestral as "
        "ddpm, heun as dpmsolver++2m, and one whose timestep_spacing diffusers would step differently as ddpm; "
        "see README, 'Models from diffusers, and back')",
    )
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-export``: write a model in diffusers' format, or as our own model folder."""
    args = export_parser().parse_args(argv)

    def main() -> int:
        out = Path(args.out)
        check_new_folder(out, f"--out {out}")  # before the model is read (perhaps downloaded)
        check_writable(out)
        pipe = DiffusionPipeline.from_pretrained(args.model)
        if args.scheduler is not None:
            pipe.scheduler = pipe.make_scheduler(args.scheduler)
        if args.to == "pixel-diffusion":
            write_folder(out, pipe.save_pretrained)
            print(f"wrote {out}/ ({pipe.scheduler_name()}): load it with DiffusionPipeline.from_pretrained")
            return 0
        with named_as_flags({"the ddpm sampler": "--scheduler ddpm"}):  # the way out of a spacing refusal
            # The model's own sampler goes as the nearest one diffusers runs as we do, with a warning; one
            # named by --scheduler as it is, or not at all.
            exported = pipe.save_pretrained(out, format="diffusers", nearest=args.scheduler is None)
        print(f"wrote {out}/ for diffusers ({exported}): load it with DDPMPipeline.from_pretrained")
        return 0

    return run_command("diffusion-export", main)
