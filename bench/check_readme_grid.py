"""Does the README's first command still draw the shipped model card's picture, pixel for pixel?

    python bench/check_readme_grid.py [--out runs/readme-grid]

Runs ``python sample.py --out OUT --class all --num-images 8 --grid OUT/grid.png``, upscales the grid 3x
with nearest-neighbour resampling as `assets/fashion-mnist/samples.png` was made (its model card says so),
and compares the pixels; prints one line and exits 1 on any difference. The PNG files themselves differ in
their text chunks (the asset carries none), so the comparison is of pixels, not bytes.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/readme-grid"))
    args = parser.parse_args()
    grid = args.out / "grid.png"
    command = [sys.executable, str(ROOT / "sample.py"), "--out", str(args.out), "--class", "all"]
    subprocess.run([*command, "--num-images", "8", "--grid", str(grid)], check=True)
    drawn = Image.open(grid)
    asset = Image.open(ROOT / "assets" / "fashion-mnist" / "samples.png")
    upscaled = np.asarray(drawn.resize((drawn.width * 3, drawn.height * 3), Image.NEAREST))
    same = upscaled.shape == np.asarray(asset).shape and np.array_equal(upscaled, np.asarray(asset))
    print(f"{grid} upscaled 3x {'equals' if same else 'DIFFERS FROM'} assets/fashion-mnist/samples.png")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
