"""Generate images from a trained diffusion model: ``python sample.py --help``."""

import sys

from diffusion.cli import sample_main

if __name__ == "__main__":
    sys.exit(sample_main())
