"""DDPMScheduler against diffusers' DDPMScheduler, and against Ho et al. 2020 in closed form."""

import warnings

import diffusers
import pytest
import torch

from diffusion.schedulers import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    DDPMConfig,
    DDPMScheduler,
)

PROCESSING = ["none", "clip", "threshold"]
N = 10  # inference steps of the oracle comparisons


def step_both(pair, sample, model_output, t, seed):
    """One step on each side, with generators seeded identically."""
    ours = pair.ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))
    theirs = pair.their_step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))
    return ours, theirs


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("processing", PROCESSING)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_step_matches_diffusers(make_pair, inputs, beta_schedule, spacing, prediction_type, processing, variance_type):
    pair = make_pair(
        "ddpm",
        beta_schedule=beta_schedule,
        timestep_spacing=spacing,
        prediction_type=prediction_type,
        processing=processing,
        variance_type=variance_type,
    )
    pair.set_timesteps(N)
    sample, model_output = inputs
    timesteps = pair.ours.timesteps.tolist()
    for t in (timesteps[0], timesteps[N // 2], timesteps[-1]):  # first, middle, final (t' = -1)
        ours, theirs = step_both(pair, sample, model_output, t, seed=t)
        pair.assert_matches(ours.pred_original_sample, theirs[1])
        pair.assert_matches(ours.prev_sample, theirs[0])


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_zero_terminal_snr_step_matches_diffusers(make_pair, inputs, beta_schedule, prediction_type, variance_type):
    # Trailing spacing starts at t = T-1, where ᾱ = 0 after the rescale. With epsilon prediction both
    # sides divide by √ᾱ = 0 there (x̂_0 = ±inf); assert_matches compares that with equal_nan.
    pair = make_pair(
        "ddpm",
        beta_schedule=beta_schedule,
        rescale_betas_zero_snr=True,
        prediction_type=prediction_type,
        variance_type=variance_type,
    )
    pair.set_timesteps(N)
    sample, model_output = inputs
    for t in pair.ours.timesteps.tolist():
        ours, theirs = step_both(pair, sample, model_output, t, seed=t)
        pair.assert_matches(ours.pred_original_sample, theirs[1])
        pair.assert_matches(ours.prev_sample, theirs[0])


@pytest.mark.parametrize("per_item_generators", [False, True])
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_sampling_loop_matches_diffusers(
    make_pair, model, spacing, prediction_type, variance_type, per_item_generators
):
    pair = make_pair(
        "ddpm",
        beta_schedule="scaled_linear",
        timestep_spacing=spacing,
        prediction_type=prediction_type,
        processing="clip",
        variance_type=variance_type,
    )
    pair.set_timesteps(N)

    def generators():
        if per_item_generators:
            return [torch.Generator().manual_seed(seed) for seed in (7, 8)]
        return torch.Generator().manual_seed(7)

    ours_generator, their_generator = generators(), generators()
    ours = theirs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in pair.ours.timesteps.tolist():
        ours = pair.ours.step(model(ours, t), t, ours, generator=ours_generator).prev_sample
        theirs = pair.their_step(model(theirs, t), t, theirs, generator=their_generator)[0]
    pair.assert_matches(ours, theirs)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_posterior_variance_is_the_closed_form(beta_schedule):
    scheduler = DDPMScheduler(DDPMConfig(beta_schedule=beta_schedule))
    schedule = scheduler.schedule
    # Every timestep: Ho et al. 2020, eq. 7, β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t)·β_t with ᾱ_{-1} = 1.
    scheduler.set_timesteps(1000)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod[:-1]])
    expected = (1 - alphas_cumprod_prev) / (1 - schedule.alphas_cumprod) * schedule.betas
    actual = torch.tensor([scheduler.posterior_variance(t) for t in range(1000)], dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)
    assert actual[0] == 0 and scheduler.variance(0) == 1e-20  # diffusers' clamp of fixed_small
    # Strided (10 steps): the same formula with t' the previous inference timestep, β_t = 1 - ᾱ_t/ᾱ_{t'}.
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps.tolist():
        prev = scheduler.previous_timestep(t)
        alpha_prod_t = schedule.alphas_cumprod[t].item()
        alpha_prod_prev = schedule.alphas_cumprod[prev].item() if prev >= 0 else 1.0
        beta = 1 - alpha_prod_t / alpha_prod_prev
        expected_t = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * beta
        assert scheduler.posterior_variance(t) == pytest.approx(expected_t, rel=1e-12, abs=1e-300)
        large = DDPMScheduler(DDPMConfig(beta_schedule=beta_schedule, variance_type="fixed_large"))
        large.set_timesteps(10)
        assert large.variance(t) == pytest.approx(beta, rel=1e-12)


def test_no_noise_at_timestep_zero(inputs):
    scheduler = DDPMScheduler(DDPMConfig(variance_type="fixed_large"))
    scheduler.set_timesteps(1000)
    sample, model_output = inputs
    first = scheduler.step(model_output, 0, sample, generator=torch.Generator().manual_seed(1))
    second = scheduler.step(model_output, 0, sample, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first.prev_sample, second.prev_sample, rtol=0, atol=0)
    # With ᾱ_{t'} = 1 at the final step, μ̃ = x̂_0 exactly (eq. 7).
    torch.testing.assert_close(first.prev_sample, first.pred_original_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_from_diffusers_config_dict_matches(inputs, spacing, variance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDPMScheduler(
            beta_schedule="squaredcos_cap_v2",
            timestep_spacing=spacing,
            variance_type=variance_type,
            prediction_type="v_prediction",
            clip_sample=True,
        )
    ours = DDPMScheduler.from_dict(dict(theirs.config))
    ours.set_timesteps(N)
    theirs.set_timesteps(N)
    sample, model_output = inputs
    for t in ours.timesteps.tolist():
        actual = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(t))
        expected = theirs.step(model_output, t, sample, generator=torch.Generator().manual_seed(t))
        # diffusers' float32 ᾱ_t vs our float64, see conftest.Pair.assert_matches.
        torch.testing.assert_close(actual.prev_sample, expected.prev_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(actual.pred_original_sample, expected.pred_original_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_coefficients_are_improved_diffusions_tables_on_the_full_grid(beta_schedule, variance_type):
    """With every timestep, the posterior mean's weights are improved-diffusion's tables built from β_t
    (eq. 7): coef1 = β_t·√ᾱ_{t-1}/(1-ᾱ_t), coef2 = (1-ᾱ_{t-1})·√α_t/(1-ᾱ_t), with ᾱ_{-1} = 1."""
    scheduler = DDPMScheduler(DDPMConfig(beta_schedule=beta_schedule, variance_type=variance_type))
    scheduler.set_timesteps(1000)
    betas = scheduler.schedule.betas
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    coef1 = betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)
    coef2 = (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    variance = posterior_variance.clamp(min=1e-20) if variance_type == "fixed_small" else betas
    steps = scheduler.coefficients[::-1]  # timesteps descend; the tables ascend in t
    assert [c.timestep for c in steps] == list(range(1000))
    actual = torch.tensor(
        [[c.pred_original_sample_coeff, c.current_sample_coeff, c.posterior_variance, c.std_dev**2] for c in steps],
        dtype=torch.float64,
    )  # (T, 4)
    expected = torch.stack([coef1, coef2, posterior_variance, variance], dim=1)
    # β_t is recovered from ᾱ_t/ᾱ_{t-1}, which loses ~1e-13 relative against the β_t it was built from.
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_strided_coefficients_use_the_strided_beta(spacing, variance_type):
    """Between inference timesteps t > t': α_t = ᾱ_t/ᾱ_{t'}, β_t = 1 - α_t in eq. 7."""
    scheduler = DDPMScheduler(DDPMConfig(timestep_spacing=spacing, variance_type=variance_type))
    scheduler.set_timesteps(7)
    alphas_cumprod = scheduler.schedule.alphas_cumprod.tolist()
    timesteps = scheduler.timesteps.tolist()
    for t, t_prev, c in zip(timesteps, [*timesteps[1:], -1], scheduler.coefficients, strict=True):
        a_t, a_prev = alphas_cumprod[t], (alphas_cumprod[t_prev] if t_prev >= 0 else 1.0)
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev
        assert c.pred_original_sample_coeff == pytest.approx(a_prev**0.5 * beta / (1 - a_t), rel=1e-12)
        assert c.current_sample_coeff == pytest.approx(alpha**0.5 * (1 - a_prev) / (1 - a_t), rel=1e-12, abs=1e-300)
        small = max((1 - a_prev) / (1 - a_t) * beta, 1e-20)
        assert c.std_dev == pytest.approx((small if variance_type == "fixed_small" else beta) ** 0.5, rel=1e-12)
