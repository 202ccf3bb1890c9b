"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", Algorithm 2): a student that takes one deterministic DDIM step where its teacher takes two.

The teacher samples on a grid of 2N + 1 noise levels (`distillation_grid`), the student on every other one.
From z_t the teacher takes two DDIM steps (η = 0) to z_t''; `teacher_target` solves for the x̃ that one
student step from t to t'' must predict to land on z_t'' exactly. `distillation_loss` is the whole objective
of one batch: the student's x̂ against x̃, weighted by max(SNR_t, 1) (the paper's "truncated SNR"), whatever
the student predicts (ε, v or x_0). Each round halves N, with the student of one round the teacher of the
next.

Levels are discrete timesteps of the model's schedule; level -1 is the clean image (α = 1, σ = 0).
"""

from collections.abc import Callable

import numpy as np
import torch

from ..schedulers import NoiseSchedule
from ..schedulers.base import trailing_timesteps
from ..schedulers.schedule import pred_original_sample

# (z_t, t, labels) -> the model's x̂_0 (for a teacher: its guided prediction, converted from what it predicts)
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Level = tuple[torch.Tensor, torch.Tensor]  # (α, σ) of a noise level, each (b, 1, 1, 1)


def distillation_grid(num_student_steps: int, num_train_timesteps: int) -> torch.Tensor:
    """The teacher's 2N + 1 levels, noisiest first, ``(2N + 1,)`` int64: the even entries are the student's N
    DDIM timesteps ("trailing" spacing, `trailing_timesteps`) and -1 (the clean image), so that it samples with
    `DDIMScheduler` as it is; each odd entry is the teacher's own 2N-step timestep between them."""
    T = num_train_timesteps
    if not 1 <= num_student_steps <= T // 2:
        raise ValueError(f"num_student_steps must be in [1, {T // 2}], got {num_student_steps}")
    student = np.append(trailing_timesteps(T, num_student_steps), -1)  # (N + 1,)
    middle = trailing_timesteps(T, 2 * num_student_steps)[1::2]  # (N,)
    grid = np.empty(2 * num_student_steps + 1, dtype=np.int64)
    grid[0::2], grid[1::2] = student, middle
    assert (np.diff(grid) < 0).all(), grid  # every teacher step goes down
    return torch.from_numpy(grid)


def alphas_cumprod(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """ᾱ of levels ``t`` ``(b,)``, float64 on the schedule's device; level -1 (the clean image) has ᾱ = 1."""
    table = schedule.alphas_cumprod
    return torch.cat([table, table.new_ones(1)])[t.to(table.device)]  # index -1 is the appended 1


def noise_level(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> Level:
    """(α_t, σ_t) of levels ``t`` ``(b,)``, shaped ``(b, 1, 1, 1)`` in ``like``'s dtype and device."""
    bar = alphas_cumprod(schedule, t).reshape((-1,) + (1,) * (like.ndim - 1))  # ᾱ_t, float64
    return bar.sqrt().to(like.dtype).to(like.device), (1 - bar).sqrt().to(like.dtype).to(like.device)


def ddim_step(x0: torch.Tensor, z_t: torch.Tensor, t_level: Level, s_level: Level) -> torch.Tensor:
    """z_s from z_t and x̂_0 at η = 0 (Song et al. 2021, eq. 12): α_s·x̂_0 + σ_s·(z_t - α_t·x̂_0)/σ_t."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = t_level, s_level
    return alpha_s * x0 + sigma_s * (z_t - alpha_t * x0) / sigma_t


def teacher_target(
    teacher: Predictor,
    schedule: NoiseSchedule,
    z_t: torch.Tensor,
    levels: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """x̃ (Salimans & Ho 2022, Algorithm 2): ``levels`` is ``(3, b)``, each sample's t > t' > t''; the teacher
    steps z_t -> z_t' -> z_t'', and x̃ = (z_t'' - (σ_t''/σ_t)·z_t) / (α_t'' - (σ_t''/σ_t)·α_t) is the x̂ whose
    single DDIM step from t lands on z_t''."""
    assert levels.shape[0] == 3 and (levels[0] > levels[1]).all() and (levels[1] > levels[2]).all(), levels
    t, t_mid, t_next = (noise_level(schedule, level, z_t) for level in levels)
    z_mid = ddim_step(teacher(z_t, levels[0], labels), z_t, t, t_mid)
    z_next = ddim_step(teacher(z_mid, levels[1], labels), z_mid, t_mid, t_next)
    ratio = t_next[1] / t[1]  # σ_t'' / σ_t, (b, 1, 1, 1)
    return (z_next - ratio * z_t) / (t_next[0] - ratio * t[0])


def distillation_loss(
    student: Callable[..., torch.Tensor],
    prediction_type: str,
    teacher: Predictor,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    num_student_steps: int,
) -> torch.Tensor:
    """The distillation objective of one batch: a float32 scalar.

    Args:
        student: called as ``student(z_t, t, labels)``; returns its ``prediction_type`` output ``(b, c, h, w)``.
        prediction_type: what the student predicts (``epsilon``, ``v_prediction`` or ``sample``). Every
            student's first level is T - 1, where x̂_0 from ε divides by α_{T-1} (0.006 for linear betas, 0 with
            a zero terminal SNR): a student predicts v or x_0.
        teacher: the teacher's x̂_0 (`Predictor`), with no gradient.
        schedule: the noise schedule both share.
        x0: ``(b, c, h, w)`` clean images, on the student's device.
        labels: ``(b,)`` class indices, or None.
        generator: ε, then each sample's student step, are drawn from it, on its device.
        num_student_steps: N, the student's steps; the teacher's are 2N.
    """
    grid = distillation_grid(num_student_steps, schedule.num_train_timesteps)
    draws = {"generator": generator, "device": generator.device}
    noise = torch.randn(x0.shape, **draws).to(x0.device)  # ε, (b, c, h, w)
    step = torch.randint(0, num_student_steps, (x0.shape[0],), **draws).cpu()  # each sample's student step
    levels = torch.stack([grid[2 * step], grid[2 * step + 1], grid[2 * step + 2]]).to(x0.device)  # t > t' > t''
    alpha_t, sigma_t = noise_level(schedule, levels[0], x0)
    z_t = alpha_t * x0 + sigma_t * noise  # q(z_t | x), Ho et al. 2020, eq. 4
    with torch.no_grad():
        target = teacher_target(teacher, schedule, z_t, levels, labels)
    output = student(z_t, levels[0], labels)
    x_hat = pred_original_sample(output.float(), z_t.float(), alpha_t.float(), sigma_t.float(), prediction_type)
    bar = alphas_cumprod(schedule, levels[0])  # float64, (b,)
    weight = torch.clamp(bar / (1 - bar), min=1.0).float().to(x0.device)  # truncated SNR, Salimans & Ho 2022, sec. 4
    per_sample = (x_hat - target.float()).square().mean(dim=(1, 2, 3))  # (b,)
    return (weight * per_sample).mean()
