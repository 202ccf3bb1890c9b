"""End to end: `sample.py` against diffusers' `DDIMPipeline` (50 steps) on the same weights, from process
start to the last PNG written.

    python bench/end_to_end.py --model runs/uncond-model [--num-images 64] [--repeats 2]

The model must be unconditional (diffusers' DDIMPipeline passes no class labels); the figures in
docs/benchmarks.md use the unconditional Fashion-MNIST model of commit 74f0e17, which the commands of its
section "End to end" write to runs/uncond-model. It is exported with `diffusion-export --to diffusers
--scheduler ddim` into a temporary folder. Each row runs one fresh Python process and reports its wall
time (the best of --repeats) and the images it wrote:

- diffusers: DDIMPipeline(UNet2DModel, DDIMScheduler).__call__(batch_size=N, num_inference_steps=50,
  eta=0), one generator, then each image saved as a PNG;
- ours: `python sample.py --model M --num-images N --batch-size N` with the model's default sampler
  (DPM-Solver++ 3M SDE, 20 steps), in fp32, with `--dtype bf16`, and with `--dtype bf16 --channels-last`;
  then the same sampler at 10 steps (`--steps 10`), which still has a better FD than DDIM 50;
- the floor: `python -c "import torch"`, the start-up that every row pays.

Quality at these settings is measured elsewhere (docs/benchmarks.md, "Quality against sampling
cost": FD@2000 of DDIM 50 and of 3M SDE 20 on this model; our DDIM equals diffusers' step for step).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIFFUSERS_SCRIPT = """
import sys, torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
folder, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
pipe = DDIMPipeline(UNet2DModel.from_pretrained(folder + "/unet"), DDIMScheduler.from_pretrained(folder + "/scheduler"))
pipe.to("cuda" if torch.cuda.is_available() else "cpu")  # as sample.py --device auto
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=n, num_inference_steps=50, eta=0.0, generator=torch.Generator().manual_seed(0)).images
for i, image in enumerate(images):
    image.save(f"{out}/{i}.png")
"""


def run(command: list[str], out: Path, repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` runs of ``command`` (a fresh process each), and the PNGs in ``out``."""
    best = float("inf")
    for _ in range(repeats):
        for old in out.glob("*.png"):
            old.unlink()
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best, len(list(out.glob("*.png")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an unconditional model folder of ours")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n = str(args.num_images)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export = tmp / "diffusers-model"
        export_command = "import sys; from diffusion.cli import export_main; sys.exit(export_main())"
        subprocess.run(
            [sys.executable, "-c", export_command, "--model", args.model, "--to", "diffusers", "--out", str(export),
             "--scheduler", "ddim"],
            check=True, capture_output=True,
        )  # fmt: skip
        ours = [sys.executable, str(ROOT / "sample.py"), "--model", args.model, "--num-images", n, "--batch-size", n]
        fast = ["--dtype", "bf16", "--channels-last"]
        rows = {  # name: (command without the output folder, NFE per image)
            "diffusers DDIMPipeline, DDIM 50, fp32": ([sys.executable, "-c", DIFFUSERS_SCRIPT, str(export)], 50),
            "ours sample.py, 3M SDE 20, fp32": (ours, 20),
            "ours sample.py, 3M SDE 20, bf16": ([*ours, "--dtype", "bf16"], 20),
            "ours sample.py, 3M SDE 20, bf16 + channels_last": ([*ours, *fast], 20),
            "ours sample.py, 3M SDE 10, bf16 + channels_last": ([*ours, *fast, "--steps", "10"], 10),
            "floor: python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        }
        print(f"{args.num_images} images, best of {args.repeats} runs, wall time from process start")
        print("| row | NFE per image | wall time (s) | images written | speed-up |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for k, (name, (command, nfe)) in enumerate(rows.items()):
            out = tmp / f"out-{k}"
            out.mkdir()
            if name.startswith("diffusers"):
                command = [*command, str(out), n]
            elif name.startswith("ours"):
                command = [*command, "--out", str(out)]
            seconds, written = run(command, out, args.repeats)
            base = base or seconds
            print(f"| {name} | {nfe} | {seconds:.2f} | {written} | {base / seconds:.1f}x |")


if __name__ == "__main__":
    main()
