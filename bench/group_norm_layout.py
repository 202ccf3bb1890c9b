"""Where bf16 sampling time goes on the CPU: GroupNorm in channels_last against NCHW.

    python bench/group_norm_layout.py [--model assets/fashion-mnist]

Two tables. First, GroupNorm + SiLU alone on activations of the shapes the UNets use, in each dtype and
memory format (ms per call). Second, a whole bf16 UNet forward: NCHW, channels_last, channels_last with
every GroupNorm run on an NCHW copy (converted in and out), and channels_last with every GroupNorm run
in fp32 (converted in and out), for the 28x28 Fashion-MNIST model (batch 64) and the ddpm-cifar10 preset
(batch 16, random weights). It shows the levers, it does not apply them.
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models import UNet, preset
from diffusion.pipeline import DiffusionPipeline


def ms_per_call(fn: Callable[[], object], iters: int = 20) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the 28x28 model folder (default: shipped)")
    args = parser.parse_args()
    torch.manual_seed(0)

    print("| activation (n, c, h, w), 8 groups | bf16 channels_last | bf16 NCHW | fp32 channels_last | fp32 NCHW |")
    print("|---|---:|---:|---:|---:|")
    for shape in [(64, 32, 28, 28), (64, 64, 14, 14), (16, 128, 32, 32), (16, 256, 16, 16)]:
        c = shape[1]
        weight, bias = torch.randn(c), torch.randn(c)
        cells = []
        for dtype in (torch.bfloat16, torch.float32):
            for layout in (torch.channels_last, torch.contiguous_format):
                x = torch.randn(shape).to(dtype).contiguous(memory_format=layout)
                w, b = weight.to(dtype), bias.to(dtype)
                cells.append(ms_per_call(lambda x=x, w=w, b=b: F.silu(F.group_norm(x, 8, w, b, 1e-5))))
        print(f"| {shape} | " + " | ".join(f"{ms:.2f} ms" for ms in cells) + " |")

    original = nn.GroupNorm.forward

    def nchw_group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            return original(self, x.contiguous()).contiguous(memory_format=torch.channels_last)
        return original(self, x)

    def fp32_group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)

    print()
    columns = "NCHW | channels_last | channels_last, GroupNorm on NCHW copies | channels_last, GroupNorm in fp32"
    print(f"| bf16 UNet forward | {columns} |")
    print("|---|---:|---:|---:|---:|")
    models = [
        ("shipped 28x28 model, batch 64", DiffusionPipeline.from_pretrained(args.model).unet, 64),
        ("ddpm-cifar10 preset, batch 16", UNet(preset("ddpm-cifar10", dropout=0.0)).eval(), 16),
    ]
    for name, unet, batch in models:
        c, (h, w) = unet.config.in_channels, unet.config.sample_size
        x, t = torch.randn(batch, c, h, w).bfloat16(), torch.full((batch,), 500)
        unet = unet.to(torch.bfloat16)
        cells = [ms_per_call(lambda unet=unet, x=x, t=t: unet(x, t), iters=10)]
        unet = unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        cells.append(ms_per_call(lambda unet=unet, x=x, t=t: unet(x, t), iters=10))
        for variant in (nchw_group_norm, fp32_group_norm):
            nn.GroupNorm.forward = variant
            try:
                cells.append(ms_per_call(lambda unet=unet, x=x, t=t: unet(x, t), iters=10))
            finally:
                nn.GroupNorm.forward = original
        print(f"| {name} | " + " | ".join(f"{ms:.1f} ms ({batch / ms * 1e3:.0f} img/s)" for ms in cells) + " |")


if __name__ == "__main__":
    main()
