"""``diffusion-export``: write a model in diffusers' format, or as our own model folder."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..fileio import check_writable
from ..interop import nearest_exportable, save_diffusers, write_folder
from ..pipeline import DiffusionPipeline
from ..schedulers import registered_name
from .common import ArgumentParser, run_command


def export_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffusion-export",
        description="Write a model folder in another format: --to diffusers writes a folder that "
        "diffusers.DDPMPipeline.from_pretrained loads (and this package too); --to pixel-diffusion writes our "
        "own model folder, e.g. from a training checkpoint. The folder appears whole or not at all.",
        epilog="Example: diffusion-export --model runs/mine/model --to diffusers --out hf-model --scheduler ddim",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, diffusers folder, training checkpoint (OUT/checkpoints/step-N) or Hugging Face Hub "
        "id (default: the shipped model)",
    )
    parser.add_argument("--to", choices=("diffusers", "pixel-diffusion"), required=True, help="the target format")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="export with this sampler instead of the model's own (diffusers' DDPMPipeline runs ddpm, ddim, "
        "dpmsolver++ (not 3M SDE) and unipc as we do; without this flag a model's other default is exported "
        "as the nearest of those: dpmsolver++3m-sde as dpmsolver++2m-sde, euler as ddim, euler-ancestral as "
        "ddpm, heun as dpmsolver++2m; see README, 'Models from diffusers, and back')",
    )
    return parser


def export_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-export``: write a model in diffusers' format, or as our own model folder."""
    args = export_parser().parse_args(argv)

    def main() -> int:
        out = Path(args.out)
        check_writable(out)
        pipe = DiffusionPipeline.from_pretrained(args.model)
        if args.scheduler is not None:
            pipe.scheduler = pipe.make_scheduler(args.scheduler)
        if args.to == "pixel-diffusion":
            write_folder(out, pipe.save_pretrained)
            print(f"wrote {out}/ ({pipe.scheduler_name()}): load it with DiffusionPipeline.from_pretrained")
            return 0
        if args.scheduler is None and (picked := nearest_exportable(pipe.scheduler)) is not pipe.scheduler:
            print(
                f"the model's sampler {pipe.scheduler_name()} runs differently in diffusers: exporting "
                f"{pipe.scheduler_name(picked)}, the nearest one it runs as we do (choose with --scheduler)"
            )
            pipe.scheduler = picked
        name = registered_name(pipe.scheduler)
        save_diffusers(pipe.unet, name, pipe.scheduler, out, pipe.class_names, nearest=False)
        print(f"wrote {out}/ for diffusers ({pipe.scheduler_name()}): load it with DDPMPipeline.from_pretrained")
        return 0

    return run_command("diffusion-export", main)
