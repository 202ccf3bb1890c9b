"""DDIMScheduler against diffusers' DDIMScheduler, and against Song et al. 2021 analytically.

Oracle exclusions. diffusers' DDIM does not look the previous timestep up: it computes it as
t - T//n. That equals the true previous inference timestep for "leading" spacing (whose stride is
T//n) and for "trailing" when n divides T, so those are the cases compared. For "linspace" (and
"trailing" with n not dividing T) diffusers steps to the wrong timestep (diffusers issue 12633); our
lookup is checked there by the analytic tests instead.
"""

import math
import warnings

import diffusers
import pytest
import torch

from diffusion.schedulers import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    DDIMConfig,
    DDIMScheduler,
)

PROCESSING = ["none", "clip", "threshold"]
ETAS = [0.0, 0.5, 1.0]
ORACLE_SPACINGS = ["leading", "trailing"]  # see the module docstring
N = 10  # inference steps of the oracle comparisons; divides T = 1000


def assert_diffusers_prev_is_ours(pair):
    """Guard for the exclusion above: diffusers' t - T//n is our looked-up previous timestep."""
    stride = pair.theirs.config.num_train_timesteps // pair.theirs.num_inference_steps
    for t in pair.ours.timesteps.tolist():
        prev = pair.ours.previous_timestep(t)
        assert t - stride == prev or (t - stride < 0 and prev == -1), (t, prev)


def step_both(pair, sample, model_output, t, seed):
    """One step on each side, with generators seeded identically."""
    ours = pair.ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))
    theirs = pair.their_step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))
    return ours, theirs


def direction_atol(pair, model_output, sample, t) -> float:
    """Bound on diffusers' float32 error in the eq. 12 direction term √(1-ᾱ_{t'}-σ_t²)·ε̂ when η > 0.

    diffusers forms 1 - ᾱ_{t'} - σ_t² in float32; when σ_t² ≈ 1 - ᾱ_{t'} (η = 1 and ᾱ_t ≈ 0, e.g. the
    first step of the cosine schedule) the difference is a few ulps of 1, and its square root is off by
    up to √(2·2⁻²³) ≈ 5e-4 (diffusers gets 3.5e-4 where float64 gives 3.1e-4). That times |ε̂| bounds it.
    """
    if not pair.eta:
        return 0.0
    pred_epsilon = pair.ours.schedule.pred_epsilon(model_output, sample, t)
    return 5e-4 * pred_epsilon.abs().max().item()


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("processing", PROCESSING)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ORACLE_SPACINGS)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_step_matches_diffusers(make_pair, inputs, beta_schedule, spacing, prediction_type, processing, eta):
    pair = make_pair(
        "ddim",
        beta_schedule=beta_schedule,
        timestep_spacing=spacing,
        prediction_type=prediction_type,
        processing=processing,
        eta=eta,
    )
    pair.set_timesteps(N)
    assert_diffusers_prev_is_ours(pair)
    sample, model_output = inputs
    timesteps = pair.ours.timesteps.tolist()
    for t in (timesteps[0], timesteps[N // 2], timesteps[-1]):  # first, middle, final (t' = -1)
        ours, theirs = step_both(pair, sample, model_output, t, seed=t)
        pair.assert_matches(ours.pred_original_sample, theirs[1])
        pair.assert_matches(ours.prev_sample, theirs[0], direction_atol(pair, model_output, sample, t))


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_rescale_and_final_alpha_match_diffusers(
    make_pair, inputs, beta_schedule, prediction_type, rescale, set_alpha_to_one
):
    # With the rescale, trailing starts at t = T-1 where ᾱ = 0: epsilon prediction divides by 0 there on
    # both sides (x̂_0 = ±inf); assert_matches compares that with equal_nan.
    pair = make_pair(
        "ddim",
        beta_schedule=beta_schedule,
        rescale_betas_zero_snr=rescale,
        prediction_type=prediction_type,
        set_alpha_to_one=set_alpha_to_one,
        eta=1.0,
    )
    pair.set_timesteps(N)
    assert_diffusers_prev_is_ours(pair)
    sample, model_output = inputs
    for t in pair.ours.timesteps.tolist():
        ours, theirs = step_both(pair, sample, model_output, t, seed=t)
        pair.assert_matches(ours.pred_original_sample, theirs[1])
        pair.assert_matches(ours.prev_sample, theirs[0], direction_atol(pair, model_output, sample, t))


@pytest.mark.parametrize("per_item_generators", [False, True])
@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", ORACLE_SPACINGS)
def test_sampling_loop_matches_diffusers(make_pair, model, spacing, prediction_type, eta, per_item_generators):
    pair = make_pair(
        "ddim",
        beta_schedule="cosine",
        timestep_spacing=spacing,
        prediction_type=prediction_type,
        processing="threshold",
        eta=eta,
        steps_offset=1,
    )
    pair.set_timesteps(N)
    assert_diffusers_prev_is_ours(pair)

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


def true_output(schedule, prediction_type, x0, noise, t):
    """What a perfect model outputs at t for x_t = add_noise(x0, noise, t)."""
    alpha_prod = schedule.alphas_cumprod[t].item()
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha_prod**0.5 * noise - (1 - alpha_prod) ** 0.5 * x0  # Salimans & Ho 2022, sec. 4
    return x0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 7, 10, 50])
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_true_noise_lands_on_x0(prediction_type, beta_schedule, spacing, n, dtype):
    """Song et al. 2021, eq. 12 at η = 0: with the true ε, every step stays on x_t's trajectory and the
    last one (ᾱ_{t'} = 1) returns x_0."""
    config = DDIMConfig(prediction_type=prediction_type, timestep_spacing=spacing, beta_schedule=beta_schedule)
    scheduler = DDIMScheduler(config)
    scheduler.set_timesteps(n)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=generator, dtype=dtype)
    noise = torch.randn(2, 3, 8, 8, generator=generator, dtype=dtype)
    first = scheduler.timesteps[0].item()
    # "Exactly" up to rounding of x_t, which x̂_0 = (x_t - √(1-ᾱ_t)·ε)/√ᾱ_t amplifies by 1/√ᾱ_t (up to
    # 2e4 for the cosine schedule at t = T-1); 8 eps covers the few roundings per step.
    amplification = scheduler.schedule.alphas_cumprod[first].item() ** -0.5
    tol = {"rtol": 0.0, "atol": 8 * torch.finfo(dtype).eps * amplification}
    sample = scheduler.add_noise(x0, noise, first)
    for t in scheduler.timesteps.tolist():
        model_output = true_output(scheduler.schedule, prediction_type, x0, noise, t)
        sample = scheduler.step(model_output, t, sample).prev_sample
        prev = scheduler.previous_timestep(t)
        if prev >= 0:  # on the trajectory: x_{t'} = √ᾱ_{t'}·x_0 + √(1-ᾱ_{t'})·ε
            torch.testing.assert_close(sample, scheduler.add_noise(x0, noise, prev), **tol)
    assert sample.dtype == dtype
    torch.testing.assert_close(sample, x0, **tol)


def test_eta_zero_draws_no_noise(inputs):
    scheduler = DDIMScheduler(DDIMConfig(eta=0.0))
    scheduler.set_timesteps(N)
    sample, model_output = inputs
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    scheduler.step(model_output, 999, sample, generator=generator)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_variance_is_eq_16(eta):
    scheduler = DDIMScheduler(DDIMConfig(eta=eta))
    scheduler.set_timesteps(N)
    alphas_cumprod = scheduler.schedule.alphas_cumprod
    for t in scheduler.timesteps.tolist():
        prev = scheduler.previous_timestep(t)
        a_t, a_prev = alphas_cumprod[t].item(), (alphas_cumprod[prev].item() if prev >= 0 else 1.0)
        expected = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        assert scheduler.variance(t) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_eta_above_one_is_refused_before_sampling():
    """η > 1 can make σ_t² exceed 1 - ᾱ_t' (eq. 12); η = 1 is DDPM's noise and steps everywhere."""
    with pytest.raises(
        ValueError, match=r"^eta must be at most 1 \(DDPM's noise; more has no meaning in eq. 12\), got 5.0$"
    ):
        DDIMConfig(eta=5.0)
    scheduler = DDIMScheduler(DDIMConfig(eta=1.0))
    scheduler.set_timesteps(N)
    for c in scheduler.coefficients:
        assert 1 - c.alpha_prod_t_prev - scheduler.variance(c.timestep) >= -1e-12  # σ_t² <= 1 - ᾱ_t' at η = 1


def test_negative_eta_raises():
    with pytest.raises(ValueError, match=r"eta must be >= 0, got -0.5"):
        DDIMConfig(eta=-0.5)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ORACLE_SPACINGS)
def test_from_diffusers_config_dict_matches(inputs, spacing, set_alpha_to_one):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing=spacing,
            steps_offset=1,
            set_alpha_to_one=set_alpha_to_one,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
        )  # diffusers' defaults elsewhere, e.g. clip_sample=True
    ours = DDIMScheduler.from_dict(dict(theirs.config))
    assert ours.config.clip_sample is True and ours.config.eta == 0.0
    ours.set_timesteps(N)
    theirs.set_timesteps(N)
    sample, model_output = inputs
    for t in ours.timesteps.tolist():
        actual = ours.step(model_output, t, sample)
        expected = theirs.step(model_output, t, sample)
        # diffusers' float32 ᾱ_t vs our float64, see conftest.Pair.assert_matches.
        torch.testing.assert_close(actual.prev_sample, expected.prev_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(actual.pred_original_sample, expected.pred_original_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1, 10])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_true_output_lands_on_x0_with_zero_terminal_snr(prediction_type, n):
    # At t = T-1, ᾱ = 0: x_t is pure noise, yet v and x_0 predictions still determine x_0 (epsilon does
    # not, which is why Lin et al. 2023 pair the rescale with v_prediction).
    config = DDIMConfig(prediction_type=prediction_type, rescale_betas_zero_snr=True)
    scheduler = DDIMScheduler(config)
    scheduler.set_timesteps(n)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=generator)
    noise = torch.randn(2, 3, 8, 8, generator=generator)
    sample = scheduler.add_noise(x0, noise, scheduler.timesteps[0].item())
    torch.testing.assert_close(sample, noise, rtol=0, atol=0)
    for t in scheduler.timesteps.tolist():
        model_output = true_output(scheduler.schedule, prediction_type, x0, noise, t)
        sample = scheduler.step(model_output, t, sample).prev_sample
    torch.testing.assert_close(sample, x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_coefficients_are_eq_12_and_16(spacing, eta, set_alpha_to_one):
    """Each step's precomputed weights from ᾱ_t, ᾱ_{t'} (t' the next entry of `timesteps`) and η."""
    scheduler = DDIMScheduler(DDIMConfig(timestep_spacing=spacing, eta=eta, set_alpha_to_one=set_alpha_to_one))
    scheduler.set_timesteps(7)
    alphas_cumprod = scheduler.schedule.alphas_cumprod.tolist()
    timesteps = scheduler.timesteps.tolist()
    final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    assert len(scheduler.coefficients) == 7
    for t, t_prev, c in zip(timesteps, [*timesteps[1:], -1], scheduler.coefficients, strict=True):
        a_t, a_prev = alphas_cumprod[t], (alphas_cumprod[t_prev] if t_prev >= 0 else final)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))  # eq. 16
        assert (c.timestep, c.prev_timestep, c.alpha_prod_t, c.alpha_prod_t_prev) == (t, t_prev, a_t, a_prev)
        assert c.variance == pytest.approx(sigma**2, rel=1e-12, abs=1e-300)
        assert c.std_dev == pytest.approx(sigma, rel=1e-12, abs=1e-300)
        assert c.sqrt_alpha_prod_prev == pytest.approx(math.sqrt(a_prev), rel=1e-15)
        assert c.direction == pytest.approx(math.sqrt(max(1 - a_prev - sigma**2, 0)), rel=1e-12, abs=1e-7)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_step_is_eq_12_written_out(inputs, prediction_type):
    """One float64 step at η = 0.5 against eq. 12 with x̂_0 and ε̂ from ᾱ_t (no clipping)."""
    scheduler = DDIMScheduler(DDIMConfig(eta=0.5, prediction_type=prediction_type, timestep_spacing="linspace"))
    scheduler.set_timesteps(7)
    sample, model_output = (x.double() for x in inputs)
    t, t_prev = scheduler.timesteps[2].item(), scheduler.timesteps[3].item()  # linspace: t - t' is not T//n
    a_t, a_prev = (scheduler.schedule.alphas_cumprod[k].item() for k in (t, t_prev))
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    elif prediction_type == "v_prediction":  # Salimans & Ho 2022, sec. 4
        x0 = math.sqrt(a_t) * sample - math.sqrt(1 - a_t) * model_output
        eps = math.sqrt(a_t) * model_output + math.sqrt(1 - a_t) * sample
    else:
        x0 = model_output
        eps = (sample - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    variance = 0.25 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - variance) * eps + math.sqrt(variance) * noise
    out = scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.prev_sample, expected, rtol=1e-12, atol=1e-12)
