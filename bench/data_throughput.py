"""Data throughput: start-up time, items per second into the model, peak RSS of a training process and
``diffusion-prepare``'s rate, for every training data path, with diffusers' ``train_unconditional`` data path
side by side, on generated 256x256 JPEGs fitted to 64x64 RGB.

    python bench/data_throughput.py [--sizes 1000 10000 100000] [--throughput-size 10000] [--workers 0 1 2]
                                    [--root runs/data-throughput]

Rows: an image folder decoded at start (`ImageFolder(validate=True)`, what versions before lazy listing did),
an image folder listed by name (today's ``--data FOLDER``), a prepared dataset (``diffusion-prepare``), a
Parquet Hugging Face dataset, and diffusers' examples (``datasets`` imagefolder plus torchvision transforms,
as ``train_unconditional.py`` builds them). Items per second run on one thread (``torch.set_num_threads(1)``)
in batches of 64, through a DataLoader as training draws them. docs/benchmarks.md records the figures.
"""

import argparse
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
BATCH = 64


def _write_jpegs(task: tuple[Path, int, int, int]) -> None:
    folder, first, last, side = task
    for i in range(first, last):
        path = folder / ("a" if i % 2 else "b") / f"{i:07d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)  # smooth, like photos
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path, quality=90)


def make_jpegs(folder: Path, count: int, side: int = 256) -> Path:
    """``count`` random-texture JPEGs of ``side``², in two class folders; kept between runs."""
    for name in "ab":
        (folder / name).mkdir(parents=True, exist_ok=True)
    chunks = [(folder, i, min(i + 1000, count), side) for i in range(0, count, 1000)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_jpegs, chunks)
    return folder


def timed(work):
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def items_per_second(images, workers: int, items: int, scale: bool = True) -> float:
    """Micro-batches of 64 through a DataLoader with ``workers`` processes, as training draws them; with
    ``scale``, each uint8 batch is also scaled to [-1, 1] here (training does that on its device)."""
    from diffusion.data import to_unit
    from diffusion.training.sampler import Batches

    n = len(images)
    keys = [[((i * 7919) % n, i) for i in range(b, b + BATCH)] for b in range(0, items, BATCH)]  # scattered rows
    loader = DataLoader(Batches(images), sampler=keys, batch_size=None, num_workers=workers)
    start = time.perf_counter()
    for batch in loader:
        if scale:
            to_unit(batch.images)
    return items / (time.perf_counter() - start)


def diffusers_path(folder: Path, cache: Path, items: int) -> tuple[float, float]:
    """(start-up s, items/s) of the data path of diffusers' ``train_unconditional.py``: ``load_dataset``
    imagefolder (into a fresh cache), torchvision transforms in ``set_transform``, a DataLoader."""
    import datasets
    from torchvision import transforms

    augment = transforms.Compose(
        [
            transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(64),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )

    def transform(examples):
        return {"input": [augment(image.convert("RGB")) for image in examples["image"]]}

    def start():
        dataset = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache), split="train")
        dataset.set_transform(transform)
        return dataset

    dataset, startup = timed(start)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
    begin, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["input"])
        if seen >= items:
            break
    return startup, seen / (time.perf_counter() - begin)


def to_parquet(folder: Path, path: Path) -> Path:
    """The folder's JPEGs as a Parquet dataset with an ``image`` column of their bytes and a ClassLabel."""
    import datasets

    if path.exists():
        return path
    files = sorted(folder.rglob("*.jpg"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {
        "image": [{"bytes": f.read_bytes(), "path": None} for f in files],
        "label": [f.parent.name == "b" for f in files],
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def memory_mib(data: Path, out: Path) -> dict[str, float]:
    """``train.py`` (tiny preset, 64x64, 20 steps of 64) on ``data``: its peak RSS (``VmHWM``) and, at the
    end, its anonymous memory (``RssAnon``) and the pages of files it maps (``RssFile``: the page cache of
    the memory-mapped data, shared and reclaimable, among them), in MiB."""
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]\n"
        "try: runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as e: assert not e.code, e.code\n"
        "lines = [line.split() for line in open('/proc/self/status')]\n"
        "print(' '.join(f'{k[:-1]}={v[0]}' for k, *v in lines if k[:-1] in ('VmHWM', 'RssAnon', 'RssFile')))"
    )
    args = ["train.py", "--data", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "64"]
    args += ["--max-steps", "20", "--batch-size", str(BATCH), "--sample-every", "0", "--resume", "never"]
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=True)
    status = dict(field.split("=") for field in done.stdout.splitlines()[-1].split())
    return {name: int(status[name]) / 1024 for name in ("VmHWM", "RssAnon", "RssFile")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--throughput-size", type=int, default=10000, help="the folder the items/s rows read")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--items", type=int, default=2048, help="items drawn per decoding throughput row")
    parser.add_argument("--root", type=Path, default=Path("runs/data-throughput"))
    args = parser.parse_args()
    args.root = args.root.resolve()
    os.environ["HF_DATASETS_CACHE"] = str(args.root / "hf-cache")
    from diffusion.data import ImageFolder, open_images
    from diffusion.data.prepare import prepare

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores, 256x256 JPEGs fitted to 64x64 RGB\n")
    folders, prepared, rates = {}, {}, {}
    for count in args.sizes:
        folders[count] = make_jpegs(args.root / f"jpeg-{count}", count)
        prepared[count] = out = args.root / f"prepared-{count}"
        earlier = (out / "manifest.json").exists()
        _, seconds = timed(lambda: prepare(folders[count], out, size=(64, 64), workers=os.cpu_count()))  # noqa: B023
        rates[count] = None if earlier else count / seconds

    print("| source | files | start-up to the first batch (s) |\n|---|---:|---:|")
    sources = {
        "image folder, decoded at start (before)": lambda n: ImageFolder(folders[n], (64, 64), 3, validate=True),
        "image folder, listed by name (now)": lambda n: open_images(folders[n], (64, 64), 3),
        "prepared dataset": lambda n: open_images(prepared[n], (64, 64), 3),
    }
    for name, open_source in sources.items():
        for count in args.sizes:
            _, seconds = timed(lambda: open_source(count).batch([(i, i) for i in range(BATCH)]))  # noqa: B023
            print(f"| {name} | {count:,} | {seconds:.2f} |")

    n = args.throughput_size
    print(f"\n| source ({n:,} items) | workers | items/s |\n|---|---:|---:|")
    for workers in args.workers:
        rate = items_per_second(open_images(folders[n], (64, 64), 3), workers, args.items)
        print(f"| image folder | {workers} | {rate:,.0f} |")
    for scale, what in ((False, "uint8 batches, as they reach the device"), (True, "and scaled to [-1, 1] here")):
        rate = items_per_second(open_images(prepared[n], (64, 64), 3), 0, 20 * 1024, scale)
        print(f"| prepared dataset ({what}) | 0 | {rate:,.0f} |")
    table = to_parquet(folders[n], args.root / f"jpeg-{n}.parquet")
    parquet, seconds = timed(lambda: open_images(table, (64, 64), 3))
    rate = items_per_second(parquet, 0, args.items)
    print(f"| Parquet Hugging Face dataset (start-up {seconds:.2f} s) | 0 | {rate:,.0f} |")
    startup, rate = diffusers_path(folders[n], args.root / f"diffusers-cache-{time.time_ns()}", args.items)
    print(f"| diffusers train_unconditional data path (start-up {startup:.2f} s) | 0 | {rate:,.0f} |")

    print("\n| prepared images | train.py peak RSS | at its end: anonymous | files mapped | diffusion-prepare")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count in args.sizes:
        memory = memory_mib(prepared[count], args.root / f"train-{count}")
        rate = f"{rates[count]:,.0f} img/s" if rates[count] else "(prepared earlier)"
        sizes = " | ".join(f"{memory[name]:,.0f} MiB" for name in ("VmHWM", "RssAnon", "RssFile"))
        print(f"| {count:,} | {sizes} | {rate} |")


if __name__ == "__main__":
    main()
