"""Sampling-forward throughput: our UNet against diffusers' UNet2DModel with the same weights, side by side.

    python bench/sample_throughput.py [--preset ddpm-cifar10] [--batch-size 16] [--iters 10] [--rows ...]

One row is one way to run the UNet forward (inference mode) on a fixed batch of noisy images and
timesteps: the implementation (ours or diffusers, weights copied through the name map), the precision
(fp32, bf16 autocast, bf16 weights), the memory format (channels_last) and torch.compile. Each row prints
img/s, the speed-up over diffusers' default fp32 path, the largest absolute difference of its output from
our fp32 output, peak memory (CUDA only), and MFU: FLOPs per image (counted by
`torch.utils.flop_counter.FlopCounterMode`) times img/s over the matmul peak measured in the same run
for that precision (bf16 rows against the bf16 peak, fp32 rows against the fp32 peak).
"""

import argparse
import logging
import platform
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from diffusion.models import UNet, diffusers_unet_kwargs, preset, to_diffusers_state_dict

ROWS = (
    "diffusers-fp32",
    "diffusers-fp32-cl",
    "diffusers-bf16-autocast",
    "diffusers-bf16",
    "ours-fp32",
    "ours-fp32-cl",
    "ours-bf16-autocast",
    "ours-bf16",
    "ours-bf16-cl",
    "ours-bf16-cl-compiled",
)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, iters: int = 20) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``: the practical peak the MFU column divides by."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device, repeats: int = 3) -> float:
    """Seconds per call, the best of ``repeats`` runs of ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def build(row: str, ours: UNet, theirs: UNet2DModel, x: torch.Tensor, t: torch.Tensor):
    """(model, forward function) for a row; the model is a copy in the row's dtype and memory format."""
    parts = row.split("-")
    impl, precision = parts[0], parts[1]
    weights_bf16 = precision == "bf16" and "autocast" not in parts
    model = (UNet(ours.config) if impl == "ours" else UNet2DModel(**theirs.config)).eval()
    model.load_state_dict((ours if impl == "ours" else theirs).state_dict())
    model = model.to(x.device, torch.bfloat16 if weights_bf16 else torch.float32)
    inputs = x.to(torch.bfloat16) if weights_bf16 else x
    if "cl" in parts:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    call = model
    if "compiled" in parts:
        call = torch.compile(model)
    autocast = "autocast" in parts

    @torch.inference_mode()
    def forward() -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = call(inputs, t)
        return out.sample if impl == "diffusers" else out

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    # fp32 means IEEE fp32 on every row and in the peak: no TF32 on CUDA (the MFU denominator must match).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # its note on casting a model with .to(dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = preset(args.preset, dropout=0.0)
    ours = UNet(config).eval()
    theirs = UNet2DModel(**diffusers_unet_kwargs(config)).eval()
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict(), config))
    x = torch.randn(args.batch_size, config.in_channels, *config.sample_size, device=device)
    t = torch.randint(0, 1000, (args.batch_size,), device=device)

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        ours.to(device)(x, t)
    flops_per_image = counter.get_total_flops() / args.batch_size
    peaks = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    with torch.inference_mode():
        reference = ours.to(device)(x, t).float()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"{args.preset}, batch {args.batch_size} at {config.sample_size[0]}x{config.sample_size[1]}, {where}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"forward: {flops_per_image / 1e9:.2f} GFLOP per image; matmul peak bf16 {peaks['bf16']:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32']:.0f} GFLOP/s"
    )
    print("| row | img/s | vs diffusers fp32 | max abs diff vs ours fp32 | peak memory (MiB) | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for row in args.rows:
        forward = build(row, ours, theirs, x, t)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(forward, args.iters, args.warmup, device)
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "–"
        diff = (forward().float() - reference).abs().max().item()
        img_s = args.batch_size / seconds
        base = img_s if row == "diffusers-fp32" else base
        speedup = f"{img_s / base:.2f}x" if base else "–"
        peak = peaks["bf16" if "bf16" in row else "fp32"]
        mfu = flops_per_image * img_s / (peak * 1e9)
        print(f"| {row} | {img_s:.1f} | {speedup} | {diff:.2e} | {memory} | {mfu:.0%} |")


if __name__ == "__main__":
    main()
