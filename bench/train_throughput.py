"""Training-step throughput: ours against diffusers' UNet2DModel with the same weights, side by side.

    python bench/train_throughput.py [--presets ddpm-cifar10 small] [--batch-size 16] [--steps 5]

Each row times a train_unconditional-style step (noise, timesteps, add_noise, forward, MSE in float32,
backward, AdamW step) on identical weights and data. bf16 means CPU/GPU autocast; weights, loss and
optimiser stay fp32. Our UNet also runs with one lever each on top of bf16: channels_last, fused AdamW,
torch.compile. MFU is FLOPs per image of one step (forward + backward, counted by `FlopCounterMode`)
times img/s over the matmul peak of the row's precision, measured in the same run. Peak memory is
reported on CUDA only. Prints a table; record figures in docs/benchmarks.md with the command and machine.
"""

import argparse
import logging
import platform
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler as DiffusersDDPM
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from diffusion.models import UNet, diffusers_unet_kwargs, preset, to_diffusers_state_dict
from diffusion.schedulers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, however this one is started
from sample_throughput import matmul_peak, timed


def step_fn(model, forward, add_noise, optimizer, x0, device, autocast_dtype):
    def step() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        noisy = add_noise(x0, noise, t)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = forward(model, noisy, t)
        loss = (out.float() - noise).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


VARIANTS = (
    ("diffusers UNet2DModel", "fp32", ""),
    ("diffusers UNet2DModel", "bf16", ""),
    ("pixel-diffusion UNet", "fp32", ""),
    ("pixel-diffusion UNet", "bf16", ""),
    ("pixel-diffusion UNet", "bf16", "channels_last"),
    ("pixel-diffusion UNet", "bf16", "fused AdamW"),
    ("pixel-diffusion UNet", "bf16", "compiled"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["ddpm-cifar10", "small"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    # fp32 means IEEE fp32 on every row and in the peak: no TF32 on CUDA (the MFU denominator must match).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peaks = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    print(f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps, device {device}")
    print(f"matmul peak: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s\n")
    print("| preset | implementation | precision | lever | img/s | vs diffusers fp32 | peak memory (MiB) | MFU |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    ours_sched, theirs_sched = DDPMScheduler(), DiffusersDDPM(num_train_timesteps=1000)
    theirs_sched.alphas_cumprod = theirs_sched.alphas_cumprod.to(device)
    for name in args.presets:
        config = preset(name, dropout=0.0)
        torch.manual_seed(0)
        reference = UNet(config)
        x0 = torch.randn(args.batch_size, config.in_channels, *config.sample_size, device=device)
        with FlopCounterMode(display=False) as counter:  # forward + backward of one step
            out = reference.to(device)(x0, torch.zeros(args.batch_size, dtype=torch.long, device=device))
            out.square().mean().backward()
        flops_per_image = counter.get_total_flops() / args.batch_size
        baseline = None
        for label, precision, lever in VARIANTS:
            if label.startswith("diffusers"):
                model = UNet2DModel(**diffusers_unet_kwargs(config))
                model.load_state_dict(to_diffusers_state_dict(reference.state_dict(), config))
                forward, add_noise = (lambda m, x, t: m(x, t).sample), theirs_sched.add_noise
            else:
                model = UNet(config)
                model.load_state_dict(reference.state_dict())
                forward, add_noise = (lambda m, x, t: m(x, t)), ours_sched.add_noise
            model.to(device)
            x = x0
            if lever == "channels_last":
                model.to(memory_format=torch.channels_last)
                x = x0.contiguous(memory_format=torch.channels_last)
            if lever == "compiled":
                compiled = torch.compile(model)
                forward = lambda m, x, t, compiled=compiled: compiled(x, t)  # noqa: E731
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=lever == "fused AdamW" or None)
            dtype = torch.bfloat16 if precision == "bf16" else None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(
                step_fn(model, forward, add_noise, optimizer, x, device, dtype),
                args.steps,
                args.warmup,
                device,
                repeats=1,  # a training step is long enough to time once
            )
            memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "–"
            img_s = args.batch_size / seconds
            baseline = baseline or img_s
            mfu = flops_per_image * img_s / (peaks[precision] * 1e9)
            print(
                f"| {name} | {label} | {precision} | {lever or '–'} | {img_s:.1f} | {img_s / baseline:.2f}x | "
                f"{memory} | {mfu:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
