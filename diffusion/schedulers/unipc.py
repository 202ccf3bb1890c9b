"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), data-prediction form, B(h) of type bh1 or bh2. Notation: `diffusion.schedulers.base`
and `.sigmas`.

Each step runs the corrector UniC on the sample the previous step predicted, using the model output
just computed at it (no extra evaluation: the corrector reuses it), then the predictor UniP to the next
noise level. Both are exponential integrators in λ = log(α_t/σ_t) whose higher-order terms combine
divided differences D_k = (m_k - m_0)/r_k of earlier x̂_0 predictions with weights ρ that solve
R·ρ = b (the paper's eq. 8 and Algorithms 1-2, with the bh1/bh2 choices of B(h) of sec. 3.3).

Semantics equal diffusers' `UniPCMultistepScheduler` with `predict_x0=True`, `lower_order_final=True`,
no `disable_corrector`, `final_sigmas_type="zero"`; see `.sigmas` for the timestep spacing, which
equals diffusers' for "trailing" and Karras σ. The last steps always lower the order (the last is
first-order): at σ = 0, λ = ∞ and the higher-order differences are undefined.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from diffusion.config import check_choice
from diffusion.schedulers.base import Generators, SchedulerOutput
from diffusion.schedulers.schedule import pred_original_sample
from diffusion.schedulers.sigmas import SigmaConfig, SigmaScheduler, StepState, check_solver_order, vp_coefficients

UniPCSolverType = Literal["bh1", "bh2"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPCConfig(SigmaConfig):
    """`SigmaConfig` plus UniPC's order and B(h)."""

    solver_order: int = 2  # order of the predictor (the corrector is one higher); 2 for guided, 3 unconditional
    # B(h) = h ("bh1", for unconditional sampling at very few steps) or e^h - 1 ("bh2", the paper's default).
    solver_type: UniPCSolverType = "bh2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("solver type", self.solver_type, ("bh1", "bh2"))
        check_solver_order(self.solver_order)


@dataclasses.dataclass(frozen=True, slots=True)
class UniPCStep:
    """The update from s_0 = σ_i to t = σ_{i+1}, h = λ_t - λ_{s0}, in float64: the UniP of step i, and the
    UniC of step i + 1, which redoes it with the x̂_0 at t. With D_k = (m_k - m_0)/r_k (eq. 8, data
    prediction): x_t = x_weight·x_{s0} - m0_weight·m_0 - correction_weight·Σ_k ρ_k·D_k."""

    alpha_s0: float  # α_{s0} = 1/√(σ_i²+1), for x̂_0 at σ_i
    sigma_s0: float  # σ_{s0} = σ_i·α_{s0}
    x_weight: float  # σ_t/σ_{s0}
    m0_weight: float  # α_t·(e^{-h} - 1)
    correction_weight: float  # α_t·B(h)
    rks: tuple[float, ...]  # r_k = (λ_{s_k} - λ_{s0})/h of the earlier points σ_{i-1}, σ_{i-2}, ...
    predictor_rhos: tuple[tuple[float, ...], ...]  # ρ of UniP per order 1, 2, ...: (), (0.5,), solved
    corrector_rhos: tuple[tuple[float, ...], ...]  # ρ of UniC per order 1, 2, ...: (0.5,), solved, ...


class UniPCMultistepScheduler(SigmaScheduler):
    """UniPC-p with UniC after every step but the first; one model evaluation per step."""

    config_class = UniPCConfig
    config: UniPCConfig

    def _weights(
        self, index_t: int, index_s0: int, order: int
    ) -> tuple[list[float], float, float, np.ndarray, np.ndarray]:
        """The pieces of a UniP/UniC update from σ[index_s0] to σ[index_t] of the given order.

        Returns:
            rks: r_k = (λ_{s_k} - λ_{s_0})/h for the k = 1..order-1 earlier points (σ[index_s0 - k]).
            h_phi_1: e^{-h} - 1 (the data-prediction form uses -h).
            b_h: B(-h).
            R: the (order, order) matrix of powers r_k^{i-1} (with r = 1 appended).
            b: the right-hand side, (order,).
        """
        sigmas = self.sigmas
        _, _, lambda_t = vp_coefficients(sigmas[index_t])
        _, _, lambda_s0 = vp_coefficients(sigmas[index_s0])
        h = lambda_t - lambda_s0
        rks = [(vp_coefficients(sigmas[index_s0 - k])[2] - lambda_s0) / h for k in range(1, order)]
        hh = -h  # data prediction (predict_x0)
        h_phi_1 = math.expm1(hh)  # h·φ_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config.solver_type == "bh1" else math.expm1(hh)
        factorial = 1
        rows, b = [], []
        r = np.array([*rks, 1.0])
        for i in range(1, order + 1):
            rows.append(r ** (i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return rks, h_phi_1, b_h, np.stack(rows), np.array(b)

    def _step_coefficients(self, index: int) -> UniPCStep:
        """The update from σ_index to σ_{index+1} for each order it can have: at most solver_order, the
        points so far and the steps left (the last steps lower the order: at σ = 0 the higher-order
        differences are undefined)."""
        alpha_s0, sigma_s0, _ = vp_coefficients(self.sigmas[index])
        alpha_t, sigma_t, _ = vp_coefficients(self.sigmas[index + 1])
        predictor_rhos, corrector_rhos = [], []
        for order in range(1, min(self.config.solver_order, index + 1, len(self.timesteps) - index) + 1):
            rks, h_phi_1, b_h, rows, b = self._weights(index + 1, index, order)
            predictor = [] if order == 1 else [0.5] if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
            predictor_rhos.append(tuple(predictor))
            corrector_rhos.append(tuple([0.5] if order == 1 else np.linalg.solve(rows, b).tolist()))
        return UniPCStep(
            alpha_s0,
            sigma_s0,
            x_weight=sigma_t / sigma_s0,
            m0_weight=alpha_t * h_phi_1,
            correction_weight=alpha_t * b_h,
            rks=tuple(rks),
            predictor_rhos=tuple(predictor_rhos),
            corrector_rhos=tuple(corrector_rhos),
        )

    @staticmethod
    def _update(
        c: UniPCStep, sample: torch.Tensor, history: Sequence[torch.Tensor], order: int, model_t: torch.Tensor | None
    ) -> torch.Tensor:
        """UniP (model_t None) or UniC (model_t = x̂_0 at t) of `order` from the sample at s_0, m_0 = history[-1]."""
        m0 = history[-1]
        # x_t = (σ_t/σ_s0)·x_s0 - α_t·(e^{-h} - 1)·m_0 - α_t·B(h)·Σ_k ρ_k·D_k  (eq. 8, data prediction)
        prev_sample = c.x_weight * sample - c.m0_weight * m0
        differences = [(history[-(k + 1)] - m0) / rk for k, rk in enumerate(c.rks[: order - 1], start=1)]  # D_k
        if model_t is None:  # UniP: order-1 earlier differences, ρ from the leading block of R ρ = b
            if not differences:
                return prev_sample
            rhos = c.predictor_rhos[order - 1]
        else:  # UniC: the earlier differences plus D_t = m_t - m_0
            rhos = c.corrector_rhos[order - 1]
            differences.append(model_t - m0)
        correction = sum(rho * d for rho, d in zip(rhos, differences, strict=True))
        return prev_sample - c.correction_weight * correction

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        state: StepState | None = None,
    ) -> SchedulerOutput:
        """UniC on `sample` (from the second step on), then UniP to the next noise level.

        `sample` is the VP x_t as the previous step predicted it; deterministic (`generator` unused).
        Arguments, return value and errors: `Scheduler.step`.
        """
        self._check_shapes(model_output, sample)
        i = self.step_index(timestep, state)
        c = self.coefficients[i]
        x0 = pred_original_sample(model_output, sample, c.alpha_s0, c.sigma_s0, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)

        # 1. Corrector UniC: redo the previous step from its start with this x̂_0 as the new point (not at
        # the first step, nor at a fresh start mid-grid, `initial_state`, which have no previous step).
        if state is not None and state.history:
            previous = self.coefficients[i - 1]
            sample = self._update(previous, state.get("last_sample"), state.history, state.get("order"), x0)

        # 2. Predictor UniP of order min(solver_order, x̂_0 in the history, steps left): warm-up (from the
        # first step, or mid-grid for img2img), lower-order final.
        history = self._history(state, x0, self.config.solver_order)
        order = min(self.config.solver_order, len(history), len(self.timesteps) - i)
        prev_sample = self._update(c, sample, history, order, None)
        return SchedulerOutput(prev_sample, x0, self._state(i + 1, history, last_sample=sample, order=order))
