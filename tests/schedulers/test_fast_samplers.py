"""The σ-grid samplers (DPM-Solver++, Euler, Euler ancestral, Heun, UniPC) against diffusers, and analytically.

Every config field is pinned on both sides. Oracle exclusions, on purpose (see `diffusion.schedulers.sigmas`):
- the initial noise: diffusers' Euler/Heun scale it by σ_0 for "trailing"/"linspace", we by √(σ_0² + 1);
  both loops here start from the same sample, and `test_init_noise_sigma_and_input_scaling` checks ours;
- DPM-Solver++/UniPC with "linspace"/"leading" spacing: diffusers spaces n + 1 points there; we test
  "trailing" (our default) and Karras σ, where the grids agree;
- Karras σ range: diffusers' Euler takes it from `sigma_min`/`sigma_max` (pinned to the model's range
  here); its Heun takes the spaced grid's ends, which are the model's range for "linspace" spacing.
"""

import dataclasses
import math
import warnings
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

from diffusion.schedulers import (
    DPMSolverConfig,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunConfig,
    HeunDiscreteScheduler,
    SigmaConfig,
    StepState,
    UniPCConfig,
    UniPCMultistepScheduler,
    get_scheduler,
)
from diffusion.schedulers.sigmas import karras_sigmas, sigma_to_timestep, training_sigmas

T = 1000
SCHEDULE = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", trained_betas=None)


def their_sigma_range(ours) -> tuple[float, float]:
    table = training_sigmas(ours.schedule.alphas_cumprod)
    return float(table[0]), float(table[-1])


def build(
    kind: str, prediction_type="epsilon", karras=False, rescale=False, processing="none", **knobs
) -> tuple[Any, Any]:
    """(ours, diffusers') for `kind`, every diffusers field that matters pinned."""
    thresholding = processing == "threshold"
    common = dict(
        prediction_type=prediction_type, use_karras_sigmas=karras, timestep_spacing="trailing", steps_offset=0
    )
    base = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dpmsolver++":
            ours = DPMSolverMultistepScheduler(
                DPMSolverConfig(**base, **common, rescale_betas_zero_snr=rescale, thresholding=thresholding, **knobs)
            )
            theirs = diffusers.DPMSolverMultistepScheduler(
                **SCHEDULE,
                **common,
                rescale_betas_zero_snr=rescale,
                thresholding=thresholding,
                dynamic_thresholding_ratio=0.995,
                sample_max_value=1.0,
                solver_order=knobs.get("solver_order", 2),
                algorithm_type=knobs.get("algorithm_type", "dpmsolver++"),
                solver_type=knobs.get("solver_type", "midpoint"),
                lower_order_final=knobs.get("lower_order_final", True),
                euler_at_final=False,
                use_exponential_sigmas=False,
                use_beta_sigmas=False,
                use_lu_lambdas=False,
                use_flow_sigmas=False,
                final_sigmas_type="zero",
                lambda_min_clipped=-float("inf"),
                variance_type=None,
            )
        elif kind == "unipc":
            ours = UniPCMultistepScheduler(
                UniPCConfig(**base, **common, rescale_betas_zero_snr=rescale, thresholding=thresholding, **knobs)
            )
            theirs = diffusers.UniPCMultistepScheduler(
                **SCHEDULE,
                **common,
                rescale_betas_zero_snr=rescale,
                thresholding=thresholding,
                dynamic_thresholding_ratio=0.995,
                sample_max_value=1.0,
                solver_order=knobs.get("solver_order", 2),
                solver_type=knobs.get("solver_type", "bh2"),
                predict_x0=True,
                lower_order_final=True,
                disable_corrector=[],
                solver_p=None,
                final_sigmas_type="zero",
            )
        elif kind == "euler":
            ours = EulerDiscreteScheduler(SigmaConfig(**base, **common, rescale_betas_zero_snr=rescale))
            sigma_min, sigma_max = their_sigma_range(ours)
            theirs = diffusers.EulerDiscreteScheduler(
                **SCHEDULE,
                **common,
                rescale_betas_zero_snr=rescale,
                interpolation_type="linear",
                use_exponential_sigmas=False,
                use_beta_sigmas=False,
                sigma_min=sigma_min,
                sigma_max=sigma_max,
                timestep_type="discrete",
                final_sigmas_type="zero",
            )
        elif kind == "euler-ancestral":
            assert not karras
            ours = EulerAncestralDiscreteScheduler(SigmaConfig(**base, **common, rescale_betas_zero_snr=rescale))
            del common["use_karras_sigmas"]  # diffusers' Euler ancestral has no Karras option
            theirs = diffusers.EulerAncestralDiscreteScheduler(**SCHEDULE, **common, rescale_betas_zero_snr=rescale)
        else:
            assert kind == "heun" and not rescale
            clip = processing == "clip"
            ours = HeunDiscreteScheduler(HeunConfig(**base, **common, clip_sample=clip))
            # Karras: diffusers' Heun takes the range from the spaced grid, whose ends are the model's
            # range only for "linspace" (the spacing is otherwise unused with Karras σ).
            spacing = "linspace" if karras else "trailing"
            theirs = diffusers.HeunDiscreteScheduler(
                **SCHEDULE,
                **{**common, "timestep_spacing": spacing},
                use_exponential_sigmas=False,
                use_beta_sigmas=False,
                clip_sample=clip,
                clip_sample_range=1.0,
            )
    return ours, theirs


def dummy_model(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic stand-in for a network: 0.1·x + t/1000."""
    return 0.1 * sample + float(t) / 1000


def run_both(ours, theirs, n: int, seed: int | None = None, their_final_is_nan: bool = False) -> None:
    """A full sampling loop on both sides from one start; asserts the grid, inputs and every step.

    their_final_is_nan: diffusers' UniPC with bh1 returns NaN at the step to σ = 0 (it multiplies
    B(h) = -h = -inf by a zero correction); there, check that ours is finite and theirs NaN instead.
    """
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert len(ours.timesteps) == len(theirs.timesteps)
    if ours.timesteps.is_floating_point():
        # Fractional (Karras) timesteps: diffusers interpolates log σ of float32 ᾱ; a few 1e-3 apart.
        torch.testing.assert_close(ours.timesteps, theirs.timesteps.float(), rtol=1e-5, atol=1e-2)
    else:
        torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    # diffusers' σ come from float32 ᾱ: 1 - ᾱ_0 ≈ 1e-4 loses ~4 digits to cancellation, which moves
    # σ(0) and so every Karras level by up to ~1e-4 relative.
    torch.testing.assert_close(torch.from_numpy(ours.sigmas).float(), theirs.sigmas.float(), rtol=1e-4, atol=1e-6)

    # diffusers computes σ, α and λ in float32, we in float64, and errors grow over the loop:
    # - VE samples start at magnitude σ_0 ≈ 157 and shrink by cancellation (x + dt·d), so float32
    #   leaves an absolute error of ~1e-5·σ_0;
    # - with Karras σ, diffusers' σ_min = σ(0) is 8e-5 relative off (float32 1 - ᾱ_0), and the
    #   last steps, which divide by it, amplify that.
    atol = 2e-4 * max(1.0, ours.init_noise_sigma / 10)
    rtol = 1e-3 if ours.config.use_karras_sigmas else 2e-4
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    x_ours, x_theirs, state = start.clone(), start.clone(), None
    g_ours = torch.Generator().manual_seed(seed) if seed is not None else None
    g_theirs = torch.Generator().manual_seed(seed) if seed is not None else None
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps, strict=True):
        in_ours, in_theirs = ours.scale_model_input(x_ours, t_ours), theirs.scale_model_input(x_theirs, t_theirs)
        torch.testing.assert_close(in_ours, in_theirs, rtol=rtol, atol=atol)
        out_ours = dummy_model(in_ours, t_ours)
        out_theirs = dummy_model(in_theirs, t_theirs)
        x_ours, _, state = ours.step(out_ours, t_ours, x_ours, generator=g_ours, state=state)
        kwargs = {"generator": g_theirs} if seed is not None else {}
        x_theirs = theirs.step(out_theirs, t_theirs, x_theirs, **kwargs).prev_sample
        if their_final_is_nan and state.step_index == len(ours.timesteps):
            assert x_theirs.isnan().all() and x_ours.isfinite().all()
            break
        torch.testing.assert_close(x_ours, x_theirs, rtol=rtol, atol=atol)
    assert state.step_index == len(ours.timesteps)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmsolver_loop_matches_diffusers(n, order, algorithm_type):
    ours, theirs = build("dpmsolver++", solver_order=order, algorithm_type=algorithm_type)
    run_both(ours, theirs, n, seed=3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpmsolver_settings_match_diffusers(prediction_type, karras, solver_type, lower_order_final):
    ours, theirs = build(
        "dpmsolver++",
        prediction_type=prediction_type,
        karras=karras,
        solver_order=3,
        solver_type=solver_type,
        lower_order_final=lower_order_final,
    )
    run_both(ours, theirs, 10)


@pytest.mark.parametrize("kind", ["dpmsolver++", "unipc"])
def test_thresholding_and_zero_terminal_snr_match_diffusers(kind):
    run_both(*build(kind, processing="threshold"), 10)
    run_both(*build(kind, prediction_type="v_prediction", rescale=True), 10)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_unipc_loop_matches_diffusers(n, order, solver_type):
    run_both(*build("unipc", solver_order=order, solver_type=solver_type), n, their_final_is_nan=solver_type == "bh1")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
def test_unipc_settings_match_diffusers(prediction_type, karras):
    run_both(*build("unipc", prediction_type=prediction_type, karras=karras, solver_order=3), 10)


@pytest.mark.parametrize("n", [1, 2, 10, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
def test_euler_loop_matches_diffusers(n, prediction_type, karras):
    run_both(*build("euler", prediction_type=prediction_type, karras=karras), n)


@pytest.mark.parametrize("n", [1, 2, 10, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])  # diffusers lacks "sample" here
def test_euler_ancestral_loop_matches_diffusers(n, prediction_type):
    run_both(*build("euler-ancestral", prediction_type=prediction_type), n, seed=5)


@pytest.mark.parametrize("kind", ["euler", "euler-ancestral"])
def test_zero_terminal_snr_matches_diffusers_for_euler(kind):
    run_both(*build(kind, prediction_type="v_prediction", rescale=True), 10, seed=1)


@pytest.mark.parametrize("n", [1, 2, 10, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
def test_heun_loop_matches_diffusers(n, prediction_type, karras):
    if karras and n == 1:
        pytest.skip("diffusers' Heun takes the Karras range from its 'linspace' grid, which is [0] for n = 1")
    run_both(*build("heun", prediction_type=prediction_type, karras=karras), n)


def test_heun_clipping_matches_diffusers():
    run_both(*build("heun", processing="clip"), 10)


# ----- the grid -----


def test_karras_sigmas_follow_eq_5():
    sigmas = karras_sigmas(0.01, 80.0, 5)
    ramp = np.arange(5) / 4
    expected = (80.0 ** (1 / 7) + ramp * (0.01 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas, expected, rtol=1e-14)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.01)


def test_sigma_to_timestep_inverts_the_table():
    ours = get_scheduler("euler")
    table = training_sigmas(ours.schedule.alphas_cumprod)
    np.testing.assert_allclose(sigma_to_timestep(table[[0, 10, 500, 999]], table), [0, 10, 500, 999], atol=1e-9)
    # Halfway in log σ between two entries is halfway in t.
    middle = math.exp((math.log(table[10]) + math.log(table[11])) / 2)
    assert sigma_to_timestep(np.array([middle]), table)[0] == pytest.approx(10.5, abs=1e-9)
    # Outside the range: the ends.
    assert sigma_to_timestep(np.array([1e-6, 1e6]), table).tolist() == [0.0, 999.0]


@pytest.mark.parametrize("name", ["euler", "euler-ancestral", "heun"])
def test_init_noise_sigma_and_input_scaling(name):
    """VE samplers: initial std √(σ_0² + 1); the model sees x/√(σ² + 1), which is the VP x_t."""
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(10)
    sigma_0 = scheduler.sigmas[0]
    alpha_bar = scheduler.schedule.alphas_cumprod[999].item()
    assert sigma_0 == pytest.approx(math.sqrt((1 - alpha_bar) / alpha_bar), rel=1e-12)
    assert scheduler.init_noise_sigma == pytest.approx(math.sqrt(sigma_0**2 + 1), rel=1e-12)
    x = torch.full((1, 1, 2, 2), 3.0)
    t = scheduler.timesteps[1]
    expected = 3.0 / math.sqrt(scheduler.sigmas[1] ** 2 + 1)
    torch.testing.assert_close(scheduler.scale_model_input(x, t), torch.full_like(x, expected))


@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_vp_samplers_need_no_scaling(name):
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(10)
    x = torch.randn(1, 1, 2, 2)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.scale_model_input(x, scheduler.timesteps[3]) is x


@pytest.mark.parametrize(
    "name, n, nfe", [("dpmsolver++", 10, 10), ("unipc", 5, 5), ("euler", 20, 20), ("heun", 10, 19), ("heun", 1, 1)]
)
def test_nfe_is_the_number_of_timesteps(name, n, nfe):
    scheduler = get_scheduler(name)
    scheduler.set_timesteps(n)
    assert len(scheduler.timesteps) == nfe and len(scheduler.sigmas) == nfe + 1 and scheduler.sigmas[-1] == 0


# ----- analytic: a model that returns the true noise of a fixed x_0 -----


def true_output(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha: float, sigma: float):
    """What a perfect model outputs at VP level (α, σ) for the VP sample α·x0 + σ·noise."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha * noise - sigma * x0
    return x0


@pytest.mark.parametrize("name", ["dpmsolver++2m", "dpmsolver++3m", "euler", "heun", "unipc"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_deterministic_samplers_land_on_x0(name, prediction_type, karras, n):
    """If the model knows x_0 (so ε̂ = ε for the current sample), every deterministic sampler ends at x_0."""
    scheduler = get_scheduler(name, {"prediction_type": prediction_type, "use_karras_sigmas": karras})
    scheduler.set_timesteps(n)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, generator=generator) * 2 - 1
    sample = torch.randn(2, 1, 4, 4, generator=generator) * scheduler.init_noise_sigma
    state = None
    for t in scheduler.timesteps:
        sigma = scheduler.sigma_of(t)
        alpha, sigma_vp = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
        x_t = scheduler.scale_model_input(sample, t)  # the VP sample
        noise = (x_t - alpha * x0) / sigma_vp  # the noise that makes x_t from x0
        output = true_output(prediction_type, x0, noise, alpha, sigma_vp)
        sample, pred_x0, state = scheduler.step(output, t, sample, state=state)
        torch.testing.assert_close(pred_x0, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sample, x0, rtol=1e-4, atol=1e-4)


# ----- state, purity, errors -----


def test_step_is_pure_and_the_state_is_explicit():
    scheduler = get_scheduler("dpmsolver++3m")
    scheduler.set_timesteps(5)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    first = scheduler.step(0.1 * x, scheduler.timesteps[0], x)
    again = scheduler.step(0.1 * x, scheduler.timesteps[0], x)
    torch.testing.assert_close(first.prev_sample, again.prev_sample, rtol=0, atol=0)
    assert isinstance(first.state, StepState) and first.state.step_index == 1 and len(first.state.history) == 1
    second = scheduler.step(0.1 * first.prev_sample, scheduler.timesteps[1], first.prev_sample, state=first.state)
    assert second.state.step_index == 2 and len(second.state.history) == 2
    assert len(first.state.history) == 1  # not mutated


def test_wrong_state_or_timestep_is_a_clear_error():
    scheduler = get_scheduler("unipc")
    scheduler.set_timesteps(5)
    x = torch.zeros(1, 1, 2, 2)
    out = scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match=r"state expects timestep 799 at step 1, got 999"):
        scheduler.step(x, scheduler.timesteps[0], x, state=out.state)
    with pytest.raises(ValueError, match="timestep 5 is not one of the timesteps"):
        scheduler.step(x, 5, x)
    with pytest.raises(ValueError, match=r"state must be the previous step's SchedulerOutput\.state"):
        scheduler.step(x, scheduler.timesteps[1], x, state={"step_index": 1})
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        get_scheduler("euler").step(x, 999.0, x)


@pytest.mark.parametrize(
    "config_class, kwargs, message",
    [
        (DPMSolverConfig, {"solver_order": 4}, "solver_order must be 1, 2 or 3, got 4"),
        (DPMSolverConfig, {"algorithm_type": "dpmsolver"}, "unknown algorithm type 'dpmsolver'"),
        (DPMSolverConfig, {"solver_type": "bh2"}, "unknown solver type 'bh2'"),
        (UniPCConfig, {"solver_type": "midpoint"}, "unknown solver type 'midpoint'"),
        (UniPCConfig, {"solver_order": 0}, "solver_order must be 1, 2 or 3, got 0"),
        (HeunConfig, {"s_churn": -1.0}, "s_churn must be >= 0"),
        (HeunConfig, {"s_tmin": 2.0, "s_tmax": 1.0}, "expected 0 <= s_tmin <= s_tmax"),
        (HeunConfig, {"s_noise": -0.5}, "s_noise must be >= 0"),
    ],
)
def test_bad_settings_raise(config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(**kwargs)


# ----- Heun's churn (Karras et al. 2022, Algorithm 2) -----


def test_churn_raises_the_noise_level_before_each_step():
    config = HeunConfig(s_churn=4.0, s_tmin=0.05, s_tmax=50.0)
    scheduler = HeunDiscreteScheduler(config)
    scheduler.set_timesteps(8)
    plain = HeunDiscreteScheduler(HeunConfig())
    plain.set_timesteps(8)
    levels = plain.sigmas[0::2]  # σ_0 .. σ_{n-1}: the predictor entries without churn, (n,)
    gamma = min(4.0 / 8, math.sqrt(2) - 1)
    expected_hat = np.where((levels >= 0.05) & (levels <= 50.0), levels * (1 + gamma), levels)
    np.testing.assert_allclose(scheduler.sigmas[0::2][:8], expected_hat, rtol=1e-12)  # σ̂_i
    np.testing.assert_allclose(scheduler.sigmas[1::2][:7], levels[1:], rtol=1e-12)  # σ_{i+1}: the correctors
    assert len(scheduler.timesteps) == 15 and scheduler.timesteps.is_floating_point()


def test_churn_adds_noise_of_the_right_size():
    """After a corrector, noise of std S_noise·√(σ̂² - σ²) takes σ_{i+1} to σ̂_{i+1}: with a model that
    predicts x̂_0 = 0, the corrector's output is deterministic, so the difference is exactly that noise."""
    config = HeunConfig(prediction_type="sample", s_churn=2.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.5)
    scheduler = HeunDiscreteScheduler(config)
    scheduler.set_timesteps(4)
    plain = HeunDiscreteScheduler(dataclasses.replace(config, s_noise=0.0))
    plain.set_timesteps(4)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros_like(x)
    predicted = scheduler.step(zero, scheduler.timesteps[0], x)
    outputs = []
    for sched in (scheduler, plain):
        outputs.append(
            sched.step(
                zero,
                sched.timesteps[1],
                predicted.prev_sample,
                generator=torch.Generator().manual_seed(7),
                state=predicted.state,
            ).prev_sample
        )
    sigma, sigma_hat = scheduler.sigmas[1], scheduler.sigmas[2]
    noise = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(
        outputs[0] - outputs[1], 1.5 * math.sqrt(sigma_hat**2 - sigma**2) * noise, rtol=1e-4, atol=1e-4
    )
