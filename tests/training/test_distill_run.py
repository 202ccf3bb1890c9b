"""A distillation run through the trainer (``train.py --distill-from``): rounds, the student model folder,
resume and refusals, on the tiny class-conditional model (`tiny_conditional_model`: 1 channel, 8x8, cat/dog)."""

import dataclasses
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_run import cat_dog_images, final_weights  # tests/training is on sys.path
from tiny_run import distill_config as tiny_distill_config

from diffusion.cli.common import given_flags
from diffusion.cli.train import train_parser
from diffusion.io.checkpoint import list_checkpoints
from diffusion.models import UNet, UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import TrainConfig, Trainer
from diffusion.training.distill_run import ROUNDS, Rounds


def distill_config(tmp_path: Path, teacher: Path, out: str = "out", **overrides) -> TrainConfig:
    """Rounds of 4, 2 and 1 student steps, 2 optimiser steps each; the model keeps 1 and 2."""
    rounds = {"distill_start_steps": 4, "distill_end_steps": 1, "distill_keep_steps": 2}
    return tiny_distill_config(tmp_path, teacher, out, **(rounds | overrides))


def test_rounds_share_the_steps_and_each_has_its_own_learning_rate_schedule():
    config = TrainConfig(distill_from="x", distill_start_steps=8, warmup_steps=2, lr_schedule="cosine")
    rounds = Rounds.of(config, 10)
    assert rounds.steps == (8, 4, 2, 1)
    assert rounds.starts == [0, 2, 5, 7]
    assert [rounds.index(s) for s in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [rounds.lr_factor(s, config) for s in (0, 1, 2, 3, 5, 6)] == [0.5, 1.0, 0.5, 1.0, 0.5, 1.0]
    plain = TrainConfig(distill_from="x", distill_start_steps=2, warmup_steps=0, lr_schedule="cosine")
    cosine = Rounds.of(plain, 8)  # rounds of 2 and 1 student steps, 4 optimiser steps each
    assert [cosine.lr_factor(s, plain) for s in range(8)] == pytest.approx([1, 0.8536, 0.5, 0.1464] * 2, abs=1e-4)
    with pytest.raises(ValueError, match="a run of 3 steps cannot hold the 4 distillation rounds: raise --max-steps"):
        Rounds.of(config, 3)


def test_a_distillation_run_writes_every_round_and_a_student_that_samples_with_its_kept_steps(
    tmp_path, tiny_conditional_model
):
    teacher = DiffusionPipeline.from_pretrained(tiny_conditional_model)
    before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    folder = Trainer(distill_config(tmp_path, tiny_conditional_model)).train()

    student = DiffusionPipeline.from_pretrained(folder)
    assert student.sampling.steps == (1, 2) and student.sampling.default_steps == 2
    assert student.sampling.method == "progressive" and student.sampling.guidance_range == (1.0, 2.0)
    assert student.unet.config.guidance_embedding and student.unet.config.num_classes == 2
    config = student.scheduler.config
    assert (type(student.scheduler).__name__, config.prediction_type, config.timestep_spacing) == (
        "DDIMScheduler",
        "v_prediction",
        "trailing",
    )
    assert sorted(p.name for p in (tmp_path / "out" / ROUNDS).iterdir()) == ["steps-2", "steps-4"]
    # the 2-step student of the model is the one its round wrote; the round's folder samples with 2 steps
    round_2 = DiffusionPipeline.from_pretrained(tmp_path / "out" / ROUNDS / "steps-2")
    assert round_2.sampling.steps == (2,)
    for name, tensor in round_2.unet.state_dict().items():
        assert torch.equal(student.unet.state_dict()[name], tensor), name
    a = student(num_images=2, seed=0, class_labels="cat", output_type="tensor")
    b = round_2(num_images=2, seed=0, class_labels="cat", output_type="tensor")
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)
    # the guidance embedding was trained: w changes the prediction
    assert student.unet.guidance_embed.linear_2.weight.abs().max() > 0
    # the teacher's folder is untouched
    after = DiffusionPipeline.from_pretrained(tiny_conditional_model).unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("stop", [3, 4])  # inside round 1; at the first step of round 2
def test_a_resumed_distillation_ends_with_the_uninterrupted_runs_weights(tmp_path, tiny_conditional_model, stop):
    Trainer(distill_config(tmp_path, tiny_conditional_model, "whole")).train()
    assert Trainer(distill_config(tmp_path, tiny_conditional_model, "split")).train(stop_at_step=stop) is None
    Trainer(distill_config(tmp_path, tiny_conditional_model, "split")).train()
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name, tensor in whole.items():
        assert torch.equal(split[name], tensor), name


def test_the_student_takes_the_teachers_unet_and_schedule(tmp_path, tiny_conditional_model):
    trainer = Trainer(distill_config(tmp_path, tiny_conditional_model))
    teacher = UNet.from_pretrained(tiny_conditional_model / "unet").config
    assert trainer.unet_config.guidance_embedding and not teacher.guidance_embedding
    assert trainer.unet_config.sample_size == teacher.sample_size == (8, 8)
    assert (trainer.config.channels, trainer.config.class_cond, trainer.config.prediction_type) == (
        1,
        True,
        "v_prediction",
    )


@pytest.mark.parametrize(
    "overrides, explicit, message",
    [
        ({"distill_from": None}, {"distill_start_steps"}, "--distill-start-steps has no effect without --distill-from"),
        ({}, {"base_channels"}, "--base-channels has no effect with --distill-from: the student has its teacher's"),
        ({}, {"prediction_type"}, "--prediction-type has no effect with --distill-from"),
        ({"max_steps": 2}, set(), "a run of 2 steps cannot hold the 3 distillation rounds"),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(
    tmp_path, tiny_conditional_model, overrides, explicit, message
):
    with pytest.raises(ValueError, match=message):
        Trainer(distill_config(tmp_path, tiny_conditional_model, **overrides), explicit=explicit)


def test_data_with_other_classes_is_refused(tmp_path, tiny_conditional_model):
    config = distill_config(tmp_path, tiny_conditional_model)
    (tmp_path / "data" / "cat").rename(tmp_path / "data" / "bird")
    with pytest.raises(ValueError, match=r"the data's classes \(bird, dog\) are not the teacher's \(cat, dog\)"):
        Trainer(config)


def test_a_run_with_sample_grids_writes_one_per_round_with_its_students_steps(tmp_path, tiny_conditional_model):
    Trainer(distill_config(tmp_path, tiny_conditional_model, sample_every=2, num_samples=4)).train()
    grids = {p.name: Image.open(p) for p in (tmp_path / "out" / "samples").iterdir()}
    assert sorted(grids) == ["step-2.png", "step-4.png", "step-6.png"]
    assert [grids[f"step-{s}.png"].text["steps"] for s in (2, 4, 6)] == ["4", "2", "1"]
    assert grids["step-2.png"].text["sampler"] == "ddim"


def test_the_run_length_cannot_change_on_resume(tmp_path, tiny_conditional_model):
    assert Trainer(distill_config(tmp_path, tiny_conditional_model)).train(stop_at_step=3) is None
    with pytest.raises(ValueError, match=r"--max-steps 6 -> 9"):
        Trainer(distill_config(tmp_path, tiny_conditional_model, max_steps=9)).train()


def test_a_missing_round_folder_is_named_with_the_way_out(tmp_path, tiny_conditional_model):
    assert Trainer(distill_config(tmp_path, tiny_conditional_model)).train(stop_at_step=5) is None  # in round 2
    shutil.rmtree(tmp_path / "out" / ROUNDS / "steps-2")  # its teacher, and a student the model keeps
    with pytest.raises(FileNotFoundError, match=r"steps-2 is missing: it holds a finished round's student, which"):
        Trainer(distill_config(tmp_path, tiny_conditional_model)).train()
    for name in ("step-5", "step-4"):  # the way out: a checkpoint from before that round ended rewrites it
        shutil.move(tmp_path / "out" / "checkpoints" / name, tmp_path / name)
    assert Trainer(distill_config(tmp_path, tiny_conditional_model)).train() == tmp_path / "out" / "model"
    assert (tmp_path / "out" / ROUNDS / "steps-2" / "unet").is_dir()


def test_the_model_cards_command_is_accepted_by_train_py(tmp_path, tiny_conditional_model):
    folder = Trainer(distill_config(tmp_path, tiny_conditional_model)).train()
    card = (folder / "README.md").read_text()
    command = card.split("```bash\n")[1].split("\n```")[0].replace("\\\n", " ")
    argv = shlex.split(command)[2:]
    assert "--distill-from" in argv and "--image-size" not in argv and "--class-cond" not in argv
    args = vars(train_parser().parse_args(argv))
    unet = {f.name for f in dataclasses.fields(UNetConfig)}
    config = TrainConfig(**{k: v for k, v in args.items() if k not in unet})
    Trainer(config, explicit=given_flags(train_parser, argv))  # refuses nothing
    assert "progressive distillation (Salimans & Ho 2022)" in card and "samples with 1, 2 steps" in card


def test_a_distilled_model_is_refused_as_a_teacher_and_its_checkpoints_as_models(tmp_path, tiny_conditional_model):
    folder = Trainer(distill_config(tmp_path, tiny_conditional_model)).train()
    with pytest.raises(ValueError, match="is already a distilled model \\(progressive, steps 1, 2\\): distil the"):
        Trainer(distill_config(tmp_path, folder, out="again"))
    checkpoint = list_checkpoints(tmp_path / "out")[-1][1]
    with pytest.raises(ValueError, match="is a checkpoint of a distillation run, whose student samples only"):
        DiffusionPipeline.from_pretrained(checkpoint)


def test_a_default_guidance_outside_the_range_takes_the_nearest_scale(tmp_path, tiny_conditional_model):
    config = distill_config(tmp_path, tiny_conditional_model, distill_guidance_min=2.0, distill_guidance_max=3.0)
    student = DiffusionPipeline.from_pretrained(Trainer(config).train())
    default = student(num_images=1, seed=0, class_labels="cat", output_type="tensor")
    assert torch.equal(
        default, student(num_images=1, seed=0, class_labels="cat", guidance_scale=2.0, output_type="tensor")
    )
    with pytest.raises(ValueError, match="samples with the sampler it was trained for \\(ddim, eta 0\\)"):
        student(num_images=1, scheduler="heun")


def test_short_schedules_train_without_distillation_and_odd_grids_are_refused(tmp_path):
    assert TrainConfig(num_train_timesteps=50).distill_start_steps == 32  # unused without --distill-from
    config = TrainConfig(distill_from="x", num_train_timesteps=1000, distill_start_steps=96, distill_end_steps=3)
    with pytest.raises(ValueError, match="the timesteps of 96 and 48 steps of the teacher's 1000 do not nest"):
        Rounds.of(config, 10)
    with pytest.raises(ValueError, match="guidance_embedding is for a guidance-distilled student"):
        Trainer(
            TrainConfig(data=str(cat_dog_images(tmp_path / "d")), out=str(tmp_path / "o"), max_steps=1),
            {"guidance_embedding": True},
        )
