"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), orders 1-3, and its SDE variant. Notation: `diffusion.schedulers.base` and `.sigmas`.

The solver integrates the diffusion ODE written in the data prediction x̂_0 and in λ = log(α_t/σ_t):
one exponential-integrator step from s to t (h = λ_t - λ_s) is exact for the linear part and
approximates x̂_0 along the step by a polynomial through the last `solver_order` predictions (the
multistep history, carried in `state`). The SDE variant (Lu et al. 2022, appendix; "SDE-DPM-Solver++")
integrates the reverse SDE instead and adds fresh noise every step.

Semantics equal diffusers' `DPMSolverMultistepScheduler` with `final_sigmas_type="zero"`,
`euler_at_final=False`, `lambda_min_clipped=-inf`, `variance_type=None`, except for the third-order SDE
update, which follows k-diffusion because diffusers' is wrong (see `third_order_weight`); see `.sigmas`
for the timestep spacing, which equals diffusers' for "trailing" and Karras σ. `set_timesteps` computes
each step's weights (`DPMSolverStep`); `step` applies them.
"""

import dataclasses
import math
from typing import Literal

import torch

from diffusion.config import check_choice
from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.schedule import pred_original_sample
from diffusion.schedulers.sigmas import SigmaConfig, SigmaScheduler, StepState, check_solver_order, vp_coefficients

AlgorithmType = Literal["dpmsolver++", "sde-dpmsolver++"]
SolverType = Literal["midpoint", "heun"]
LOWER_ORDER_FINAL_BELOW = 15  # lower-order final steps apply below this many steps (Lu et al. 2022; diffusers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverConfig(SigmaConfig):
    """`SigmaConfig` plus DPM-Solver++'s order and variant."""

    # Multistep order: 2 ("2M", the paper's choice for guided sampling) or 3 ("3M", for unconditional
    # sampling); 1 is DDIM written in λ. The first steps use lower orders until the history is full.
    solver_order: int = 2
    # "dpmsolver++": the ODE solver; "sde-dpmsolver++": the SDE solver (stochastic, needs more steps).
    algorithm_type: AlgorithmType = "dpmsolver++"
    # The form of the second-order update: "midpoint" (the paper's Algorithm 2) or "heun".
    solver_type: SolverType = "midpoint"
    # With fewer than 15 steps, use order 1 at the last step and at most 2 at the one before, which
    # stabilises few-step sampling (Lu et al. 2022, sec. 5). The last step is always first-order: it lands on σ = 0.
    lower_order_final: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("algorithm type", self.algorithm_type, ("dpmsolver++", "sde-dpmsolver++"))
        check_choice("solver type", self.solver_type, ("midpoint", "heun"))
        check_solver_order(self.solver_order)


@dataclasses.dataclass(frozen=True, slots=True)
class DPMSolverStep:
    """The coefficients of step i, from s_0 = σ_i to t = σ_{i+1}, h = λ_t - λ_{s0}, in float64.

    With D_0 = m_0 = x̂_0 and the divided differences D_1, D_2 of the history, the step is
    x_t = x_weight·x_{s0} + Σ_k weights[order - 1][k]·D_k, plus noise_std·z for the SDE.
    """

    alpha_s0: float  # α_{s0} = 1/√(σ_i²+1), for x̂_0 (Lu et al. 2022, eq. 8)
    sigma_s0: float  # σ_{s0} = σ_i·α_{s0}
    order: int  # the order with a full history: solver_order, or lower at the last steps
    x_weight: float  # σ_t/σ_{s0} (ODE, eq. 9-10); σ_t/σ_{s0}·e^{-h} (SDE)
    # Per order 1..: the weights of D_0, D_1, D_2: α_t·φ_1 with φ_1 = 1-e^{-h} (SDE: 1-e^{-2h}), α_t·φ_2, α_t·φ_3.
    weights: tuple[tuple[float, ...], ...]
    r0: float  # r_0 = (λ_{s0} - λ_{s1})/h, the previous step's size over h (where order >= 2)
    r1: float  # r_1 = (λ_{s1} - λ_{s2})/h (where order 3)
    noise_std: float  # σ_t·√(1-e^{-2h}), the std of the SDE's fresh noise z; 0 for the ODE


class DPMSolverMultistepScheduler(SigmaScheduler):
    """DPM-Solver++(1/2M/3M) and SDE-DPM-Solver++; one model evaluation per step."""

    config_class = DPMSolverConfig
    config: DPMSolverConfig

    @property
    def stochastic(self) -> bool:
        """The SDE variant adds noise at every step."""
        return self.config.algorithm_type == "sde-dpmsolver++"

    def third_order_weight(self, h: float, sde: bool) -> float:
        """The weight of D_2 ≈ h²·x̂_0''/2 in a third-order step of size h (in λ).

        The authors' reference code (ODE: 1/2 - (e^{-h}-1+h)/h²) and k-diffusion's sample_dpmpp_3m_sde
        (SDE: 1/2 - φ_2/(2h), φ_2 = 1 - (1-e^{-2h})/(2h)). Both are half the Taylor-exact weight, so a
        quadratic x̂_0(λ) is not integrated exactly; we keep them because the exact weight sampled no
        better (bench/third_order_weight.py, docs/benchmarks.md). diffusers' SDE weight,
        ((1-e^{-2h}) - 2h)/(2h)² - 1/2 ≈ -1 + h/3, is O(1) off and makes 3M-SDE first order in effect.
        """
        if sde:
            phi_2 = 1.0 + math.expm1(-2.0 * h) / (2.0 * h)
            return 0.5 - phi_2 / (2.0 * h)
        return 0.5 - (math.expm1(-h) + h) / h**2

    def _step_coefficients(self, index: int) -> DPMSolverStep:
        """The exponential-integrator weights of step `index` (Lu et al. 2022, Algorithm 2 and appendix).

        ODE (eq. 9-10): x_t = (σ_t/σ_s)·x_s - α_t·(e^{-h}-1)·D_0 + ...; SDE: x_t = (σ_t/σ_s)·e^{-h}·x_s +
        α_t·(1-e^{-2h})·D_0 + ... + σ_t·√(1-e^{-2h})·z. At σ_t = 0 (h = ∞) both give x_t = x̂_0.
        """
        config, sigmas, n = self.config, self.sigmas, len(self.timesteps)
        sde = config.algorithm_type == "sde-dpmsolver++"
        alpha_s0, sigma_s0, lambda_s0 = vp_coefficients(sigmas[index])
        alpha_t, sigma_t, lambda_t = vp_coefficients(sigmas[index + 1])
        h = lambda_t - lambda_s0
        if sde:
            x_weight, phi_1 = sigma_t / sigma_s0 * math.exp(-h), -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        else:
            x_weight, phi_1 = sigma_t / sigma_s0, -math.expm1(-h)  # 1 - e^{-h}
        # Lower-order final steps: the last is first order (it lands on σ = 0), the one before at most
        # second order below LOWER_ORDER_FINAL_BELOW steps.
        lower_second = index == n - 2 and config.lower_order_final and n < LOWER_ORDER_FINAL_BELOW
        order = min(config.solver_order, 1 if index == n - 1 else 2 if lower_second else 3)
        weights, r0, r1 = [(alpha_t * phi_1,)], math.nan, math.nan
        if order >= 2 and index >= 1:  # D_1 = (m_0 - m_1)/r_0 (Algorithm 2), from the step before
            r0 = (lambda_s0 - vp_coefficients(sigmas[index - 1])[2]) / h
            # φ_2: (e^{-h}-1)/h + 1, SDE (1-e^{-2h})/(-2h) + 1; the midpoint form of 2M halves φ_1 instead.
            phi_2 = 1.0 - phi_1 / (2.0 * h) if sde else math.expm1(-h) / h + 1.0
            midpoint = config.solver_type == "midpoint"
            weights.append((alpha_t * phi_1, alpha_t * (0.5 * phi_1 if midpoint else phi_2)))
            if order == 3 and index >= 2:
                r1 = (vp_coefficients(sigmas[index - 1])[2] - vp_coefficients(sigmas[index - 2])[2]) / h
                weights.append((alpha_t * phi_1, alpha_t * phi_2, alpha_t * self.third_order_weight(h, sde)))
        noise_std = sigma_t * math.sqrt(-math.expm1(-2.0 * h)) if sde else 0.0
        return DPMSolverStep(alpha_s0, sigma_s0, order, x_weight, tuple(weights), r0, r1, noise_std)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: StepState | None = None,
    ) -> SchedulerOutput:
        """One multistep DPM-Solver++ step from σ_i to σ_{i+1} (Lu et al. 2022, Algorithm 2 and appendix).

        `sample` is the VP x_t; `generator` draws the SDE variant's noise.
        Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep, state)
        c = self.coefficients[i]
        # 1. The data prediction x̂_0 at s_0 = σ_i (eq. 8), clipped or thresholded, joins the history
        #    (..., m_1, m_0 = x̂_0); the order is lower until the history is full (also mid-grid: img2img).
        x0 = pred_original_sample(model_output, sample, c.alpha_s0, c.sigma_s0, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)
        history = self._history(state, x0, self.config.solver_order)
        order = min(c.order, len(history))
        w = c.weights[order - 1]
        # 2. First order: x_t = (σ_t/σ_s0)·x_s0 + α_t·φ_1·D_0 (DDIM in λ; eq. 9-10 and the SDE's form).
        prev_sample = c.x_weight * sample + w[0] * x0
        if order >= 2:
            # 3. + α_t·φ_2·D_1, D_1 = (m_0 - m_1)/r_0 (Algorithm 2); 3M: D_1 from m_0..m_2, and + α_t·φ_3·D_2.
            d1 = (history[-1] - history[-2]) / c.r0
            d2 = None
            if order == 3:
                d1_1 = (history[-2] - history[-3]) / c.r1
                d1, d2 = d1 + c.r0 / (c.r0 + c.r1) * (d1 - d1_1), (d1 - d1_1) / (c.r0 + c.r1)
            prev_sample = prev_sample + w[1] * d1
            if d2 is not None:
                prev_sample = prev_sample + w[2] * d2
        if self.stochastic:
            # 4. Fresh noise every step (also the last, where σ_t = 0 scales it away, so that each step
            #    draws the same amount from the generator as diffusers does).
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=torch.float32)
            prev_sample = prev_sample + c.noise_std * noise.to(sample.dtype)
        return SchedulerOutput(prev_sample, x0, self._state(i + 1, history))
