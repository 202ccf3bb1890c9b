"""Data throughput: start-up time to a usable dataset and items per second into the model, for the
training data paths, on generated 256x256 JPEGs fitted to 64x64 RGB.

    python bench/data_throughput.py [--sizes 1000 10000] [--workers 0 1 2] [--root runs/data-throughput]

Rows built so far: today's image folder (`diffusion.data.ImageFolder`, which decodes every file to check
it at start-up). The prepared-dataset, Hugging Face and diffusers `train_unconditional` rows of issue 17
are still to come; docs/benchmarks.md records the figures.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffusion.data import ImageFolder


def make_jpegs(folder: Path, count: int, side: int = 256) -> Path:
    """``count`` random-texture JPEGs of ``side``², in two class folders; kept between runs."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / ("a" if i % 2 else "b") / f"{i:07d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)  # smooth, like photos
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path, quality=90)
    return folder


def items_per_second(dataset: ImageFolder, workers: int, items: int) -> float:
    """Batches of 64 ``(c, h, w)`` tensors drawn through a DataLoader with ``workers`` processes."""
    keys = [(i % len(dataset), i) for i in range(items)]  # (index, augmentation seed), as training asks

    def fetch(batch: list[tuple[int, int]]) -> torch.Tensor:
        return torch.stack([dataset[key][0] for key in batch])  # (64, c, h, w)

    loader = DataLoader(keys, batch_size=64, num_workers=workers, collate_fn=fetch)
    start = time.perf_counter()
    for _ in loader:
        pass
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--items", type=int, default=2048, help="items drawn per throughput row")
    parser.add_argument("--root", type=Path, default=Path("runs/data-throughput"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 256x256 JPEGs fitted to 64x64 RGB")
    print("| source | files | start-up (s) | workers | items/s |\n|---|---:|---:|---:|---:|")
    for count in args.sizes:
        folder = make_jpegs(args.root / f"jpeg-{count}", count)
        start = time.perf_counter()
        dataset = ImageFolder(folder, (64, 64), 3)
        startup = time.perf_counter() - start
        for workers in args.workers:
            rate = items_per_second(dataset, workers, args.items)
            row = f"| image folder (today: every file decoded at start-up) | {count:,} | {startup:.2f} |"
            print(f"{row} {workers} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
