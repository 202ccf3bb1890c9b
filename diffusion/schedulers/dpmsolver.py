"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), orders 1-3, and its SDE variant. Notation: `diffusion.schedulers.base` and `.sigmas`.

The solver integrates the diffusion ODE written in the data prediction x̂_0 and in λ = log(α_t/σ_t):
one exponential-integrator step from s to t (h = λ_t - λ_s) is exact for the linear part and
approximates x̂_0 along the step by a polynomial through the last `solver_order` predictions (the
multistep history, carried in `state`). The SDE variant (Lu et al. 2022, appendix; "SDE-DPM-Solver++")
integrates the reverse SDE instead and adds fresh noise every step.

Semantics equal diffusers' `DPMSolverMultistepScheduler` with `final_sigmas_type="zero"`,
`euler_at_final=False`, `lambda_min_clipped=-inf`, `variance_type=None`, except for the third-order SDE
update, which follows k-diffusion because diffusers' is wrong (see `step`); see `.sigmas` for the
timestep spacing, which equals diffusers' for "trailing" and Karras σ.
"""

import dataclasses
import math
from typing import Literal

import torch

from diffusion.config import check_choice
from diffusion.rng import Generators, randn_tensor
from diffusion.schedulers.base import SchedulerOutput
from diffusion.schedulers.schedule import pred_original_sample
from diffusion.schedulers.sigmas import (
    SigmaConfig,
    SigmaScheduler,
    StepState,
    check_solver_order,
    vp_coefficients,
)

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


class DPMSolverMultistepScheduler(SigmaScheduler):
    """DPM-Solver++(1/2M/3M) and SDE-DPM-Solver++; one model evaluation per step."""

    config_class = DPMSolverConfig
    config: DPMSolverConfig

    @property
    def stochastic(self) -> bool:
        """The SDE variant adds noise at every step."""
        return self.config.algorithm_type == "sde-dpmsolver++"

    def _order(self, index: int, available: int) -> int:
        """The order used at step `index` with `available` x̂_0 in the history (this step's included):
        warm-up until the history is full (a run may also start mid-grid, e.g. img2img), then
        lower-order final steps."""
        n, order = len(self.timesteps), min(self.config.solver_order, available)
        final = index == n - 1
        lower_second = index == n - 2 and self.config.lower_order_final and n < LOWER_ORDER_FINAL_BELOW
        if order == 1 or final:
            return 1
        if order == 2 or lower_second:
            return 2
        return 3

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
        sigmas = self.sigmas

        # 1. The data prediction x̂_0 at s_0 = σ_i (Lu et al. 2022, eq. 8), clipped or thresholded.
        alpha_s0, sigma_s0, lambda_s0 = vp_coefficients(sigmas[i])
        x0 = pred_original_sample(model_output, sample, alpha_s0, sigma_s0, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)
        history = self._history(state, x0, self.config.solver_order)  # (..., m_2, m_1, m_0 = x̂_0)

        # 2. Step sizes in λ: h = λ_t - λ_{s0}, and the ratios r_k = h_k / h of earlier steps.
        alpha_t, sigma_t, lambda_t = vp_coefficients(sigmas[i + 1])
        h = lambda_t - lambda_s0
        order = self._order(i, len(history))
        sde = self.config.algorithm_type == "sde-dpmsolver++"

        # 3. Exponential-integrator terms. ODE (eq. 9-10): x_t = (σ_t/σ_s)·x_s - α_t·(e^{-h}-1)·D_0 + ...;
        #    SDE: x_t = (σ_t/σ_s)·e^{-h}·x_s + α_t·(1-e^{-2h})·D_0 + ... + σ_t·√(1-e^{-2h})·z.
        #    At σ_t = 0 (h = ∞) both give x_t = x̂_0.
        if sde:
            decay = sigma_t / sigma_s0 * math.exp(-h)
            phi_1 = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        else:
            decay = sigma_t / sigma_s0
            phi_1 = -math.expm1(-h)  # 1 - e^{-h}
        prev_sample = decay * sample + alpha_t * phi_1 * history[-1]

        if order >= 2:
            # Second-order terms from m_0, m_1: D_1 = (m_0 - m_1)/r_0 (Algorithm 2 / appendix).
            _, _, lambda_s1 = vp_coefficients(sigmas[i - 1])
            r0 = (lambda_s0 - lambda_s1) / h
            d1_0 = (history[-1] - history[-2]) / r0
            if order == 3:
                _, _, lambda_s2 = vp_coefficients(sigmas[i - 2])
                r1 = (lambda_s1 - lambda_s2) / h
                d1_1 = (history[-2] - history[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
            else:
                d1, d2 = d1_0, None
            if order == 2 and self.config.solver_type == "midpoint":
                phi_2 = 0.5 * phi_1  # the midpoint form: D_1 enters with half the first-order weight
            elif sde:
                phi_2 = 1.0 - phi_1 / (2.0 * h)  # (1-e^{-2h})/(-2h) + 1
            else:
                phi_2 = math.expm1(-h) / h + 1.0  # (e^{-h}-1)/h + 1
            prev_sample = prev_sample + alpha_t * phi_2 * d1
            if d2 is not None:
                phi_3 = self.third_order_weight(h, sde)
                prev_sample = prev_sample + alpha_t * phi_3 * d2

        if sde:
            # 4. Fresh noise every step (also the last, where σ_t = 0 scales it away, so that each
            #    step draws the same amount from the generator as diffusers does).
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=torch.float32
            )
            prev_sample = prev_sample + sigma_t * math.sqrt(-math.expm1(-2.0 * h)) * noise.to(sample.dtype)
        return SchedulerOutput(prev_sample, x0, self._state(i + 1, history))
