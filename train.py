"""Train a diffusion model on a folder of images: ``python train.py --help``."""

import sys

from diffusion.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
