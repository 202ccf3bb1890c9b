"""``python -m diffusion.app``: the in-package twin of ``diffusion-app`` (it sits above `diffusion.cli` in the
layering, and nothing imports it); ``python -m diffusion.app --help`` explains the flags."""

import sys

from diffusion.cli import app_main

if __name__ == "__main__":
    sys.exit(app_main())
