"""DPM-Solver++ 3M: which weight of the third-order term D_2 samples best on the shipped model.

    python bench/third_order_weight.py --data data/fashion-mnist [--num-images 400]

`diffusion.schedulers.dpmsolver` uses the reference weights (the authors' code for the ODE,
k-diffusion's sample_dpmpp_3m_sde for the SDE), which are half the Taylor-exact ones. This script
swaps in other weights by subclassing the scheduler, samples N images per row with the shipped model
(bf16, seeds 0..N-1) and prints FD@N in the shipped classifier's feature space:

- reference: what the library does;
- exact: the Taylor-exact weight (ODE: 1 - 2/h - 2(e^{-h}-1)/h²; SDE: 1 - 1/h + (1-e^{-2h})/(2h²));
- diffusers (SDE only): diffusers' ((1-e^{-2h}) - 2h)/(2h)² - 1/2, which is O(1) off.

The weights enter through `third_order_weight`, the one hook the scheduler has for this comparison.
"""

import argparse
import math

import torch

from diffusion.data import ImageFolder
from diffusion.metrics import extract_features, frechet_distance, gaussian_stats
from diffusion.metrics.classifier import Classifier
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DPMSolverMultistepScheduler


def exact(h: float, sde: bool) -> float:
    if sde:
        return 1 - 1 / h - math.expm1(-2 * h) / (2 * h * h)
    return 1 - 2 / h - 2 * math.expm1(-h) / h**2


def diffusers_sde(h: float, sde: bool) -> float:
    assert sde
    return (-math.expm1(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5


def variant(weight):
    class Variant(DPMSolverMultistepScheduler):
        def third_order_weight(self, h: float, sde: bool) -> float:
            return weight(h, sde)

    return Variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the Fashion-MNIST image folder (the reference)")
    parser.add_argument("--classifier", default="assets/fashion-mnist-classifier")
    parser.add_argument("--num-images", type=int, default=400, help="N, per row and in the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.num_images

    pipe = DiffusionPipeline.from_pretrained().to(dtype=torch.bfloat16)
    classifier = Classifier.from_pretrained(args.classifier)
    dataset = ImageFolder(args.data, (28, 28), 1, hflip=False)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    reference = torch.stack([dataset[(int(i), 0)][0] for i in order[:n]])  # (n, 1, 28, 28) in [-1, 1]
    stats = gaussian_stats(extract_features(classifier, reference))

    rows = [("dpmsolver++3m", steps, name, weight) for steps in (5, 10, 20) for name, weight in
            [("reference", None), ("exact", exact)]]  # fmt: skip
    rows += [("dpmsolver++3m-sde", steps, name, weight) for steps in (10, 20) for name, weight in
             [("reference", None), ("exact", exact), ("diffusers", diffusers_sde)]]  # fmt: skip
    print(f"| sampler | steps | D_2 weight | FD@{n} |")
    print("|---|---:|---|---:|")
    for sampler, steps, name, weight in rows:
        config = pipe.make_scheduler(sampler).config
        scheduler = DPMSolverMultistepScheduler(config) if weight is None else variant(weight)(config)
        images = pipe(n, steps, scheduler=scheduler, seed=0, batch_size=n, output_type="tensor") * 2 - 1
        fd = frechet_distance(*stats, *gaussian_stats(extract_features(classifier, images)))
        print(f"| {sampler} | {steps} | {name} | {fd:.3f} |", flush=True)


if __name__ == "__main__":
    main()
