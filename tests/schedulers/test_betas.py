import math

import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from diffusion.schedulers import BETA_SCHEDULES, make_betas, rescale_zero_terminal_snr

T = 1000


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_betas_and_alphas_cumprod_match_diffusers(make_pair, beta_schedule, rescale):
    pair = make_pair("ddpm", beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale)
    ours, theirs = pair.ours.schedule, pair.theirs
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    # diffusers rescales in float32, where shifting √ᾱ by √ᾱ_{T-1} cancels digits: its rescaled betas
    # are good to ~3e-6 absolute only (β_0 is off by up to 0.1%; test_rescale_matches_diffusers_in_float64
    # shows the algorithms agree). Unrescaled betas agree to float32 rounding (default tolerances).
    tol = {"rtol": 1e-5, "atol": 5e-6} if rescale else {}
    torch.testing.assert_close(ours.betas.float(), theirs.betas, **tol)
    torch.testing.assert_close(ours.alphas.float(), theirs.alphas, **tol)
    # diffusers' float32 cumprod of 1000 factors drifts by up to ~1e-5 relative (worst for cosine,
    # whose last betas are near 1, so 1 - β keeps few digits); atol covers the ᾱ ≈ 0 tail.
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=5e-5, atol=1e-7)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_make_betas_is_float64_in_range(beta_schedule):
    betas = make_betas(beta_schedule, T, 1e-4, 0.02)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert (betas > 0).all() and (betas < 1).all()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_linear_schedules_hit_their_endpoints(beta_schedule):
    betas = make_betas(beta_schedule, T, 1e-4, 0.02)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))


def test_cosine_alphas_cumprod_is_the_closed_form():
    # Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t+1)/f(0) for 0-based t, f(u) = cos²((u/T + s)/(1 + s)·π/2),
    # wherever the 0.999 cap on β is not active (only the last few timesteps).
    def f(u: float) -> float:
        return math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = make_betas("cosine", T)
    capped = betas >= 0.999
    assert capped[-1] and capped.sum() < 5
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    first_capped = int(capped.nonzero()[0])
    torch.testing.assert_close(alphas_cumprod[:first_capped], expected[:first_capped], rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_rescale_zero_terminal_snr(beta_schedule):
    betas = make_betas(beta_schedule, T)
    rescaled = rescale_zero_terminal_snr(betas)
    before = torch.cumprod(1 - betas, dim=0)
    after = torch.cumprod(1 - rescaled, dim=0)
    assert rescaled.dtype == torch.float64
    assert after[-1] == 0 and rescaled[-1] == 1  # Lin et al. 2023: SNR(T-1) = 0
    torch.testing.assert_close(after[0], before[0], rtol=1e-12, atol=0)  # ᾱ_0 is kept
    assert (after[1:] < after[:-1]).all()  # still a valid, decreasing ᾱ


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_rescale_matches_diffusers_in_float64(beta_schedule):
    betas = make_betas(beta_schedule, T)
    expected = diffusers_rescale(betas.clone())  # diffusers' function keeps the dtype it is given
    torch.testing.assert_close(rescale_zero_terminal_snr(betas), expected, rtol=1e-12, atol=1e-15)


def test_unknown_beta_schedule_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'quadratic'.*'linear', 'scaled_linear', 'cosine', 'sigmoid'"):
        make_betas("quadratic", T)


def test_rescale_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        rescale_zero_terminal_snr(torch.full((2, 3), 0.01))
