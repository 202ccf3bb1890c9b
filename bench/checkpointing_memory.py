"""Training memory with and without gradient checkpointing, on the CPU: peak resident memory per run.

    python bench/checkpointing_memory.py [--preset ddpm-cifar10] [--batch-size 16] [--steps 3]

The peak resident set size of a process only grows, so each row runs one fresh Python process that
builds our UNet, takes ``--steps`` bf16-autocast training steps (fp32 weights, AdamW) with
`UNet.gradient_checkpointing` off or on, and reports its peak RSS (``ru_maxrss``), the RSS before the
first step and the time per step. The difference of the two peaks is what checkpointing saves; on
CUDA, `bench/train_throughput.py` reports peak memory directly.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def child(preset_name: str, batch_size: int, steps: int, checkpointing: bool) -> None:
    from diffusion.models import UNet, preset

    torch.manual_seed(0)
    unet = UNet(preset(preset_name, dropout=0.0))
    unet.gradient_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    c, (h, w) = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(batch_size, c, h, w)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = None
    for i in range(steps + 1):  # the first step allocates AdamW's state; time the others
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(x, torch.randint(0, 1000, (batch_size,)))
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_mib": before / 1024, "peak_mib": peak / 1024, "step_s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=("off", "on"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.preset, args.batch_size, args.steps, args.child == "on")
        return
    print(f"{args.preset}, batch {args.batch_size}, bf16 autocast, CPU; one process per row")
    print("| gradient checkpointing | RSS before training (MiB) | peak RSS (MiB) | s per step |")
    print("|---|---:|---:|---:|")
    for mode in ("off", "on"):
        command = [sys.executable, __file__, "--preset", args.preset, "--batch-size", str(args.batch_size)]
        command += ["--steps", str(args.steps), "--child", mode]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"| {mode} | {row['before_mib']:.0f} | {row['peak_mib']:.0f} | {row['step_s']:.2f} |")


if __name__ == "__main__":
    main()
