"""Does bf16 training follow the fp32 loss curve? The same short run twice, differing only in precision.

    python bench/bf16_loss_curve.py --data data/fashion-mnist --out runs/precision \
        --precision no|bf16 [--steps 300] [--threads 1]     # one run per call; run both, then:
    python bench/bf16_loss_curve.py --out runs/precision --compare

Each run trains the `tiny` preset on Fashion-MNIST (28x28, batch 64, lr 5e-4, 50 warmup steps, seed 0) with
`train.py`'s Trainer, logging the loss every 10 steps; the data order, noise and timesteps are the same in
both (they do not depend on the precision). --compare prints both curves as means over windows of 50 steps,
their difference, and the step-to-step noise of the fp32 curve in the same window (the standard deviation
of its logged losses), which is the scale "within noise" is judged on.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from diffusion.training import TrainConfig, Trainer

WINDOW = 50


def read(path: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", choices=("no", "bf16"), default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.compare:
        config = TrainConfig(
            data=str(args.data), out=str(args.out / args.precision), preset="tiny", channels=1, image_size=(28, 28),
            batch_size=64, max_steps=args.steps, lr=5e-4, warmup_steps=50, mixed_precision=args.precision,
            hflip=False, sample_every=0, checkpoint_every=args.steps, log_every=10, seed=0, resume="never",
        )  # fmt: skip
        Trainer(config).train()
        return
    fp32, bf16 = read(args.out / "no" / "metrics.jsonl"), read(args.out / "bf16" / "metrics.jsonl")
    print("| steps | fp32 mean loss | bf16 mean loss | bf16 - fp32 | fp32 noise (std of logged losses) |")
    print("|---|---:|---:|---:|---:|")
    last = max(fp32)
    for start in range(0, last, WINDOW):
        steps = [s for s in fp32 if start < s <= start + WINDOW and s in bf16]
        a, b = [fp32[s] for s in steps], [bf16[s] for s in steps]
        diff = statistics.mean(b) - statistics.mean(a)
        print(
            f"| {start + 1}–{start + WINDOW} | {statistics.mean(a):.4f} | {statistics.mean(b):.4f} | {diff:+.4f} | "
            f"{statistics.stdev(a):.4f} |"
        )


if __name__ == "__main__":
    main()
