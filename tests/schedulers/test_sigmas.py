"""The σ-grid samplers on their own: the grid, analytic trajectories, the step state, Heun's churn."""

import math

import numpy as np
import pytest
import torch

from diffusion.schedulers import (
    DPMSolverConfig,
    HeunConfig,
    HeunDiscreteScheduler,
    SigmaConfig,
    StepState,
    UniPCConfig,
    get_scheduler,
)
from diffusion.schedulers.sigmas import karras_sigmas, sigma_to_timestep, training_sigmas

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
def test_deterministic_samplers_follow_the_exact_trajectory(name, prediction_type, karras, n):
    """A model that knows x_0 makes x̂_0 constant; the probability-flow ODE is then solved exactly by
    every sampler here (exponential integrators and Euler alike), so every sample is α·x_0 + σ_vp·ε_T
    (VE: x_0 + σ·ε_T) for the starting noise ε_T, and the last one is x_0. In float64, so that the
    check is tight: in float32, Heun's corrector at σ = 0.01 magnifies rounding by |dt|/σ ≈ 600."""
    scheduler = get_scheduler(name, {"prediction_type": prediction_type, "use_karras_sigmas": karras})
    scheduler.set_timesteps(n)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)

    def on_trajectory(sigma: float) -> torch.Tensor:
        alpha = 1 / math.sqrt(sigma**2 + 1)
        vp = alpha * x0 + sigma * alpha * eps
        return vp / alpha if scheduler.ve_sample else vp

    sample, state = on_trajectory(scheduler.sigmas[0]), None
    for k, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[k]
        alpha, sigma_vp = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
        x_t = scheduler.scale_model_input(sample, t)  # the VP sample
        noise = (x_t - alpha * x0) / sigma_vp  # the noise that makes x_t from x0
        output = true_output(prediction_type, x0, noise, alpha, sigma_vp)
        sample, pred_x0, state = scheduler.step(output, t, sample, state=state)
        torch.testing.assert_close(pred_x0, x0, rtol=1e-4, atol=1e-4)
        # Heun's predictor lands on the trajectory too (constant slope), so every entry is checked.
        expected = on_trajectory(scheduler.sigmas[k + 1])
        # float32: a step from σ leaves ~1e-6·σ of rounding, which Heun's corrector and a last step inherit.
        atol = 1e-4 * max(1.0, max(scheduler.sigmas[max(0, k - 2) : k + 2]) / 10)
        torch.testing.assert_close(sample, expected, rtol=1e-4, atol=atol)
    torch.testing.assert_close(sample, x0, rtol=1e-4, atol=1e-4)


def exact_linear_step(x_s, p0, p1, lambda_s, lambda_t, sde: bool):
    """The exact one-step solution of the data-prediction ODE (c = 1) or SDE (c = 2, noise excluded) for
    x̂_0(λ) = p0 + p1·(λ - λ_s): x_t = (σ_t/σ_s)·e^{-(c-1)h}·x_s + α_t·∫ c·e^{-c(λ_t-λ)}·x̂_0(λ) dλ."""
    c, h = (2.0 if sde else 1.0), lambda_t - lambda_s
    alpha_t, sigma_t = (
        1 / math.sqrt(math.exp(-2 * lambda_t) + 1),
        math.exp(-lambda_t) / math.sqrt(math.exp(-2 * lambda_t) + 1),
    )
    sigma_s = math.exp(-lambda_s) / math.sqrt(math.exp(-2 * lambda_s) + 1)
    integral_0 = 1 - math.exp(-c * h)  # ∫_0^h c·e^{-c(h-τ)} dτ
    integral_1 = h - (1 - math.exp(-c * h)) / c  # ∫_0^h c·e^{-c(h-τ)}·τ dτ
    return sigma_t / sigma_s * math.exp(-(c - 1) * h) * x_s + alpha_t * (integral_0 * p0 + integral_1 * p1)


@pytest.mark.parametrize("name", ["dpmsolver++2m", "dpmsolver++2m-sde", "dpmsolver++3m", "dpmsolver++3m-sde"])
def test_multistep_steps_are_exact_for_an_x0_linear_in_lambda(name):
    """With x̂_0(λ) = p0 + p1·λ, every DPM-Solver++ step of order >= 2 (Heun form) equals the closed-form
    solution of the ODE (SDE: plus the step's own noise), so these multistep updates have the order
    they claim. The midpoint form is exact only to leading order in h and is not checked here."""
    scheduler = get_scheduler(name, {"prediction_type": "sample", "solver_type": "heun", "lower_order_final": False})
    scheduler.set_timesteps(12)
    sde = "sde" in name
    p0, p1 = 0.3, -0.2
    x, state = torch.full((1, 1, 2, 2), 0.7, dtype=torch.float64), None
    for k, t in enumerate(scheduler.timesteps[:-1]):  # the last step (to σ = 0) is first order by design
        lam_s, lam_t = -math.log(scheduler.sigmas[k]), -math.log(scheduler.sigmas[k + 1])
        x0 = torch.full((1, 1, 2, 2), p0 + p1 * lam_s, dtype=torch.float64)
        new, _, state = scheduler.step(x0, t, x, generator=torch.Generator().manual_seed(k), state=state)
        exact = exact_linear_step(x, p0 + p1 * lam_s, p1, lam_s, lam_t, sde)
        if sde:
            noise = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(k)).double()
            sigma_t = math.exp(-lam_t) / math.sqrt(math.exp(-2 * lam_t) + 1)
            exact = exact + sigma_t * math.sqrt(-math.expm1(-2 * (lam_t - lam_s))) * noise
        if k >= 1:  # step 0 is first order (no history yet)
            torch.testing.assert_close(new, exact, rtol=1e-7, atol=1e-9)
        else:
            assert not torch.allclose(new, exact, rtol=1e-7, atol=1e-9)  # first order misses the slope
        x = new


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
    with pytest.raises(
        ValueError, match=r"^timestep 5 is not one of the 5 timesteps set by set_timesteps \(999 \.\.\. 199\)$"
    ):
        scheduler.step(x, 5, x)
    with pytest.raises(ValueError, match=r"state must be the previous step's SchedulerOutput\.state"):
        scheduler.step(x, scheduler.timesteps[1], x, state={"step_index": 1})
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        get_scheduler("euler").step(x, 999.0, x)
    other = get_scheduler("dpmsolver++")
    other.set_timesteps(5)
    with pytest.raises(ValueError, match="state comes from another scheduler or an earlier set_timesteps call"):
        scheduler.step(x, scheduler.timesteps[1], x, state=other.step(x, other.timesteps[0], x).state)
    scheduler.set_timesteps(5)  # the same grid again, but a new loop: the old state is refused
    with pytest.raises(ValueError, match="state comes from another scheduler or an earlier set_timesteps call"):
        scheduler.step(x, scheduler.timesteps[1], x, state=out.state)
    with pytest.raises(NotImplementedError, match=r"use sigmas\[i \+ 1\], not previous_timestep"):
        scheduler.previous_timestep(999)
    heun = get_scheduler("heun")
    heun.set_timesteps(3)
    with pytest.raises(ValueError, match="step 1 is a Heun corrector: pass the state its predictor step returned"):
        heun.step(x, heun.timesteps[1], x)


@pytest.mark.parametrize("name", ["dpmsolver++", "euler", "heun"])
def test_add_noise_gives_the_sample_each_sampler_walks(name):
    scheduler = get_scheduler(name)
    x0, noise = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -1.0)
    alpha_bar = scheduler.schedule.alphas_cumprod[[10, 600]].float().view(2, 1, 1, 1)
    noisy = scheduler.add_noise(x0, noise, torch.tensor([10, 600]))
    vp = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(noisy, vp / alpha_bar.sqrt() if scheduler.ve_sample else vp)


def test_settings_round_trip_through_json(tmp_path):
    config = HeunConfig(s_churn=2.0, s_tmax=None, use_karras_sigmas=True)
    config.save(tmp_path / "c.json")
    assert "Infinity" not in (tmp_path / "c.json").read_text()
    assert HeunConfig.load(tmp_path / "c.json") == config


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
        (HeunConfig, {"s_churn": "1"}, "s_churn must be a number, got '1'"),
        (DPMSolverConfig, {"solver_order": 2.0}, "solver_order must be 1, 2 or 3, got 2.0"),
        (SigmaConfig, {"use_karras_sigmas": "no"}, "use_karras_sigmas must be true or false, got 'no'"),
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


def karras_algorithm_2(denoiser, start, levels, config, sigma_max, generator):
    """Karras et al. 2022, Algorithm 2, transcribed (t_i = σ_i, levels σ_0..σ_{n-1}, σ_n = 0), with two
    conventions of ours: σ̂ is capped at the model's largest σ, and the first step's churn is part of
    the initial noise (whose std, √(σ_0² + S_noise²(σ̂_0² - σ_0²) + 1), `start` is scaled by)."""
    t = [*levels, 0.0]
    n = len(levels)
    s_tmax = math.inf if config.s_tmax is None else config.s_tmax
    x = None
    for i in range(n):
        gamma = min(config.s_churn / n, math.sqrt(2) - 1) if config.s_tmin <= t[i] <= s_tmax else 0.0
        t_hat = min(t[i] * (1 + gamma), max(sigma_max, t[i]))
        if i == 0:
            x = start * math.sqrt(t[0] ** 2 + config.s_noise**2 * (t_hat**2 - t[0] ** 2) + 1)
        elif t_hat > t[i]:
            eps = torch.randn(start.shape, generator=generator) * config.s_noise
            x = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        d = (x - denoiser(x, t_hat)) / t_hat
        x_next = x + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t_hat) * (d + d_prime) / 2
        x = x_next
    return x


@pytest.mark.parametrize(
    "settings, n",
    [
        ({"s_churn": 4.0}, 8),
        ({"s_churn": 40.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}, 10),  # a window: some levels churn-free
        ({"s_churn": 1.0, "use_karras_sigmas": True}, 6),
        ({"s_churn": 3.0, "timestep_spacing": "leading", "s_noise": 1.5}, 5),  # σ̂_0 > σ_0: folded into the start
        ({"s_churn": 2.0}, 2),
        ({"s_churn": 2.0}, 1),
    ],
)
def test_heun_with_churn_is_karras_algorithm_2(settings, n):
    config = HeunConfig(prediction_type="sample", **settings)
    scheduler = HeunDiscreteScheduler(config)
    scheduler.set_timesteps(n)

    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:  # VE sample -> x̂_0, smooth and non-linear
        return 0.8 * torch.tanh(x / math.sqrt(sigma**2 + 1))

    start = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x, state, generator = start * scheduler.init_noise_sigma, None, torch.Generator().manual_seed(7)
    for k, t in enumerate(scheduler.timesteps):
        x0 = denoiser(scheduler.scale_model_input(x, t) * math.sqrt(scheduler.sigmas[k] ** 2 + 1), scheduler.sigmas[k])
        x, _, state = scheduler.step(x0, t, x, generator=generator, state=state)
    levels, _ = scheduler.sigma_grid(n)
    sigma_max = training_sigmas(scheduler.schedule.alphas_cumprod)[-1]
    expected = karras_algorithm_2(denoiser, start, levels, config, sigma_max, torch.Generator().manual_seed(7))
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


def test_churn_is_capped_at_the_largest_sigma():
    scheduler = HeunDiscreteScheduler(HeunConfig(s_churn=10.0))
    scheduler.set_timesteps(4)
    sigma_max = training_sigmas(scheduler.schedule.alphas_cumprod)[-1]
    assert scheduler.sigmas[0] == pytest.approx(sigma_max) and scheduler.timesteps[0] == 999  # σ_0 is already σ_max
    assert scheduler.sigmas[2] == pytest.approx(scheduler.sigmas[1] * (1 + (math.sqrt(2) - 1)))  # γ capped at √2 - 1


# ----- the coefficients set_timesteps precomputes -----


def vp_level(sigma: float) -> tuple[float, float, float]:
    """(α, σ_vp, λ) at VE noise level σ."""
    return 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1), (-math.log(sigma) if sigma else math.inf)


@pytest.mark.parametrize("name", ["dpmsolver++2m", "dpmsolver++2m-sde", "dpmsolver++3m", "dpmsolver++3m-sde"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize(("n", "lower_order_final"), [(6, True), (6, False), (20, True)])
def test_dpmsolver_coefficients_are_algorithm_2(name, solver_type, n, lower_order_final):
    """x_t = x_weight·x_s + α_t·(φ_1·D_0 + φ_2·D_1 + φ_3·D_2) with c = 1 (ODE) or 2 (SDE): x_weight =
    (σ_t/σ_s)·e^{-(c-1)h}, φ_1 = 1 - e^{-ch}, φ_2 = 1 - φ_1/(ch) (φ_1/2 in 2M's midpoint form), and φ_3 =
    1/2 - φ_2/(ch) (`third_order_weight`); the SDE's noise has std σ_t·√(1 - e^{-2h})."""
    settings = {"solver_type": solver_type, "lower_order_final": lower_order_final, "use_karras_sigmas": True}
    scheduler = get_scheduler(name, settings)
    scheduler.set_timesteps(n)
    sde, solver_order = "sde" in name, 3 if "3m" in name else 2
    c_h = 2 if sde else 1
    levels = [vp_level(s) for s in scheduler.sigmas.tolist()]
    assert len(scheduler.coefficients) == n
    for i, c in enumerate(scheduler.coefficients):
        (alpha_s, sigma_s, lambda_s), (alpha_t, sigma_t, lambda_t) = levels[i], levels[i + 1]
        h = lambda_t - lambda_s
        phi_1 = 1 - math.exp(-c_h * h)
        phi_2 = 1 - phi_1 / (c_h * h)
        lowered = 1 if i == n - 1 else 2 if i == n - 2 and lower_order_final and n < 15 else 3
        assert c.order == min(solver_order, lowered)
        assert (c.alpha_s0, c.sigma_s0) == pytest.approx((alpha_s, sigma_s), rel=1e-15)
        assert c.x_weight == pytest.approx(sigma_t / sigma_s * (math.exp(-h) if sde else 1), rel=1e-12, abs=0)
        assert c.noise_std == pytest.approx(sigma_t * math.sqrt(1 - math.exp(-2 * h)) if sde else 0, rel=1e-12)
        expected = [(alpha_t * phi_1,)]
        if c.order >= 2 and i >= 1:
            assert c.r0 == pytest.approx((lambda_s - levels[i - 1][2]) / h, rel=1e-12)
            expected.append((alpha_t * phi_1, alpha_t * (phi_1 / 2 if solver_type == "midpoint" else phi_2)))
        if c.order == 3 and i >= 2:
            assert c.r1 == pytest.approx((levels[i - 1][2] - levels[i - 2][2]) / h, rel=1e-12)
            expected.append((alpha_t * phi_1, alpha_t * phi_2, alpha_t * (0.5 - phi_2 / (c_h * h))))
        assert len(c.weights) == len(expected)
        for actual, weights in zip(c.weights, expected, strict=True):
            assert actual == pytest.approx(weights, rel=1e-9)


@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("solver_order", [2, 3])
def test_unipc_coefficients_are_eq_8(solver_type, solver_order):
    """x_t = (σ_t/σ_s)·x_s - α_t·(e^{-h}-1)·m_0 - α_t·B(h)·Σ ρ_k·D_k with B = -h (bh1) or e^{-h}-1 (bh2);
    UniP of order 2 and UniC of order 1 take ρ = 1/2, UniC of order 2 solves R ρ = b with R = [[1, 1],
    [r_1, 1]] and b_k = k!·x·φ_{k+1}(x)/B for x = -h (φ_2(x) = (e^x-1-x)/x², φ_3(x) = (e^x-1-x-x²/2)/x³)."""
    scheduler = get_scheduler("unipc", {"solver_type": solver_type, "solver_order": solver_order})
    scheduler.set_timesteps(6)
    levels = [vp_level(s) for s in scheduler.sigmas.tolist()]
    for i, c in enumerate(scheduler.coefficients):
        (alpha_s, sigma_s, lambda_s), (alpha_t, sigma_t, lambda_t) = levels[i], levels[i + 1]
        h, x = lambda_t - lambda_s, lambda_s - lambda_t
        b_h = x if solver_type == "bh1" else math.exp(x) - 1
        orders = min(solver_order, i + 1, 6 - i)  # the points so far and the steps left
        assert (c.alpha_s0, c.sigma_s0) == pytest.approx((alpha_s, sigma_s), rel=1e-15)
        assert (c.x_weight, c.m0_weight) == pytest.approx((sigma_t / sigma_s, alpha_t * (math.exp(-h) - 1)), rel=1e-12)
        assert c.correction_weight == pytest.approx(alpha_t * b_h, rel=1e-12)
        assert c.rks == pytest.approx([(levels[i - k][2] - lambda_s) / h for k in range(1, orders)], rel=1e-12)
        assert len(c.predictor_rhos) == len(c.corrector_rhos) == orders
        assert c.predictor_rhos[0] == () and c.corrector_rhos[0] == (0.5,)
        if orders >= 2:
            assert c.predictor_rhos[1] == (0.5,)
            phi_2, phi_3 = (math.exp(x) - 1 - x) / x**2, (math.exp(x) - 1 - x - x**2 / 2) / x**3
            rhos = np.linalg.solve([[1, 1], [c.rks[0], 1]], [x * phi_2 / b_h, 2 * x * phi_3 / b_h])
            assert c.corrector_rhos[1] == pytest.approx(rhos.tolist(), rel=1e-7)
