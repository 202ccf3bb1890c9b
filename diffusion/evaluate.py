"""``python -m diffusion.evaluate``: FD@N and KID@N of a model against a folder of real images.

Only the ``-m`` entry point, the in-package twin of train.py and sample.py: it sits above
`diffusion.cli` in the layering (tests/test_layering.py) and nothing imports it. The library function
is `diffusion.metrics.evaluation.evaluate`; ``python -m diffusion.evaluate --help`` explains the flags.
"""

import sys

from diffusion.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
