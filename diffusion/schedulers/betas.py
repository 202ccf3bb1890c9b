"""Named beta schedules β_1..β_T, built in float64.

Every function returns a float64 tensor of shape (num_train_timesteps,) on the CPU; callers cast at use.
Index ``t`` of the result is the variance of the forward step q(x_t | x_{t-1}) (Ho et al. 2020, eq. 2),
with timesteps numbered 0..T-1 as in diffusers.

| name            | definition                                                        | diffusers name      |
|-----------------|-------------------------------------------------------------------|---------------------|
| `linear`        | linspace(beta_start, beta_end, T) (Ho et al. 2020, sec. 4)        | `linear`            |
| `scaled_linear` | linspace(√beta_start, √beta_end, T)² (latent diffusion)           | `scaled_linear`     |
| `cosine`        | ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008, β ≤ 0.999          | `squaredcos_cap_v2` |
|                 | (Nichol & Dhariwal 2021, eq. 17); ignores beta_start / beta_end   |                     |
| `sigmoid`       | sigmoid(linspace(-6, 6, T))·(beta_end - beta_start) + beta_start  | `sigmoid`           |
|                 | (GeoDiff, Xu et al. 2022)                                         |                     |
"""

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

BetaScheduleName = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaScheduleName)

COSINE_S = 0.008  # Nichol & Dhariwal 2021, sec. 3.2: small offset so that β_1 is not too small
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: cap that avoids the singularity of β near t = T


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Linear schedule of Ho et al. 2020, sec. 4 (β from 1e-4 to 0.02 over T = 1000 steps); float64, (T,)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)  # (T,)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Linear in √β, the schedule of latent diffusion (Rombach et al. 2022) and Stable Diffusion; float64, (T,)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2  # (T,)


def cosine_betas(num_train_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal 2021, eq. 17 (s = 0.008, β ≤ 0.999); float64, (T,).

    `beta_start` and `beta_end` are ignored: they only give all schedules one signature.
    """
    del beta_start, beta_end  # the cosine schedule is defined by ᾱ alone
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T+1,) t/T
    # eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2); (T+1,), and f(0) cancels in the ratio below
    f = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=MAX_BETA)  # (T,) β_t = min(1 - ᾱ(t+1)/ᾱ(t), 0.999)


def sigmoid_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Sigmoid schedule of GeoDiff (Xu et al. 2022), as diffusers defines it; float64, (T,)."""
    x = torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64)  # (T,)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start  # sigmoid ∈ (0, 1) onto (β_start, β_end)


_BUILDERS: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}
assert tuple(_BUILDERS) == BETA_SCHEDULES, "the builders and the Literal must list the same names"


def make_betas(
    name: BetaScheduleName, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Build the named beta schedule in float64.

    Args:
        name: one of `BETA_SCHEDULES`.
        num_train_timesteps: T, the number of training timesteps.
        beta_start: β of the first timestep (unused by `cosine`).
        beta_end: β of the last timestep (unused by `cosine`).

    Returns:
        betas, float64, shape (num_train_timesteps,).

    Raises:
        ValueError: if `name` is not a known schedule or `num_train_timesteps` < 1.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {list(BETA_SCHEDULES)}")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    betas = _BUILDERS[name](num_train_timesteps, beta_start, beta_end)
    assert betas.shape == (num_train_timesteps,) and betas.dtype == torch.float64
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that the last timestep has zero SNR (Lin et al. 2023, Algorithm 1).

    √ᾱ_t is shifted so that √ᾱ_{T-1} = 0 and scaled so that √ᾱ_0 keeps its value; the betas are then
    recovered from the new ᾱ. Afterwards β_{T-1} = 1, so x_{T-1} is pure noise, as at sampling time.

    Args:
        betas: shape (T,), any float dtype; computed in float64.

    Returns:
        rescaled betas, float64, shape (T,).

    Raises:
        ValueError: if `betas` is not 1-D with at least two entries.
    """
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {tuple(betas.shape)}")
    sqrt_alphas_cumprod = torch.cumprod(1 - betas.to(torch.float64), dim=0).sqrt()  # (T,) √ᾱ_t
    first, last = sqrt_alphas_cumprod[0].clone(), sqrt_alphas_cumprod[-1].clone()
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * (first / (first - last))  # Alg. 1: shift, then scale
    alphas_cumprod = sqrt_alphas_cumprod**2  # (T,) ᾱ_t, with ᾱ_{T-1} = 0
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])  # undo the cumprod
    return 1 - alphas
