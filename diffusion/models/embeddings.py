"""Timestep and class embeddings: how the UNet learns which noise level (and class) it is denoising."""

import math

import torch
from torch import nn


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10_000.0,
) -> torch.Tensor:
    """Sinusoidal embedding ``(b, dim)`` float32 of timesteps ``(b,)``, Vaswani et al. 2017 sec. 3.5.

    Frequencies are ``max_period ** (-i / (dim / 2 - freq_shift))`` for ``i`` in ``[0, dim / 2)``; an odd
    ``dim`` is zero-padded by one column. The original DDPM code uses ``freq_shift=1`` and ``[sin, cos]``
    order; diffusers' default is ``freq_shift=0`` and ``[cos, sin]`` (``flip_sin_to_cos=True``). Both are
    supported so that either family of weights loads.
    """
    assert timesteps.ndim == 1, f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}"
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = timesteps.float()[:, None] * freqs[None, :]  # (b, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (b, 2*half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))  # (b, dim)
    return emb


class TimestepMLP(nn.Module):
    """The two-layer MLP that turns the sinusoidal embedding into the conditioning vector."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``(b, in_dim) -> (b, out_dim)``."""
        return self.linear_2(self.act(self.linear_1(emb)))
