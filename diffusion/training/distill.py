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

import torch

from ..schedulers import NoiseSchedule
from ..schedulers.schedule import pred_original_sample

# (z_t, t, labels) -> the model's x̂_0 (for a teacher: its guided prediction, converted from what it predicts)
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def distillation_grid(num_student_steps: int, num_train_timesteps: int) -> torch.Tensor:
    """The teacher's 2N + 1 levels, noisiest first, ``(2N + 1,)`` int64: T - 1 down to -1 (the clean image)
    in equal strides (diffusers' "trailing" spacing), so the student's N levels are the even entries."""
    if not 1 <= num_student_steps <= num_train_timesteps // 2:
        raise ValueError(f"num_student_steps must be in [1, {num_train_timesteps // 2}], got {num_student_steps}")
    k = torch.arange(2 * num_student_steps + 1, dtype=torch.float64)
    return (num_train_timesteps - k * num_train_timesteps / (2 * num_student_steps)).round().long() - 1


def noise_level(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) of levels ``t`` ``(b,)``, shaped ``(b, 1, 1, 1)`` in ``like``'s dtype; level -1 is (1, 0)."""
    alphas_cumprod = torch.cat([schedule.alphas_cumprod, torch.ones(1, dtype=torch.float64)])  # [-1] is ᾱ = 1
    bar = alphas_cumprod[t.cpu()].reshape((-1,) + (1,) * (like.ndim - 1))  # ᾱ_t, float64, (b, 1, 1, 1)
    return bar.sqrt().to(like.dtype).to(like.device), (1 - bar).sqrt().to(like.dtype).to(like.device)


Level = tuple[torch.Tensor, torch.Tensor]  # (α, σ), each (b, 1, 1, 1)


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
        prediction_type: what the student predicts (``epsilon``, ``v_prediction`` or ``sample``); a student
            for 1 or 2 steps needs v or x_0, since ε cannot be turned into x̂_0 at the noisiest level.
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
    levels = torch.stack([grid[2 * step], grid[2 * step + 1], grid[2 * step + 2]])  # t > t' > t'', (3, b)
    alpha_t, sigma_t = noise_level(schedule, levels[0], x0)
    z_t = alpha_t * x0 + sigma_t * noise  # q(z_t | x), Ho et al. 2020, eq. 4
    with torch.no_grad():
        target = teacher_target(teacher, schedule, z_t, levels, labels)
    output = student(z_t, levels[0].to(x0.device), labels)
    x_hat = pred_original_sample(output.float(), z_t.float(), alpha_t.float(), sigma_t.float(), prediction_type)
    weight = torch.clamp(alpha_t.square() / sigma_t.square(), min=1.0).float()  # max(SNR_t, 1), (b, 1, 1, 1)
    return (weight * (x_hat - target.float()).square()).mean()
