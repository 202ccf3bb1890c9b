"""Command-line entry points: the only module that parses arguments.

``diffusion-train`` / ``train.py`` and ``diffusion-sample`` / ``sample.py`` land here. Flags are
generated from the config dataclasses, with each field's comment as its help. Errors a user can fix
(bad paths, bad values) are printed as one line and exit with status 2; no traceback.
"""

import argparse
import ast
import dataclasses
import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, get_args, get_origin, get_type_hints

from .config import literal_choices
from .models import PRESETS, UNetConfig
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
        model_dir = trainer.train()
        if trainer.accelerator.is_main_process:
            print(f"model written to {model_dir}")
        return 0

    return _run("diffusion-train", main)


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-sample``: generate images from a trained model."""
    parser = argparse.ArgumentParser(prog="diffusion-sample", description="sampling (not available yet).")
    parser.parse_args(argv)
    print(
        "diffusion-sample: error: sampling is not implemented in this version of pixel-diffusion",
        file=sys.stderr,
    )
    return 2
