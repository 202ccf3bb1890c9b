"""``diffusion-prepare`` / ``python -m diffusion.prepare``: decode a source of images once into a prepared
dataset that training reads memory-mapped."""

import argparse
from collections.abc import Sequence

from ..data import BACKGROUNDS
from ..data.prepare import prepare
from .common import ArgumentParser, _size, named_as_flags, run_command


def prepare_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffusion-prepare",
        description="Decode every image of SOURCE once, resized to cover --size and centre-cropped, into a prepared "
        "dataset (a Hugging Face save_to_disk folder with a manifest.json) that --data reads without decoding. "
        "Images that do not decode are left out and listed in the manifest. An interrupted run continues where "
        "it stopped when run again with the same flags; a finished one is checked against the checksums in its "
        "manifest and left as it is. One run at a time prepares a given --out.",
        epilog="Example: diffusion-prepare photos/ --out photos-64 --size 64. The prepared size may exceed the "
        "training size: training then crops or resizes it.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder of images (class subfolders give labels), a Hugging Face dataset folder (save_to_disk), "
        "Parquet/Arrow file(s), or a Hub name owner/name",
    )
    parser.add_argument("--out", required=True, help="the prepared dataset's folder: a new or empty one")
    parser.add_argument(
        "--size",
        "--prepare-size",
        type=_size,
        required=True,
        help="N or HxW: the stored image size; larger than the training size leaves slack for --random-crop",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 3, 4),
        default=3,
        help="1: grayscale, 3: RGB, 4: RGBA with the alpha channel kept, so that training chooses the background "
        "of transparent pixels (default: 3)",
    )
    parser.add_argument(
        "--background",
        choices=(*BACKGROUNDS, "random"),  # random is refused by prepare() in one line naming the way out
        default=None,
        help="what transparent pixels (RGBA, LA, palette images) are composited on for --channels 1 and 3, "
        "stored so and recorded in manifest.json; refused with --channels 4, which keeps the alpha channel. "
        "random is refused: it is drawn per item at training time, so prepare --channels 4 without --background "
        "and train with --background random (default: white)",
    )
    parser.add_argument(
        "--image-column", default=None, help="a dataset's image column (default: image, else its one Image column)"
    )
    parser.add_argument("--label-column", default=None, help="a dataset's label column (default: label, if any)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset prepared in --out with other flags or damaged, or restart an interrupted one (a "
        "folder holding anything else is never touched)",
    )
    return parser


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-prepare`` / ``python -m diffusion.prepare``: prepare a dataset."""
    args = prepare_parser().parse_args(argv)

    def main() -> int:
        with named_as_flags({"workers": "--workers"}):
            manifest = prepare(
                args.source,
                args.out,
                size=args.size,
                channels=args.channels,
                background=args.background,
                image_column=args.image_column,
                label_column=args.label_column,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=True,
            )
        counts, shape = manifest["counts"], "x".join(str(s) for s in manifest["shape"])
        print(f"prepared {counts['prepared']} images ({counts['skipped']} skipped) of {shape} into {args.out}")
        return 0

    return run_command("diffusion-prepare", main)
