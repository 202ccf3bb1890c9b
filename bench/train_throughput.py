"""Training-step throughput: ours against diffusers' UNet2DModel with the same weights, side by side.

    python bench/train_throughput.py [--presets ddpm-cifar10 small] [--batch-size 16] [--steps 5]

Each row times a train_unconditional-style step (noise, timesteps, add_noise, forward, MSE in float32,
backward, AdamW step) on identical weights and data. bf16 means CPU/GPU autocast; weights, loss and
optimiser stay fp32. Prints a table; record figures in docs/benchmarks.md with the command and machine.
"""

import argparse
import platform
import time

import torch
from diffusers import DDPMScheduler as DiffusersDDPM
from diffusers import UNet2DModel

from diffusion.models import UNet, diffusers_unet_kwargs, preset, to_diffusers_state_dict
from diffusion.schedulers import DDPMScheduler


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


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["ddpm-cifar10", "small"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    print(f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps, device {device}\n")
    print("| preset | implementation | precision | img/s | vs diffusers fp32 |")
    print("|---|---|---|---:|---:|")
    ours_sched, theirs_sched = DDPMScheduler(), DiffusersDDPM(num_train_timesteps=1000)
    theirs_sched.alphas_cumprod = theirs_sched.alphas_cumprod.to(device)
    for name in args.presets:
        config = preset(name, dropout=0.0)
        torch.manual_seed(0)
        ours = UNet(config).to(device)
        theirs = UNet2DModel(**diffusers_unet_kwargs(config))
        theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict(), config))
        theirs.to(device)
        x0 = torch.randn(args.batch_size, config.in_channels, *config.sample_size, device=device)
        rows = [
            ("diffusers UNet2DModel", theirs, lambda m, x, t: m(x, t).sample, theirs_sched.add_noise),
            ("pixel-diffusion UNet", ours, lambda m, x, t: m(x, t), ours_sched.add_noise),
        ]
        baseline = None
        for label, model, forward, add_noise in rows:
            for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                seconds = timed(
                    step_fn(model, forward, add_noise, optimizer, x0, device, dtype), args.steps, args.warmup, device
                )
                img_s = args.batch_size / seconds
                baseline = baseline or img_s
                print(f"| {name} | {label} | {precision} | {img_s:.1f} | {img_s / baseline:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
