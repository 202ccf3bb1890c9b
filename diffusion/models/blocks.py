"""UNet building blocks: the residual block, self-attention and the resamplers.

Each block's parameters are named for what they are; `diffusers_map.py` states, once, how each name
corresponds to diffusers' ``UNet2DModel`` so that weights move between the two unchanged.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

TimeConditioning = Literal["additive", "scale_shift"]
Resample = Literal["none", "down", "up"]

# PyTorch's CPU GroupNorm kernel for half-precision channels_last input is much slower than for NCHW when an
# activation has few channels: below this many channels it is cheaper to normalise an NCHW copy and convert
# back; from here on the two kernels are even (docs/benchmarks.md, "Where bf16 time goes: GroupNorm in
# channels_last").
NCHW_GROUP_NORM_BELOW_CHANNELS = 128


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same results) that dodges the slow CPU kernel above.

    Only CPU, bf16/fp16, channels_last inputs with fewer than ``NCHW_GROUP_NORM_BELOW_CHANNELS``
    channels take the detour; every other input calls ``nn.GroupNorm`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h, w)``, in ``x``'s memory format."""
        if (
            x.device.type == "cpu"
            and x.dtype in (torch.bfloat16, torch.float16)
            and self.num_channels < NCHW_GROUP_NORM_BELOW_CHANNELS
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class ResBlock(nn.Module):
    """Pre-activation residual block conditioned on the embedding vector (Ho et al. 2020, app. B).

    ``h = conv1(silu(norm1(x)))``; the embedding is either added to ``h`` (``additive``) or, as in
    Dhariwal & Nichol 2021 sec. 3 ("AdaGN"), applied as ``norm2(h) * (1 + scale) + shift``
    (``scale_shift``). Then ``conv2(dropout(silu(.)))`` and the skip connection. With ``resample``
    the block also halves (average pooling) or doubles (nearest) the resolution of both paths, as
    BigGAN-style up/down residual blocks do.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        dropout: float,
        norm_groups: int,
        norm_eps: float,
        time_conditioning: TimeConditioning,
        resample: Resample = "none",
    ) -> None:
        super().__init__()
        self.time_conditioning = time_conditioning
        self.resample = resample
        self.norm1 = GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        proj_dim = 2 * out_channels if time_conditioning == "scale_shift" else out_channels
        self.emb_proj = nn.Linear(emb_dim, proj_dim)
        self.norm2 = GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x: (b, c_in, h, w)``, ``emb: (b, emb_dim)`` -> ``(b, c_out, h', w')``."""
        h = F.silu(self.norm1(x))
        x, h = self._resample(x), self._resample(h)
        h = self.conv1(h)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (b, proj_dim, 1, 1)
        if self.time_conditioning == "scale_shift":
            scale, shift = e.chunk(2, dim=1)  # (b, c_out, 1, 1) each
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over all pixels, with a GroupNorm in front and a residual around it.

    The heads are either a fixed count (``num_heads``) or follow from a fixed width per head
    (``head_channels``), as in Dhariwal & Nichol 2021. Attention itself is
    ``F.scaled_dot_product_attention``, which picks the fastest available kernel.
    """

    def __init__(self, channels: int, *, num_heads: int, norm_groups: int, norm_eps: float) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h, w)``."""
        _, _, height, width = x.shape
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        q, k, v = rearrange(
            self.qkv(tokens), "b n (three heads d) -> three b heads n d", three=3, heads=self.num_heads
        )  # (b, heads, h*w, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, h*w, d)
        out = self.proj_out(rearrange(out, "b heads n d -> b n (heads d)"))  # (b, h*w, c)
        return x + rearrange(out, "b (h w) c -> b c h w", h=height, w=width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution.

    ``padding=1`` pads all sides by one. ``padding=0`` pads only the right and bottom edges, which is
    what the original DDPM TensorFlow code (and so google/ddpm-* weights) does.
    """

    def __init__(self, channels: int, *, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h/2, w/2)``."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (b, c, h+1, w+1)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, 2h, 2w)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
