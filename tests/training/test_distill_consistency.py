"""Consistency distillation through the trainer (``train.py --distill-from M --distill-method consistency``): the
student model folder, resume, the objective and refusals, on the tiny class-conditional model
(`tiny_conditional_model`: 1 channel, 8x8, cat/dog)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import distill_config, final_weights  # tests/training is on sys.path

from diffusion import cli
from diffusion.models import UNet
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import ConsistencyScheduler, NoiseSchedule
from diffusion.training import TrainConfig, Trainer
from diffusion.training.config import scheduler_config
from diffusion.training.distill_run import ROUNDS, Distillation, consistency_steps, open_teacher, student_settings


def consistency_config(tmp_path: Path, teacher: Path, out: str = "out", **overrides) -> TrainConfig:
    return distill_config(
        tmp_path, teacher, out, **({"distill_method": "consistency", "distill_levels": 8} | overrides)
    )


def test_a_consistency_run_writes_one_student_that_samples_with_any_step_count(tmp_path, tiny_conditional_model):
    folder = Trainer(consistency_config(tmp_path, tiny_conditional_model)).train()
    assert not (tmp_path / "out" / ROUNDS).exists()  # one round: no round folders
    assert sorted(p.name for p in (folder / "unet").iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    student = DiffusionPipeline.from_pretrained(folder)
    record = student.sampling
    assert (record.method, record.steps, record.default_steps, record.guidance_range) == (
        "consistency",
        (1, 2, 4),
        4,
        (1.0, 2.0),
    )
    config = student.scheduler.config
    assert isinstance(student.scheduler, ConsistencyScheduler)
    assert (config.prediction_type, config.timestep_spacing) == ("v_prediction", "trailing")
    for steps in (1, 3, 4):
        out = student(num_images=2, seed=0, class_labels="cat", num_inference_steps=steps, output_type="tensor")
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert student.num_model_evaluations(3) == 3
    card = (folder / "README.md").read_text()
    assert "consistency distillation (Song et al. 2023)" in card and "8 levels of its teacher's ODE" in card
    # diffusion-sample takes a step count the record does not list, and samples it as the pipeline does
    args = ["--model", str(folder), "--num-images", "2", "--steps", "3", "--class", "dog", "--out", str(tmp_path / "s")]
    assert cli.sample_main(args) == 0
    expected = student(2, 3, seed=0, class_labels="dog")
    for i in range(2):
        written = Image.open(tmp_path / "s" / f"{i}.png")
        np.testing.assert_array_equal(np.asarray(written), np.asarray(expected[i]))
        assert (written.text["steps"], written.text["nfe"], written.text["sampler"]) == ("3", "3", "consistency")


def test_a_resumed_consistency_run_ends_with_the_uninterrupted_runs_weights(tmp_path, tiny_conditional_model):
    Trainer(consistency_config(tmp_path, tiny_conditional_model, "whole")).train()
    assert Trainer(consistency_config(tmp_path, tiny_conditional_model, "split")).train(stop_at_step=3) is None
    Trainer(consistency_config(tmp_path, tiny_conditional_model, "split")).train()
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name, tensor in whole.items():
        assert torch.equal(split[name], tensor), name


def test_twenty_steps_reduce_the_consistency_loss_on_a_fixed_batch(tmp_path, tiny_conditional_model):
    config = consistency_config(tmp_path, tiny_conditional_model)
    teacher = open_teacher(config, torch.device("cpu"))
    config = student_settings(config, teacher)
    distill = Distillation(teacher, config, 20, tmp_path / "out")
    student = UNet(dataclasses.replace(teacher.unet.config, guidance_embedding=True)).eval()
    student.load_state_dict(teacher.unet.state_dict(), strict=False)
    schedule = NoiseSchedule(scheduler_config(config))
    x0 = torch.linspace(-1, 1, 4 * 64).reshape(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 0, 1])

    def loss() -> torch.Tensor:  # the same draws every time: a fixed batch, levels and noise
        return distill.loss(student, schedule, x0, labels, torch.Generator().manual_seed(0), 0)

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    first = loss().item()
    for _ in range(20):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.4 * first, (first, loss().item())  # 0.24 of the first when written


@pytest.mark.parametrize(
    "method, flag, message",
    [
        ("consistency", "distill_start_steps", "--distill-start-steps has no effect with --distill-method consistency"),
        ("consistency", "distill_end_steps", "--distill-end-steps has no effect with --distill-method consistency"),
        ("consistency", "distill_keep_steps", "--distill-keep-steps has no effect with --distill-method consistency"),
        ("progressive", "distill_levels", "--distill-levels has no effect with --distill-method progressive"),
    ],
)
def test_the_other_methods_flags_are_refused_in_one_line(tmp_path, tiny_conditional_model, method, flag, message):
    config = consistency_config(tmp_path, tiny_conditional_model, distill_method=method, distill_start_steps=4)
    with pytest.raises(ValueError, match=message) as error:
        Trainer(config, explicit={flag})
    assert "\n" not in str(error.value)


def test_levels_outside_the_schedule_are_refused():
    with pytest.raises(ValueError, match=r"--distill-levels must be in \[1, 1000\] \(--num-train-timesteps\), got 0"):
        TrainConfig(distill_from="x", distill_method="consistency", distill_levels=0)


def test_sample_grids_use_the_consistency_sampler_at_its_default_steps(tmp_path, tiny_conditional_model):
    Trainer(consistency_config(tmp_path, tiny_conditional_model, sample_every=3, num_samples=4)).train()
    grids = {p.name: Image.open(p) for p in (tmp_path / "out" / "samples").iterdir()}
    assert sorted(grids) == ["step-3.png", "step-6.png"]
    assert {(g.text["steps"], g.text["sampler"]) for g in grids.values()} == {("4", "consistency")}


def test_with_one_level_the_target_is_the_guided_teachers_own_x0_and_the_loss_its_distance(
    tmp_path, tiny_conditional_model
):
    """K = 1: every pair is (T - 1, the clean image), where the teacher's DDIM step lands on its own x̂_0 (ᾱ = 1)
    and the boundary condition makes that the target; the loss is then recomputed here from the same draws."""
    config = consistency_config(tmp_path, tiny_conditional_model, distill_levels=1, cond_drop_prob=0.0)
    teacher = open_teacher(config, torch.device("cpu"))
    config = student_settings(config, teacher)
    assert consistency_steps(config) == (1,)
    distill = Distillation(teacher, config, 4, tmp_path / "out")
    torch.manual_seed(3)
    student = UNet(dataclasses.replace(teacher.unet.config, guidance_embedding=True)).eval()
    schedule = NoiseSchedule(scheduler_config(config))
    x0, labels = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8), torch.tensor([0, 1])
    with torch.no_grad():
        loss = distill.loss(student, schedule, x0, labels, torch.Generator().manual_seed(0), 0)
        g = torch.Generator().manual_seed(0)
        torch.rand(2, generator=g)  # label dropout (p = 0: none dropped)
        w = 1 + torch.rand(2, generator=g)  # in [1, 2]
        noise = torch.randn(x0.shape, generator=g)
        assert torch.randint(0, 1, (2,), generator=g).tolist() == [0, 0]
        bar = schedule.alphas_cumprod[999].float()
        z = bar.sqrt() * x0 + (1 - bar).sqrt() * noise
        t = torch.tensor([999, 999])
        null = torch.full_like(labels, 2)
        eps_u, eps_c = teacher.unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null, labels])).chunk(2)
        eps = eps_u + w.reshape(-1, 1, 1, 1) * (eps_c - eps_u)
        target = (z - (1 - bar).sqrt() * eps) / bar.sqrt()  # the teacher's x̂_0 (ε-prediction)
        v = student(z, t, labels, guidance_scale=w)
        x_hat = bar.sqrt() * z - (1 - bar).sqrt() * v  # f = α z - σ v̂
        expected = (x_hat - target).square().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert loss.item() > 1e-3  # a real distance, not a vacuous zero
