"""Sampling speed of a google/ddpm-cifar10-32-sized model imported from a diffusers folder, against diffusers.

    python bench/diffusers_model_speed.py [--num-images 8] [--threads 2]

Builds a diffusers DDPMPipeline from google/ddpm-cifar10-32's published config (our ``ddpm-cifar10``
preset) with random weights (speed does not depend on the weights, and nothing is downloaded), saves
it, loads the folder with `DiffusionPipeline.from_pretrained`, and times N images per row: diffusers'
DDPMPipeline with DDIM 50 steps, and ours with DDIM 50 and with DPM-Solver++ 3M SDE 20 steps, in fp32
and bf16 (autocast-free: the UNet cast to bf16). One warm-up image per row is not timed.
"""

import argparse
import tempfile
import time
import warnings

import diffusers
import torch

from diffusion import DiffusionPipeline
from diffusion.models import diffusers_unet_kwargs, preset


def timed(run, n: int) -> float:
    run(1)  # warm-up
    start = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=8, help="images per timed row (one batch)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.num_images

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        # The published config has no dropout; it is the preset's otherwise (tests/io/test_diffusers_folder.py).
        settings = diffusers_unet_kwargs(preset("ddpm-cifar10", dropout=0.0))
        theirs = diffusers.DDPMPipeline(
            unet=diffusers.UNet2DModel(**settings).eval(),
            scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False),
        )
        theirs.save_pretrained(folder)

        def diffusers_ddim(k: int) -> None:
            with torch.inference_mode():
                theirs(batch_size=k, num_inference_steps=50, output_type="np")

        rows = [("diffusers DDPMPipeline", "DDIM 50", "fp32", 50, diffusers_ddim)]
        for dtype in ("fp32", "bf16"):
            pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
            for label, name, steps in (("DDIM 50", "ddim", 50), ("DPM-Solver++ 3M SDE 20", "dpmsolver++3m-sde", 20)):

                def run(k: int, pipe=pipe, name=name, steps=steps) -> None:
                    pipe(k, steps, scheduler=name, seed=0, output_type="tensor")

                rows.append(("pixel-diffusion", label, dtype, steps, run))
        print(f"google/ddpm-cifar10-32 config (35.7M parameters), 32x32, {n} images per row, {args.threads} threads")
        print("| implementation | sampler | precision | NFE | img/s |")
        print("|---|---|---|---:|---:|")
        for implementation, label, dtype, nfe, run in rows:
            print(f"| {implementation} | {label} | {dtype} | {nfe} | {timed(run, n):.2f} |", flush=True)


if __name__ == "__main__":
    main()
