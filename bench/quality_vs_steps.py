"""Sample quality against sampling cost for every sampler: FD, KID, NFE and wall time per row.

    python bench/quality_vs_steps.py --data data/fashion-mnist --cache runs/quality \
        [--num-images 2000] [--rows ddpm:1000 ddim:10 ...] [--dtype bf16] [--write-docs docs/benchmarks.md]

The model is the shipped Fashion-MNIST model; features come from the shipped Fashion-MNIST classifier
(`assets/fashion-mnist-classifier`), so FD and KID are measured in that classifier's feature space,
not Inception's. The reference set is N real images (a seeded shuffle of --data); each row generates N
images, image i with seed --seed + i, so every row starts from the same noise. A first row compares
the next N real images with the reference: the floor that finite samples of the data itself reach.

Each row's samples, wall time and NFE are cached in --cache (one .pt file per row), so a long row
(DDPM 1000 steps) can run alone, pinned to one core, and the table is assembled afterwards. NFE is
counted, not computed: a forward hook counts the UNet's calls per batch. --write-docs replaces the
table between the markers ``<!-- quality-vs-steps -->`` and ``<!-- /quality-vs-steps -->``.
"""

import argparse
import time
from pathlib import Path

import torch

from diffusion.data import ImageFolder
from diffusion.metrics import extract_features, frechet_distance, gaussian_stats, kernel_inception_distance
from diffusion.metrics.classifier import Classifier
from diffusion.pipeline import DiffusionPipeline

# The rows of docs/benchmarks.md, "Quality against sampling cost": sampler name (as `DiffusionPipeline`
# takes it) and inference steps.
DEFAULT_ROWS = (
    "ddpm:1000",
    "ddim:10",
    "ddim:20",
    "ddim:50",
    "ddim:100",
    "dpmsolver++2m:5",
    "dpmsolver++2m:10",
    "dpmsolver++2m:20",
    "dpmsolver++3m:5",
    "dpmsolver++3m:10",
    "dpmsolver++3m:20",
    "euler:10",
    "euler:20",
    "heun:10",
    "heun:20",
    "unipc:5",
    "unipc:10",
)
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
BEGIN, END = "<!-- quality-vs-steps -->", "<!-- /quality-vs-steps -->"


def parse_row(text: str) -> tuple[str, int]:
    """``"ddim:50"`` -> ``("ddim", 50)``; ``"heun:10:karras"`` -> ``("heun:karras", 10)`` (Karras σ)."""
    name, _, rest = text.partition(":")
    steps, _, option = rest.partition(":")
    if not name or not steps.isdigit() or int(steps) < 1 or option not in ("", "karras"):
        raise argparse.ArgumentTypeError(f"expected NAME:STEPS[:karras] such as ddim:50, got {text!r}")
    return (f"{name}:karras" if option else name), int(steps)


def generate(pipe: DiffusionPipeline, name: str, steps: int, n: int, seed: int, batch_size: int) -> dict:
    """N samples of one row in [-1, 1], with the wall time and the counted NFE per image."""
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = pipe.unet.register_forward_hook(count)
    try:
        start = time.perf_counter()
        sampler, _, option = name.partition(":")
        scheduler = pipe.make_scheduler(sampler, **({"use_karras_sigmas": True} if option == "karras" else {}))
        images = pipe(n, steps, scheduler=scheduler, seed=seed, batch_size=batch_size, output_type="tensor")
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    batches = -(-n // batch_size)
    assert calls % batches == 0, (calls, batches)
    return {"samples": images * 2 - 1, "seconds": seconds, "nfe": calls // batches, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the Fashion-MNIST image folder")
    parser.add_argument("--cache", type=Path, required=True, help="folder for each row's samples and timing")
    parser.add_argument("--classifier", type=Path, default=Path("assets/fashion-mnist-classifier"))
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--num-images", type=int, default=2000, help="images per row and in the reference (N)")
    parser.add_argument("--rows", type=parse_row, nargs="+", default=[parse_row(r) for r in DEFAULT_ROWS])
    parser.add_argument("--batch-size", type=int, default=500, help="images per sampling batch")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="the UNet's dtype")
    parser.add_argument("--seed", type=int, default=0, help="data shuffle and sample seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only-generate", action="store_true", help="fill the cache; print no table")
    parser.add_argument("--write-docs", type=Path, default=None, help="markdown file whose table to replace")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n = args.num_images
    args.cache.mkdir(parents=True, exist_ok=True)

    pipe = DiffusionPipeline.from_pretrained(args.model)
    if args.dtype == "bf16":
        pipe = pipe.to(dtype=torch.bfloat16)
    results = {}
    for name, steps in args.rows:
        path = args.cache / f"{name.replace(':', '-')}-{steps}-n{n}-seed{args.seed}-{args.dtype}.pt"
        if not path.is_file():
            row = generate(pipe, name, steps, n, args.seed, args.batch_size)
            torch.save(row, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
            print(f"generated {name}:{steps}: {row['seconds']:.1f} s, NFE {row['nfe']}", flush=True)
        results[name, steps] = torch.load(path, weights_only=True)
    if args.only_generate:
        return

    classifier = Classifier.from_pretrained(args.classifier)
    dataset = ImageFolder(args.data, (28, 28), classifier.config.in_channels, hflip=False)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    real = torch.stack([dataset[(int(i), 0)][0] for i in order[: 2 * n]])  # (2n, c, 28, 28) in [-1, 1]
    reference, other = real[:n], real[n:]
    ref_features = extract_features(classifier, reference)
    ref_stats = gaussian_stats(ref_features)
    kid_subset = min(KID_SUBSET_SIZE, n // 2)

    lines = [
        f"| sampler | steps | NFE | FD@{n} | KID@{n} x 10^3 | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = {("real images (the floor)", "-"): {"samples": other, "nfe": "-", "seconds": None}, **results}
    for (name, steps), row in rows.items():
        features = extract_features(classifier, row["samples"])
        fd = frechet_distance(*ref_stats, *gaussian_stats(features))
        kid, kid_std = kernel_inception_distance(
            ref_features, features, kid_subset, KID_SUBSETS, generator=torch.Generator().manual_seed(args.seed)
        )
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        lines.append(
            f"| {name} | {steps} | {row['nfe']} | {fd:.3f} | {1e3 * kid:.2f} ± {1e3 * kid_std:.2f} | {seconds} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write_docs is not None:
        text = args.write_docs.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.write_docs} has no {BEGIN} ... {END} markers")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.write_docs.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
