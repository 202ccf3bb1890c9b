"""``python -m diffusion.prepare``: decode a source of images once into a prepared dataset.

Only the ``-m`` entry point, the in-package twin of ``diffusion-prepare``: it sits above `diffusion.cli` in
the layering (tests/test_layering.py) and nothing imports it. The library function is
`diffusion.data.prepare.prepare`; ``python -m diffusion.prepare --help`` explains the flags.
"""

import sys

from diffusion.cli import prepare_main

if __name__ == "__main__":
    sys.exit(prepare_main())
