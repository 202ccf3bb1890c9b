"""The σ-grid samplers (DPM-Solver++, Euler, Euler ancestral, Heun, UniPC) against diffusers and k-diffusion.

Every config field is pinned on both sides. Oracle exclusions, on purpose (see `diffusion.schedulers.sigmas`):
- DPM-Solver++ 3M SDE: diffusers' third-order SDE weight is wrong (see `dpmsolver.py`); that case is
  compared with a transcription of k-diffusion's `sample_dpmpp_3m_sde` instead;
- the initial noise: diffusers' Euler/Heun scale it by σ_0 for "trailing"/"linspace", we by √(σ_0² + 1);
  both loops here start from the same sample, and `test_init_noise_sigma_and_input_scaling` checks ours;
- DPM-Solver++/UniPC with "linspace"/"leading" spacing: diffusers spaces n + 1 points there; we test
  "trailing" (our default) and Karras σ, where the grids agree;
- Karras σ range: diffusers' Euler takes it from `sigma_min`/`sigma_max` (pinned to the model's range
  here); its Heun takes the spaced grid's ends, which are the model's range for "linspace" spacing.
"""

import math
import warnings
from typing import Any

import diffusers
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
    UniPCConfig,
    UniPCMultistepScheduler,
    get_scheduler,
)
from diffusion.schedulers.sigmas import training_sigmas

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
    # - VE samples have magnitude ~σ and shrink by cancellation (x + dt·d), so float32 leaves an
    #   absolute error of ~1e-6·σ for the σ a step starts from; Heun's corrector restarts from its
    #   predictor's start and a final Euler step from a small σ keeps the error it inherits, so the
    #   tolerance scales with the largest σ of the last three grid entries;
    # - with Karras σ, diffusers' σ_min = σ(0) is 8e-5 relative off (float32 1 - ᾱ_0), and the
    #   last steps, which divide by it, amplify that.
    rtol = 1e-3 if ours.config.use_karras_sigmas else 2e-4

    def atol(index: int) -> float:
        """For the sample at entry `index` of the grid."""
        start_sigma = max(ours.sigmas[max(0, index - 3) : index + 1])
        return 2e-4 * max(1.0, start_sigma / 10) if ours.ve_sample else 2e-4

    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    x_ours, x_theirs, state = start.clone(), start.clone(), None
    g_ours = torch.Generator().manual_seed(seed) if seed is not None else None
    g_theirs = torch.Generator().manual_seed(seed) if seed is not None else None
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps, strict=True):
        in_ours, in_theirs = ours.scale_model_input(x_ours, t_ours), theirs.scale_model_input(x_theirs, t_theirs)
        torch.testing.assert_close(in_ours, in_theirs, rtol=rtol, atol=atol(state.step_index if state else 0))
        out_ours = dummy_model(in_ours, t_ours)
        out_theirs = dummy_model(in_theirs, t_theirs)
        x_ours, _, state = ours.step(out_ours, t_ours, x_ours, generator=g_ours, state=state)
        kwargs = {"generator": g_theirs} if seed is not None else {}
        x_theirs = theirs.step(out_theirs, t_theirs, x_theirs, **kwargs).prev_sample
        if their_final_is_nan and state.step_index == len(ours.timesteps):
            assert x_theirs.isnan().all() and x_ours.isfinite().all()
            break
        torch.testing.assert_close(x_ours, x_theirs, rtol=rtol, atol=atol(state.step_index))
    assert state.step_index == len(ours.timesteps)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmsolver_loop_matches_diffusers(n, order, algorithm_type):
    if order == 3 and algorithm_type == "sde-dpmsolver++" and n > 3:
        pytest.skip("diffusers' third-order SDE update is wrong; see test_dpmsolver_3m_sde_matches_k_diffusion")
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


def k_diffusion_3m_sde(model, x, sigmas, generator):
    """k-diffusion's `sample_dpmpp_3m_sde` (eta = 1, s_noise = 1, Gaussian noise), transcribed: it walks
    the VE sample; `model(x, σ)` returns the denoised x̂_0."""
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
            h = s - t
            h_eta = 2 * h
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * d
            noise = torch.randn(x.shape, generator=generator)
            x = x + noise * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h))
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h if sigmas[i + 1] != 0 else None, h_1
    return x


@pytest.mark.parametrize("n", [3, 5, 20])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmsolver_3m_sde_matches_k_diffusion(n, karras):
    """Our 3M SDE (Heun-form second order, as k-diffusion; no lower-order final steps) step for step
    against k-diffusion's loop on the VE sample x/α, with one generator drawing the same noise."""
    ours = get_scheduler(
        "dpmsolver++3m-sde",
        {"prediction_type": "sample", "solver_type": "heun", "lower_order_final": False, "use_karras_sigmas": karras},
    )
    ours.set_timesteps(n)
    sigmas = ours.sigmas.tolist()

    def denoiser(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.tanh(0.5 * x_ve / math.sqrt(sigma**2 + 1))  # a smooth, non-linear x̂_0

    start = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * math.sqrt(sigmas[0] ** 2 + 1)
    expected = k_diffusion_3m_sde(denoiser, start.double(), sigmas, torch.Generator().manual_seed(4))
    x, state, generator = start / math.sqrt(sigmas[0] ** 2 + 1), None, torch.Generator().manual_seed(4)  # VP
    for i, t in enumerate(ours.timesteps):
        alpha = 1 / math.sqrt(sigmas[i] ** 2 + 1)
        x0 = denoiser(x / alpha, sigmas[i])
        x, _, state = ours.step(x0, t, x, generator=generator, state=state)
    torch.testing.assert_close(x.double(), expected, rtol=1e-4, atol=1e-4)


def k_diffusion_2m(model, x, sigmas):
    """k-diffusion's `sample_dpmpp_2m`, transcribed: it walks the VE sample; `model(x, σ)` returns x̂_0."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # σ_{i+1}/σ_i = 0 and 1 - e^{-h} = 1
        else:
            t, t_next = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised
            else:
                r = (t + math.log(sigmas[i - 1])) / h  # h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


@pytest.mark.parametrize("n", [1, 2, 5, 20])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmsolver_2m_matches_k_diffusion(n, karras):
    """Our 2M (midpoint form, no lower-order final steps, as k-diffusion) against `sample_dpmpp_2m` on the
    VE sample x/α, in float64: the same update written in D_1 = (m_0 - m_1)/r_0 instead of a blend."""
    ours = get_scheduler(
        "dpmsolver++2m", {"prediction_type": "sample", "lower_order_final": False, "use_karras_sigmas": karras}
    )
    ours.set_timesteps(n)
    sigmas = ours.sigmas.tolist()

    def denoiser(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.tanh(0.5 * x_ve / math.sqrt(sigma**2 + 1))  # a smooth, non-linear x̂_0

    start = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = k_diffusion_2m(denoiser, start * math.sqrt(sigmas[0] ** 2 + 1), sigmas)
    x, state = start, None  # the VP sample α·(x/α)
    for i, t in enumerate(ours.timesteps):
        alpha = 1 / math.sqrt(sigmas[i] ** 2 + 1)
        x, _, state = ours.step(denoiser(x / alpha, sigmas[i]), t, x, state=state)
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)
