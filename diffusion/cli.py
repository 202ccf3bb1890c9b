"""Command-line entry points: the only module that parses arguments.

``diffusion-train`` / ``train.py`` and ``diffusion-sample`` / ``sample.py`` land here. Errors a user
can fix (bad paths, bad values) are printed as one line and exit with status 2; no traceback.
"""

import argparse
import sys
from collections.abc import Sequence


def _not_yet(prog: str, what: str, argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=f"{what} (not available in this version).")
    parser.parse_args(argv)
    print(f"{prog}: error: {what} is not implemented in this version of pixel-diffusion", file=sys.stderr)
    return 2


def train_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-train``: train a model on a folder of images."""
    return _not_yet("diffusion-train", "training", argv)


def sample_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-sample``: generate images from a trained model."""
    return _not_yet("diffusion-sample", "sampling", argv)
