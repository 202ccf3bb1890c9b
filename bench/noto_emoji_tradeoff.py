"""Which resolution and preset to train the Noto Emoji model with: each configuration trained for about the
same wall time, then measured by FD and KID against the held-out test split.

    python bench/noto_emoji_tradeoff.py --data data/noto-emoji --work runs/tradeoff \
        [--minutes 6] [--num-images 500] [--configs tiny-32 small-32 tiny-48]

--data is the folder `bench/prepare_noto_emoji.py` writes (``train/`` and ``test/``). Each configuration
first trains 30 steps to measure its images per second, then trains anew for the number of steps that
fills --minutes at that rate (cosine learning rate to 0, so every run ends annealed), and is measured with
``diffusion-evaluate`` (--num-images samples with a class drawn per image, the model's sampler and 20
steps, efficientnet-lite0 features, against the test split). A rerun with the same --minutes reuses the runs
and results in --work (``CONFIG-MINUTESmin``).
Prints a Markdown table: configuration, parameters, images per second, steps, epochs, wall time,
FD@N, KID@N.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
# name -> (preset, image side)
CONFIGS = {"tiny-32": ("tiny", 32), "small-32": ("small", 32), "tiny-48": ("tiny", 48), "tiny-64": ("tiny", 64)}


def train(data: Path, out: Path, preset: str, side: int, steps: int) -> float:
    """Train one configuration for ``steps`` steps into ``out``; the wall seconds it took."""
    command = [
        sys.executable, str(ROOT / "train.py"), "--data", str(data / "train"), "--out", str(out),
        "--preset", preset, "--channels", "3", "--image-size", str(side), "--class-cond",
        "--batch-size", str(BATCH), "--max-steps", str(steps), "--lr", "5e-4", "--lr-schedule", "cosine",
        "--warmup-steps", str(min(100, steps // 4)), "--ema-decay", "0.999", "--dropout", "0.1",
        "--mixed-precision", "bf16", "--sample-every", "0", "--checkpoint-every", "100000",
        "--log-every", "10", "--seed", "0",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def images_per_second(out: Path) -> float:
    """The last logged training rate of the run in ``out``."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "img_per_s" in line][-1]["img_per_s"]


def evaluate(data: Path, model: Path, num_images: int, result: Path) -> dict:
    """FD and KID of ``num_images`` samples of ``model`` against the test split (cached in ``result``)."""
    if not result.is_file():
        command = [
            sys.executable, "-m", "diffusion.evaluate", "--model", str(model), "--reference", str(data / "test"),
            "--num-images", str(num_images), "--num-reference", str(sum(1 for _ in (data / "test").rglob("*.png"))),
            "--extractor", "efficientnet-lite0", "--dtype", "bf16",
            "--json", str(result),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--configs", nargs="+", default=["tiny-32", "small-32", "tiny-48"], choices=list(CONFIGS))
    args = parser.parse_args()
    train_count = sum(1 for p in (args.data / "train").rglob("*.png"))
    rows = []
    for name in args.configs:
        preset, side = CONFIGS[name]
        probe = args.work / f"{name}-probe"
        if not (probe / "metrics.jsonl").is_file():
            train(args.data, probe, preset, side, 30)
        rate = images_per_second(probe)
        steps = int(args.minutes * 60 * rate / BATCH)
        out = args.work / f"{name}-{args.minutes:g}min"  # another --minutes is another run, not this one resumed
        timing = out / "wall.json"
        if not timing.is_file():
            timing.parent.mkdir(parents=True, exist_ok=True)
            seconds = train(args.data, out, preset, side, steps)
            timing.write_text(json.dumps({"seconds": seconds}))
        seconds = json.loads(timing.read_text())["seconds"]
        result = evaluate(args.data, out / "model", args.num_images, out / f"eval-{args.num_images}.json")
        params = sum(t.numel() for t in load_file(out / "model" / "unet" / "model.safetensors").values())
        rows.append((name, params, rate, steps, steps * BATCH / train_count, seconds, result))
        print(f"{name}: {rate:.0f} img/s, {steps} steps, {seconds / 60:.1f} min", flush=True)
    n = args.num_images
    print(f"\n| config | parameters | img/s | steps | epochs | train min | FD@{n} | KID@{n} x 10^3 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, params, rate, steps, epochs, seconds, result in rows:
        fd, kid = result["fd"], result["kid"] * 1e3
        print(
            f"| {name} | {params:,} | {rate:.0f} | {steps} | {epochs:.1f} | {seconds / 60:.1f} | {fd:.2f} | {kid:.2f} |"
        )


if __name__ == "__main__":
    main()
