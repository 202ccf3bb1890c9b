"""`NoiseSchedule.to`: a copy of the schedule with its float64 tables on another device."""

import pytest
import torch

from diffusion.schedulers import NoiseSchedule, SchedulerConfig

TABLES = ("betas", "alphas", "alphas_cumprod", "_sqrt_alphas_cumprod", "_sqrt_one_minus_alphas_cumprod")


@pytest.fixture
def schedule():
    return NoiseSchedule(SchedulerConfig(num_train_timesteps=50, beta_schedule="cosine"))


def test_to_the_cpu_is_a_copy_with_equal_float64_tables(schedule):
    moved = schedule.to("cpu")
    assert moved is not schedule and moved.config is schedule.config and moved.num_train_timesteps == 50
    for name in TABLES:
        table = getattr(moved, name)
        assert table.dtype == torch.float64 and table.shape == (50,) and table.device == torch.device("cpu")
        torch.testing.assert_close(table, getattr(schedule, name), rtol=0, atol=0, msg=name)
    x0, noise = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    t = torch.tensor([0, 49])
    torch.testing.assert_close(moved.add_noise(x0, noise, t), schedule.add_noise(x0, noise, t), rtol=0, atol=0)


def test_to_another_device_moves_every_table_and_leaves_the_original(schedule):
    before = {name: getattr(schedule, name).clone() for name in TABLES}
    moved = schedule.to(torch.device("meta"))
    for name in TABLES:
        table = getattr(moved, name)
        assert table.device.type == "meta" and table.dtype == torch.float64 and table.shape == (50,), name
        original = getattr(schedule, name)
        assert original.device == torch.device("cpu") and original.dtype == torch.float64, name
        torch.testing.assert_close(original, before[name], rtol=0, atol=0, msg=name)
