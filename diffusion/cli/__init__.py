"""Command-line entry points: the only package that parses arguments.

``diffusion-train`` / ``train.py``, ``diffusion-sample`` / ``sample.py`` and ``diffusion-evaluate`` /
``python -m diffusion.evaluate`` land here. Flags are generated from the config dataclasses, with each
field's comment as its help. Errors a user can fix (bad paths, bad values) are printed as one line and
exit with status 2; no traceback.
"""

from ..editing import DEFAULT_STRENGTH
from ..pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from .common import add_dataclass_arguments, field_comments
from .evaluate import evaluate_main, evaluate_parser
from .export import export_main, export_parser
from .sample import parse_seeds, sample_main, sample_parser
from .train import train_main, train_parser

__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH",
    "add_dataclass_arguments",
    "evaluate_main",
    "evaluate_parser",
    "export_main",
    "export_parser",
    "field_comments",
    "parse_seeds",
    "sample_main",
    "sample_parser",
    "train_main",
    "train_parser",
]
