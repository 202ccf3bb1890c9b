"""`NoiseSchedule`: the forward process and the conversions between prediction types."""

import pytest
import torch

from diffusion.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule, SchedulerConfig

T = 1000


def make_data(batch: int = 4, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 3, 8, 8, generator=generator, dtype=dtype)
    noise = torch.randn(batch, 3, 8, 8, generator=generator, dtype=dtype)
    timesteps = torch.tensor([0, 1, 500, T - 1][:batch])
    return x0, noise, timesteps


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_add_noise_and_velocity_match_diffusers(make_pair, beta_schedule, rescale):
    pair = make_pair("ddpm", beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale)
    x0, noise, timesteps = make_data()
    # diffusers takes √ of its float32 ᾱ_t (relative error up to ~1e-5, see test_betas), we of float64;
    # and at t = 0 its 1 - ᾱ_0 = 1 - 0.9999 keeps ~3 digits in float32, so √(1-ᾱ_0)·ε is off by ~3e-6,
    # ~2e-5 after its float32 rescale (which moves β_0 by up to 0.1%, see test_betas).
    tol = {"rtol": 1e-5, "atol": 5e-5 if rescale else 1e-5}
    torch.testing.assert_close(
        pair.ours.add_noise(x0, noise, timesteps), pair.theirs.add_noise(x0, noise, timesteps), **tol
    )
    torch.testing.assert_close(
        pair.ours.schedule.get_velocity(x0, noise, timesteps),
        pair.theirs.get_velocity(x0, noise, timesteps),
        **tol,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_add_noise_is_eq_4_in_the_sample_dtype(dtype):
    schedule = NoiseSchedule(SchedulerConfig())
    x0, noise, timesteps = make_data(dtype=dtype)
    noisy = schedule.add_noise(x0, noise, timesteps)
    assert noisy.dtype == dtype and noisy.shape == x0.shape
    alphas_cumprod = schedule.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)  # (b, 1, 1, 1) float64
    expected = alphas_cumprod.sqrt() * x0.double() + (1 - alphas_cumprod).sqrt() * noise.double()
    # bfloat16 keeps 8 bits of mantissa: compare at its resolution.
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(noisy.double(), expected, **tol)


@pytest.mark.parametrize("timestep", [7, torch.tensor(7), torch.tensor([7])])
def test_add_noise_broadcasts_one_timestep(timestep):
    schedule = NoiseSchedule(SchedulerConfig())
    x0, noise, _ = make_data()
    expected = schedule.add_noise(x0, noise, torch.full((4,), 7))
    torch.testing.assert_close(schedule.add_noise(x0, noise, timestep), expected, rtol=0, atol=0)


def test_add_noise_leaves_its_inputs_and_tables_alone():
    schedule = NoiseSchedule(SchedulerConfig())
    before = schedule.alphas_cumprod.clone()
    x0, noise, timesteps = make_data(dtype=torch.float16)
    copies = (x0.clone(), noise.clone())
    schedule.add_noise(x0, noise, timesteps)
    assert schedule.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(schedule.alphas_cumprod, before, rtol=0, atol=0)
    torch.testing.assert_close((x0, noise), copies, rtol=0, atol=0)


@pytest.mark.parametrize("rescale", [False, True])
def test_snr_is_alphas_cumprod_over_one_minus(rescale):
    schedule = NoiseSchedule(SchedulerConfig(rescale_betas_zero_snr=rescale))
    timesteps = torch.arange(T)
    alphas_cumprod = schedule.alphas_cumprod
    expected = alphas_cumprod / (1 - alphas_cumprod)
    torch.testing.assert_close(schedule.snr(timesteps, dtype=torch.float64), expected, rtol=0, atol=0)
    snr = schedule.snr(timesteps)
    assert snr.dtype == torch.float32 and snr.shape == (T,)
    assert (snr[-1] == 0) == rescale  # zero terminal SNR only after the rescale
    assert schedule.snr(5).shape == ()


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_target_and_conversions_round_trip(prediction_type, beta_schedule, rescale):
    """x_0, ε → training target → (x̂_0, ε̂) gives x_0 and ε back, for every prediction type."""
    config = SchedulerConfig(
        prediction_type=prediction_type, beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale
    )
    schedule = NoiseSchedule(config)
    x0, noise, timesteps = make_data(dtype=torch.float64)
    if rescale:
        # At t = T-1 the sample is pure noise (ᾱ = 0): x_0 cannot come back from ε or x_t alone, and
        # ε cannot come back from x_0 alone. Round-trip at the other timesteps.
        x0, noise, timesteps = x0[:3], noise[:3], timesteps[:3]
    sample = schedule.add_noise(x0, noise, timesteps)
    target = schedule.training_target(x0, noise, timesteps)
    expected_target = {"epsilon": noise, "sample": x0}.get(prediction_type)
    if prediction_type == "v_prediction":
        alphas_cumprod = schedule.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        expected_target = alphas_cumprod.sqrt() * noise - (1 - alphas_cumprod).sqrt() * x0  # Salimans & Ho
    torch.testing.assert_close(target, expected_target, rtol=1e-12, atol=1e-12)
    # float64 throughout, but at t = 0 (√(1-ᾱ_0) = 0.01) and t = T-1 (√ᾱ ≈ 0.006) one coefficient is
    # small and division by it amplifies rounding by ~1e2.
    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(schedule.pred_original_sample(target, sample, timesteps), x0, **tol)
    torch.testing.assert_close(schedule.pred_epsilon(target, sample, timesteps), noise, **tol)


@pytest.mark.parametrize(
    ("timesteps", "match"),
    [
        (torch.tensor([0, 1, 2, T]), r"timesteps must be in \[0, 999\]"),
        (torch.tensor([-1, 0, 0, 0]), r"timesteps must be in \[0, 999\]"),
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), "timesteps must be integers"),
        (torch.zeros(4, 1, dtype=torch.long), r"shape \(batch,\)"),
        (torch.zeros(3, dtype=torch.long), r"shape \(batch,\)"),
        (T, r"timesteps must be in \[0, 999\]"),
    ],
)
def test_bad_timesteps_raise(timesteps, match):
    schedule = NoiseSchedule(SchedulerConfig())
    x0, noise, _ = make_data()
    with pytest.raises(ValueError, match=match):
        schedule.add_noise(x0, noise, timesteps)


def test_integer_samples_raise():
    schedule = NoiseSchedule(SchedulerConfig())
    with pytest.raises(ValueError, match="floating-point"):
        schedule.add_noise(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.tensor([1, 2]))
