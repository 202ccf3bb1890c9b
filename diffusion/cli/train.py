"""``diffusion-train`` / ``train.py``: train a model on a folder of images."""

import argparse
import dataclasses
from collections.abc import Sequence

from ..models import PRESETS, UNetConfig
from ..training import TrainConfig, Trainer
from .common import ArgumentParser, add_dataclass_arguments, given_flags, run_command


def train_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffusion-train",
        description="Train a pixel-space diffusion model on a folder of images. Re-running the same command "
        "resumes from the latest checkpoint in --out.",
        epilog="Multi-GPU / multi-node: accelerate launch train.py ... (no code change). Presets: "
        + ", ".join(PRESETS),
    )
    add_dataclass_arguments(parser, TrainConfig)
    unet = parser.add_argument_group("UNet overrides (applied over --preset and --model-config)")
    add_dataclass_arguments(
        unet,
        UNetConfig,
        skip=("in_channels", "sample_size", "out_channels", "num_classes", "guidance_embedding"),
        from_preset=True,
    )
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-train``: train a model on a folder of images."""
    args = vars(train_parser().parse_args(argv))
    given = given_flags(train_parser, argv)
    unet_names = {f.name for f in dataclasses.fields(UNetConfig)}
    unet_overrides = {k: v for k, v in args.items() if k in unet_names and v is not None}
    train_args = {k: v for k, v in args.items() if k not in unet_names}

    def main() -> int:
        config = TrainConfig(**train_args)
        trainer = Trainer(config, unet_overrides, explicit=given)
        model_dir = trainer.train(progress=True)
        if trainer.accelerator.is_main_process:
            print(f"model written to {model_dir}")
        return 0

    return run_command("diffusion-train", main)
