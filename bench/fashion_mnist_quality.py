"""Sample quality on Fashion-MNIST: Fréchet distance and KID in a trained classifier's feature space.

    python bench/fashion_mnist_quality.py --data data/fashion-mnist \
        [--classifier assets/fashion-mnist-classifier] [--model PATH] [--num-images 1000] \
        [--sampler ddim:50 --sampler ddpm:1000] [--batch-size 250] [--dtype fp32|bf16] [--seed 0]

A deterministic shuffle (seeded by --seed) of the folder gives a reference set (its first N images)
and a disjoint "other" real set (the next N). Every row compares N images with the reference:

- real vs real: the other set; the floor, the distance of two finite samples of the data itself;
- noisy copies, to calibrate: the other set plus Gaussian noise of std 0.1 / 0.3 in [-1, 1] space,
  clamped, so a generated row reads against a known corruption of independent real images;
- one row per --sampler NAME:STEPS: N samples from the model folder (image i uses seed --seed + i).

FD is biased by the sample size: compare rows measured with the same --num-images only. KID is
unbiased (it can be slightly negative) and shown x 10^3 as mean ± std over random subsets. The
classifier comes from bench/train_classifier.py; features are its penultimate layer (`features`).
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffusion.data import ImageFolder
from diffusion.metrics import extract_features, frechet_distance, gaussian_stats, kernel_inception_distance
from diffusion.metrics.classifier import Classifier
from diffusion.pipeline import DiffusionPipeline

NOISE_STDS = (0.1, 0.3)
KID_SUBSETS = 100  # subsets averaged by KID
KID_SUBSET_SIZE = 1000  # rows per KID subset, at most; N // 2 when smaller, so that subsets differ


def parse_sampler(text: str) -> tuple[str, int]:
    """``"ddim:50"`` -> ``("ddim", 50)``."""
    name, _, steps = text.partition(":")
    if not name or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:STEPS such as ddim:50, got {text!r}")
    return name, int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/fashion-mnist"), help="the training image folder")
    parser.add_argument("--classifier", type=Path, default=Path("assets/fashion-mnist-classifier"))
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--image-size", type=int, default=28, help="the data's side, which samples must match")
    parser.add_argument("--num-images", type=int, default=1000, help="images per set (N)")
    parser.add_argument("--sampler", type=parse_sampler, action="append", default=[], metavar="NAME:STEPS")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the diffusion model's dtype")
    parser.add_argument("--seed", type=int, default=0, help="data shuffle, noise and sample seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n = args.num_images

    classifier = Classifier.from_pretrained(args.classifier)
    dataset = ImageFolder(args.data, (args.image_size, args.image_size), classifier.config.in_channels, hflip=False)
    if n < 4 or 2 * n > len(dataset):
        raise SystemExit(f"--num-images must be in [4, {len(dataset) // 2}] (two sets from {args.data}), got {n}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    real = torch.stack([dataset[(int(i), 0)][0] for i in order[: 2 * n]])  # (2n, c, size, size) in [-1, 1]
    reference, other = real[:n], real[n:]
    ref_features = extract_features(classifier, reference)
    ref_stats = gaussian_stats(ref_features)
    kid_subset = min(KID_SUBSET_SIZE, n // 2)

    pipe = None
    if args.sampler:
        pipe = DiffusionPipeline.from_pretrained(args.model)
        if args.dtype == "bf16":
            pipe = pipe.to(dtype=torch.bfloat16)

    def noisy(std: float) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(args.seed + 1))
            return (other + std * noise).clamp(-1.0, 1.0)

        return make

    def sampled(name: str, steps: int) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            images = pipe(
                num_images=n,
                num_inference_steps=steps,
                scheduler=name,
                seed=args.seed,
                batch_size=args.batch_size,
                output_type="tensor",
            )  # (n, c, h, w) float32 in [0, 1]
            if images.shape[1:] != reference.shape[1:]:
                raise SystemExit(f"samples have shape {tuple(images.shape[1:])}, the data {tuple(reference.shape[1:])}")
            return images * 2 - 1

        return make

    rows: list[tuple[str, Callable[[], torch.Tensor]]] = [("real vs real (disjoint)", lambda: other)]
    rows += [(f"real + noise std {std} (calibration)", noisy(std)) for std in NOISE_STDS]
    rows += [(f"{name} {steps} steps, {args.dtype}", sampled(name, steps)) for name, steps in args.sampler]

    print(f"classifier {args.classifier} ({classifier.config.feature_dim}-d features), data {args.data}")
    print(f"N = {n} per set, seed {args.seed}; KID: {KID_SUBSETS} subsets of {kid_subset}, shown x 10^3\n")
    print("| images vs reference | FD | KID x 10^3 | time (s) |")
    print("|---|---:|---:|---:|")
    for label, make in rows:
        start = time.perf_counter()
        features = extract_features(classifier, make())
        fd = frechet_distance(*ref_stats, *gaussian_stats(features))
        kid, kid_std = kernel_inception_distance(
            ref_features, features, kid_subset, KID_SUBSETS, generator=torch.Generator().manual_seed(args.seed)
        )
        elapsed = time.perf_counter() - start
        print(f"| {label} | {fd:.3f} | {1e3 * kid:.2f} ± {1e3 * kid_std:.2f} | {elapsed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
