"""DDIM inversion: reconstruction error and cost against steps and fixed-point iterations.

    python bench/inversion.py [--model M] [--num-images 8] [--steps 20 50 100] [--iterations 0 1 2]

The images to invert are the model's own samples (seeds 0..N-1, DPM-Solver++ 3M SDE, 20 steps), so a perfect
inversion exists. Each row inverts them (`DiffusionPipeline.invert`), regenerates with DDIM at η = 0
and the same steps, and reports the absolute error in [0, 1] (mean, and the largest pixel), the
latents' standard deviation (1 for Gaussian noise), model evaluations per image and wall time.
"""

import argparse
import time

import torch

from diffusion.pipeline import DiffusionPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: shipped)")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = DiffusionPipeline.from_pretrained(args.model)
    images = pipe(args.num_images, 20, "dpmsolver++3m-sde", seed=0, output_type="tensor")
    print("| steps | fixed-point iterations | NFE per image | mean error | max error | latent std | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        for iterations in args.iterations:
            start = time.perf_counter()
            latents = pipe.invert(images, steps, fixed_point_iterations=iterations)
            again = pipe(args.num_images, steps, "ddim", eta=0.0, latents=latents, output_type="tensor")
            seconds = time.perf_counter() - start
            error = (again - images).abs()
            nfe = steps * (iterations + 1) + steps
            print(
                f"| {steps} | {iterations} | {nfe} | {error.mean():.4f} | {error.max():.4f} | "
                f"{latents.std():.3f} | {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
