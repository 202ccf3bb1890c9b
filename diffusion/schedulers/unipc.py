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
from diffusion.schedulers.sigmas import (
    SigmaConfig,
    SigmaScheduler,
    StepState,
    check_solver_order,
    vp_coefficients,
)

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

    def _update(
        self,
        index_t: int,
        index_s0: int,
        sample: torch.Tensor,
        history: Sequence[torch.Tensor],
        order: int,
        model_t: torch.Tensor | None,
    ) -> torch.Tensor:
        """UniP (model_t None) or UniC (model_t = x̂_0 at t) from the sample at s_0, m_0 = history[-1]."""
        alpha_t, sigma_t, _ = vp_coefficients(self.sigmas[index_t])
        _, sigma_s0, _ = vp_coefficients(self.sigmas[index_s0])
        rks, h_phi_1, b_h, rows, b = self._weights(index_t, index_s0, order)
        m0 = history[-1]
        # x_t = (σ_t/σ_s0)·x_s0 - α_t·(e^{-h} - 1)·m_0 - α_t·B(h)·Σ_k ρ_k·D_k  (eq. 8, data prediction)
        prev_sample = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        differences = [(history[-(k + 1)] - m0) / rk for k, rk in enumerate(rks, start=1)]  # D_k, k = 1..order-1
        if model_t is None:  # UniP: order-1 earlier differences, ρ from the leading block of R ρ = b
            if not differences:
                return prev_sample
            rhos = [0.5] if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
        else:  # UniC: the earlier differences plus D_t = m_t - m_0
            rhos = [0.5] if order == 1 else np.linalg.solve(rows, b).tolist()
            differences.append(model_t - m0)
        correction = sum(rho * d for rho, d in zip(rhos, differences, strict=True))
        return prev_sample - alpha_t * b_h * correction

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
        alpha_t, sigma_t, _ = vp_coefficients(self.sigmas[i])
        x0 = pred_original_sample(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        x0 = self._process_pred_original_sample(x0)

        # 1. Corrector UniC: redo the previous step from its start with this x̂_0 as the new point (not at
        # the first step, nor at a fresh start mid-grid, `initial_state`, which have no previous step).
        if state is not None and state.history:
            sample = self._update(i, i - 1, state.get("last_sample"), state.history, state.get("order"), x0)

        # 2. Predictor UniP of order min(solver_order, x̂_0 in the history, steps left): warm-up (from the
        # first step, or mid-grid for img2img), lower-order final.
        history = self._history(state, x0, self.config.solver_order)
        order = min(self.config.solver_order, len(history), len(self.timesteps) - i)
        prev_sample = self._update(i + 1, i, sample, history, order, None)
        return SchedulerOutput(prev_sample, x0, self._state(i + 1, history, last_sample=sample, order=order))
