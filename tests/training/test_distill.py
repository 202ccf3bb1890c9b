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


@pytest.mark.parametrize("n", [3, 4, 24, 48])
def test_the_students_levels_are_the_stock_ddim_samplers_and_the_middles_its_teachers(n):
    grid = distillation_grid(n, 1000)
    student, teacher = DDIMScheduler(), DDIMScheduler()
    student.set_timesteps(n)
    teacher.set_timesteps(2 * n)
    assert grid[0::2].tolist() == [*student.timesteps.tolist(), -1]
    assert grid[1::2].tolist() == teacher.timesteps[1::2].tolist()


def test_a_student_step_is_the_stock_ddim_step():
    """The student samples with `DDIMScheduler` as it is (η = 0, ᾱ = 1 after the last step): its steps are
    `ddim_step` between the grid's even levels."""
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6))

    def model(z, t):  # an x_0 predictor that depends on its input
        return torch.tanh(z + x0)

    sampler = DDIMScheduler(DDIMConfig(prediction_type="sample"))
    sampler.set_timesteps(3)
    levels = distillation_grid(3, 1000)[0::2]
    ours = theirs = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    for i, t in enumerate(sampler.timesteps):
        theirs = sampler.step(model(theirs, t), t, theirs).prev_sample
        ours = ddim_step(
            model(ours, t), ours, *(noise_level(SCHEDULE, levels[k : k + 1].expand(2), ours) for k in (i, i + 1))
        )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def replayed(seed: int, shape: tuple[int, ...], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ε and the student steps `distillation_loss` draws from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randint(0, n, (shape[0],), generator=g)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_student_that_predicts_exactly_what_a_perfect_teacher_implies_has_zero_loss(prediction_type):
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 2 - 1
    schedule = NoiseSchedule(SchedulerConfig(prediction_type=prediction_type))

    def student(z, t, labels):  # the ε, v or x_0 of the z it is given, from the true x
        return schedule.training_target(
            x, (z - schedule.add_noise(x, 0 * x, t)) / (1 - schedule.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1), t
        )

    loss = distillation_loss(
        student, prediction_type, lambda z, t, labels: x, schedule, x, None, torch.Generator().manual_seed(9), 4
    )
    assert loss.dtype == torch.float32 and loss.item() < 1e-8


def test_the_loss_is_the_truncated_snr_weighted_error():
    """A perfect teacher's target is x; a student that predicts x_0 = 0 errs by x², weighted max(SNR_t, 1)."""
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(10)) * 2 - 1
    loss = distillation_loss(
        lambda z, t, labels: torch.zeros_like(z), "sample", lambda z, t, labels: x, SCHEDULE, x, None,
        torch.Generator().manual_seed(11), 4,
    )  # fmt: skip
    _, step = replayed(11, x.shape, 4)
    bar = SCHEDULE.alphas_cumprod[distillation_grid(4, 1000)[2 * step]]
    expected = (torch.clamp(bar / (1 - bar), min=1).float() * x.square().mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
