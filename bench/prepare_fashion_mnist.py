"""Turn Fashion-MNIST's IDX files into an image folder with one subfolder per class name.

    apt-get install dataset-fashion-mnist      # IDX files in /usr/share/datasets/fashion-mnist
    python bench/prepare_fashion_mnist.py --out data/fashion-mnist [--split train] [--limit N]

Fashion-MNIST: Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist, MIT licence.
"""

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzip or plain): big-endian magic 0x0000TTDD, DD dimensions, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def find(source: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(f"{source / stem}[.gz] not found; install it with: apt-get install dataset-fashion-mnist")


def prepare(source: Path, out: Path, split: str = "train", limit: int | None = None) -> int:
    """Write ``out/<class>/<index>.png``; returns the number of images written."""
    images = read_idx(find(source, f"{PREFIX[split]}-images-idx3-ubyte"))
    labels = read_idx(find(source, f"{PREFIX[split]}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    count = len(images) if limit is None else min(limit, len(images))
    for name in CLASS_NAMES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(images[i], mode="L").save(out / CLASS_NAMES[labels[i]] / f"{i:05d}.png")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, required=True, help="image folder to write")
    parser.add_argument("--split", choices=sorted(PREFIX), default="train", help="train (60k) or test (10k)")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N images")
    args = parser.parse_args(argv)
    try:
        count = prepare(args.source, args.out, args.split, args.limit)
    except (FileNotFoundError, ValueError) as e:
        print(f"prepare_fashion_mnist: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} images in {len(CLASS_NAMES)} class folders under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
