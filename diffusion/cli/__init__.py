"""Command-line entry points: the only package that parses arguments.

``diffusion-app`` / ``python -m diffusion.app``, ``diffusion-train`` / ``train.py``, ``diffusion-sample`` /
``sample.py``, ``diffusion-evaluate`` / ``python -m diffusion.evaluate``, ``diffusion-export`` and
``diffusion-prepare`` / ``python -m diffusion.prepare`` land here. Flags are generated from the config
dataclasses, with each field's comment as its help. Errors a user can fix (bad paths, bad values) are printed
as one line and exit with status 2; no traceback.
"""

import importlib

from ..editing import DEFAULT_STRENGTH
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from .common import add_dataclass_arguments, field_comments

# Each command's module is imported on first use, so that ``sample.py`` does not pay for the trainer's
# imports (accelerate) at start-up.
_COMMANDS = {
    "app_main": "app",
    "app_parser": "app",
    "evaluate_main": "evaluate",
    "evaluate_parser": "evaluate",
    "export_main": "export",
    "export_parser": "export",
    "parse_seeds": "sample",
    "prepare_main": "prepare",
    "prepare_parser": "prepare",
    "sample_main": "sample",
    "sample_parser": "sample",
    "train_main": "train",
    "train_parser": "train",
}


def __getattr__(name: str) -> object:
    if name in _COMMANDS:
        return getattr(importlib.import_module(f".{_COMMANDS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH",
    "add_dataclass_arguments",
    "app_main",
    "app_parser",
    "evaluate_main",
    "evaluate_parser",
    "export_main",
    "export_parser",
    "field_comments",
    "parse_seeds",
    "prepare_main",
    "prepare_parser",
    "sample_main",
    "sample_parser",
    "train_main",
    "train_parser",
]
