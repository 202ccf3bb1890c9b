"""Progressive distillation's objective: the grid, the teacher's two-step target, and a round that works."""

import copy

import pytest
import torch

from diffusion.schedulers import DDIMScheduler, NoiseSchedule, SchedulerConfig
from diffusion.schedulers.ddim import DDIMConfig
from diffusion.training.distill import (
    ddim_step,
    distillation_grid,
    distillation_loss,
    noise_level,
    teacher_target,
)

SCHEDULE = NoiseSchedule(SchedulerConfig())  # T = 1000, linear betas


def test_the_grid_ends_at_the_clean_image_in_equal_strides():
    assert distillation_grid(4, 1000).tolist() == [999, 874, 749, 624, 499, 374, 249, 124, -1]
    assert distillation_grid(1, 1000).tolist() == [999, 499, -1]
    with pytest.raises(ValueError, match=r"^num_student_steps must be in \[1, 500\], got 0$"):
        distillation_grid(0, 1000)


def test_level_minus_one_is_the_clean_image():
    alpha, sigma = noise_level(SCHEDULE, torch.tensor([-1, 0]), torch.zeros(2, 1, 4, 4))
    assert alpha.shape == (2, 1, 1, 1)
    assert (alpha[0].item(), sigma[0].item()) == (1.0, 0.0)
    torch.testing.assert_close(alpha[1].square() + sigma[1].square(), torch.ones(1, 1, 1), rtol=0, atol=1e-6)


def test_a_teacher_that_knows_the_image_gives_it_as_the_target():
    """A perfect denoiser for one image x: both DDIM steps stay on x's noising path, so x̃ = x exactly."""
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = torch.tensor([[999, 749, 499], [874, 624, 374], [249, 124, -1]])  # (3, b): t, t', t''
    alpha, sigma = noise_level(SCHEDULE, levels[0], x)
    z_t = alpha * x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = teacher_target(lambda z, t, labels: x, SCHEDULE, z_t, levels)
    torch.testing.assert_close(target, x, rtol=0, atol=1e-9)


def test_one_step_to_the_target_lands_where_the_teacher_does():
    """x̃ is defined by it: a DDIM step from t with x̂ = x̃ reaches the teacher's z_t'' (any teacher)."""
    g = torch.Generator().manual_seed(2)
    z_t = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    levels = torch.tensor([[999, 499], [874, 374], [749, 249]])

    def teacher(z, t, labels):
        return torch.tanh(z * 3 + t.reshape(-1, 1, 1, 1) / 500)  # an arbitrary x̂

    target = teacher_target(teacher, SCHEDULE, z_t, levels)
    t, t_mid, t_next = (noise_level(SCHEDULE, level, z_t) for level in levels)
    z_next = ddim_step(teacher(ddim_step(teacher(z_t, levels[0], None), z_t, t, t_mid), levels[1], None),
                       ddim_step(teacher(z_t, levels[0], None), z_t, t, t_mid), t_mid, t_next)  # fmt: skip
    torch.testing.assert_close(ddim_step(target, z_t, t, t_next), z_next, rtol=0, atol=1e-9)


def test_a_distillation_round_reduces_the_students_error_against_the_teachers_target(make_tiny_pipeline):
    teacher_pipe = make_tiny_pipeline()
    unet = teacher_pipe.unet.eval()

    def teacher(z, t, labels):  # a teacher that predicts x_0, as the student does: it starts as the teacher
        return unet(z, t)

    student = copy.deepcopy(unet).train()
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def error() -> float:  # the same draws each time: one fixed measurement
        with torch.no_grad():
            return distillation_loss(
                lambda z, t, labels: student(z, t), "sample", teacher, SCHEDULE, images, None,
                torch.Generator().manual_seed(4), num_student_steps=4,
            ).item()  # fmt: skip

    before = error()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(30):  # the measured draws each step: the round must fit the teacher's target for them
        g = torch.Generator().manual_seed(4)
        loss = distillation_loss(
            lambda z, t, labels: student(z, t), "sample", teacher, SCHEDULE, images, None, g, num_student_steps=4
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = error()
    assert after < before / 5, (before, after)  # 0.00628 -> 0.00037 when written
    assert all(p.grad is None for p in unet.parameters())  # the teacher is never trained


def test_the_grid_and_steps_are_the_stock_ddim_samplers():
    """The student samples with `DDIMScheduler` as it is (trailing spacing, η = 0, ᾱ = 1 after the last step):
    its N steps, and the teacher's 2N, visit the grid's levels and take `ddim_step`'s steps."""
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6))

    def model(z, t):  # an x_0 predictor that depends on its input
        return torch.tanh(z + x0)

    for steps in (4, 8):
        sampler = DDIMScheduler(DDIMConfig(prediction_type="sample"))
        sampler.set_timesteps(steps)
        grid = distillation_grid(steps // 2, 1000)  # a teacher of `steps` steps
        assert sampler.timesteps.tolist() == grid[:-1].tolist()
        ours = theirs = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7))
        for i, t in enumerate(sampler.timesteps):
            theirs = sampler.step(model(theirs, t), t, theirs).prev_sample
            levels = [noise_level(SCHEDULE, grid[k : k + 1].expand(2), ours) for k in (i, i + 1)]
            ours = ddim_step(model(ours, t), ours, *levels)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
