"""bench/consistency_vs_progressive.py: multistep consistency sampling and the consistency-distillation step."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.schedulers import NoiseSchedule, SchedulerConfig

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # the script imports its sibling class_conditional, as it does run from bench/
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


cvp = _load("consistency_vs_progressive")
SHAPE = (1, 8, 8)


def linear_alpha_sigma(t: int) -> tuple[float, float]:
    """α_t = √ᾱ_t and σ_t = √(1 - ᾱ_t) of the default schedule (linear β from 1e-4 to 0.02, T = 1000)."""
    bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t]
    return math.sqrt(bar), math.sqrt(1 - bar)


class Recorder:
    """A perfect consistency function: returns ``x`` whatever it is given, and records its inputs."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.calls = x, []

    def __call__(self, z, t, labels, w):
        self.calls.append((z.clone(), t.clone(), labels, w))
        return self.x.expand(z.shape[0], *self.x.shape)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.linspace(-0.9, 0.9, 64).reshape(SHAPE)


def test_one_step_of_a_perfect_consistency_function_gives_its_image(image):
    f = Recorder(image)
    labels = torch.tensor([0, 1, 0])
    out = cvp.consistency_sample(f, NoiseSchedule(SchedulerConfig()), 1, labels, 1.5, [4, 5, 6], SHAPE)
    torch.testing.assert_close(out, image.expand(3, *SHAPE), rtol=0, atol=0)
    assert len(f.calls) == 1
    z, t, called_labels, w = f.calls[0]
    assert t.tolist() == [999, 999, 999] and called_labels is labels and w == 1.5
    first = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(5))  # image 1's noise, from seed 5
    torch.testing.assert_close(z[1:2], first, rtol=0, atol=0)


def test_two_steps_renoise_at_the_second_level_with_fresh_noise(image):
    f = Recorder(image)
    cvp.consistency_sample(f, NoiseSchedule(SchedulerConfig()), 2, torch.tensor([1, 1]), 1.0, [7, 8], SHAPE)
    assert [t.tolist() for _, t, _, _ in f.calls] == [[999, 999], [499, 499]]  # the trailing timesteps of 2 steps
    alpha, sigma = linear_alpha_sigma(499)
    assert alpha == pytest.approx(0.2803, abs=1e-4)  # ᾱ_499 ≈ 0.0786
    generator = torch.Generator().manual_seed(8)  # image 1: its start noise, then the noise of the second step
    torch.randn((1, *SHAPE), generator=generator)
    eps = torch.randn((1, *SHAPE), generator=generator)
    z = f.calls[1][0]
    torch.testing.assert_close(z[1:2], alpha * image + sigma * eps, rtol=1e-6, atol=1e-6)  # float32 arithmetic


@pytest.fixture
def two_classes(tmp_path) -> Path:
    """Eight random 8x8 grayscale PNGs, four in cat/, four in dog/ (the tiny teacher's classes)."""
    rng = np.random.default_rng(0)
    for i in range(8):
        path = tmp_path / "data" / ("cat", "dog")[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return tmp_path / "data"


def distillation(teacher: Path, data: Path, **settings):
    config, pipe = cvp.teacher_run(str(teacher), data, data.parent / "out")
    assert config.prediction_type == "v_prediction" and config.image_size == (8, 8)
    dataset = cvp.ImageFolder(data, config.image_size, config.channels, hflip=False)
    return cvp.ConsistencyDistillation(pipe, cvp.Settings(batch_size=8, **settings)), dataset


def test_distillation_steps_lower_the_loss_on_a_fixed_batch(tiny_conditional_model, two_classes):
    run, dataset = distillation(tiny_conditional_model, two_classes)
    assert run.levels.shape == (65,) and run.levels[[0, -2, -1]].tolist() == [999, 15, -1]
    x0, labels = next(cvp.batches(dataset, 8, seed=1))
    assert x0.shape == (8, *SHAPE) and sorted(labels.tolist()) == [0] * 4 + [1] * 4

    def fixed_loss() -> float:
        with torch.no_grad():
            return run.loss(x0, labels, torch.Generator().manual_seed(123)).item()

    before = fixed_loss()
    data = cvp.batches(dataset, 8, seed=0)
    first = run.step(*next(data))
    assert math.isfinite(first) and first > 0
    assert run.ema.num_updates == run.target_ema.num_updates == 1
    for _ in range(19):
        run.step(*next(data))
    # 0.617 at one thread, 0.620 at two (seed 0, lr 2e-4); the bound leaves room for other rounding
    assert fixed_loss() < 0.75 * before


def test_the_lowest_pair_targets_the_teachers_clean_image(tiny_conditional_model, two_classes):
    run, dataset = distillation(tiny_conditional_model, two_classes, levels=1)  # pairs: (999, -1) only
    x0, labels = next(cvp.batches(dataset, 8, seed=0))
    loss = run.loss(x0, labels, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same draws, in the objective's order
    labels = cvp.drop_labels(labels, 2, 0.1, generator)
    w = 1.0 + torch.rand(8, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    alpha, sigma = linear_alpha_sigma(999)
    z = alpha * x0 + sigma * noise
    t = torch.full((8,), 999)
    with torch.no_grad():
        expected = cvp.teacher_x0(run.teacher, "epsilon", run.schedule, w)(z, t, labels)  # DDIM to -1: x̂_0
    student = cvp.consistency_function(run.student, run.schedule)(z, t, labels, w)
    torch.testing.assert_close(loss, (student - expected).square().mean(), rtol=1e-5, atol=1e-7)


def test_pseudo_huber_distance():
    x, y = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)  # ||x - y||² = 4 x 0.25 = 1 per image
    assert cvp.distance(x, y, 0.0).item() == pytest.approx(0.25)
    assert cvp.distance(x, y, 0.03).item() == pytest.approx(math.sqrt(1 + 0.03**2) - 0.03)
