"""`DiffusionPipeline` with a distilled model: the default step count, the student of each step count,
guidance folded into one pass, and what is refused (`diffusion.pipeline`, `diffusion.io.sampling_record`)."""

import logging

import pytest
import torch
from students import CLASSES, student_pipeline, student_scheduler

from diffusion import DiffusionPipeline
from diffusion.io.model_folder import read_model
from diffusion.io.sampling_record import SamplingRecord
from diffusion.models import UNet


def forwards(unet: UNet) -> tuple[list[tuple[int, object]], object]:
    """The (batch size, guidance_scale) of each forward of ``unet``; remove the handle after use."""
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs.get("guidance_scale")))

    return calls, unet.register_forward_pre_hook(record, with_kwargs=True)


def test_no_step_count_means_the_default_one_and_the_default_unet():
    pipe = student_pipeline()
    assert pipe.default_steps == 4
    implicit = pipe(num_images=2, seed=0, output_type="tensor")
    assert torch.equal(implicit, pipe(num_images=2, num_inference_steps=4, seed=0, output_type="tensor"))
    alone = DiffusionPipeline(pipe.unet, student_scheduler(), CLASSES)  # the default UNet, no record
    assert torch.equal(implicit, alone(num_images=2, num_inference_steps=4, seed=0, output_type="tensor"))
    assert pipe.num_model_evaluations() == 4 and pipe.num_model_evaluations(1) == 1


@pytest.mark.parametrize("steps", [1, 2])
def test_each_step_count_samples_with_its_own_student(steps):
    pipe = student_pipeline()
    call = dict(num_images=2, num_inference_steps=steps, seed=0, class_labels=[0, 2], output_type="tensor")
    own = DiffusionPipeline(pipe.step_unets[steps], student_scheduler(), CLASSES)(**call)
    assert torch.equal(pipe(**call), own)
    default_unet = DiffusionPipeline(pipe.unet, student_scheduler(), CLASSES)(**call)
    assert (own - default_unet).abs().max() > 0.01  # so the comparison above tells the students apart
    calls, handle = forwards(pipe.step_unets[steps])
    pipe.denoiser(2.0, num_inference_steps=steps)(torch.zeros(1, 1, 8, 8), torch.tensor(999), torch.tensor([1]))
    handle.remove()
    assert calls == [(1, 2.0)]


def test_a_step_count_the_model_was_not_trained_for_is_refused_in_one_line():
    pipe = student_pipeline()
    for call in (lambda: pipe(1, 3), lambda: pipe.num_model_evaluations(3), lambda: pipe.interpolate(0, 1, 2, 8)):
        with pytest.raises(ValueError, match=r"^this distilled model samples with 1, 2 or 4 steps; got \d \(num_in"):
            call()


def test_guidance_is_one_pass_with_w_as_an_input_and_varies_with_w():
    pipe = student_pipeline()
    calls, handle = forwards(pipe.unet)
    at = {w: pipe(2, seed=3, class_labels=["a", "c"], guidance_scale=w, output_type="tensor") for w in (1.0, 2.0, 4.0)}
    handle.remove()
    # One forward of the 2 images per step (no second branch), with w as the UNet's input; w = 1 needs none.
    assert calls == [(2, None)] * 4 + [(2, 2.0)] * 4 + [(2, 4.0)] * 4
    assert (at[1.0] - at[2.0]).abs().mean() > 0.01 and (at[2.0] - at[4.0]).abs().mean() > 0.01
    assert pipe.num_model_evaluations() == 4  # what is reported: one evaluation per step, guided or not
    calls, handle = forwards(pipe.unet)
    default = pipe(2, seed=3, class_labels=["a", "c"], output_type="tensor")  # DEFAULT_GUIDANCE_SCALE, 1.5
    pipe.sampling = SamplingRecord("progressive", (1, 2, 4), 4, (0.0, 4.0))  # a range that takes w = 0
    pipe(2, seed=3, class_labels=["a", "c"], guidance_scale=0.0, output_type="tensor")
    handle.remove()
    assert calls[:4] == [(2, 1.5)] * 4 and calls[4:] == [(2, None)] * 4  # w = 0: the null class, as before
    assert not torch.equal(default, at[2.0])


def test_rescale_and_a_scale_outside_the_trained_range_are_refused():
    pipe = student_pipeline()
    with pytest.raises(ValueError, match=r"^a guidance-distilled model folds guidance into one pass; guidance_resc"):
        pipe(1, class_labels=0, guidance_scale=2.0, guidance_rescale=0.5)
    for w in (0.5, 4.5):
        with pytest.raises(
            ValueError, match=r"^this guidance-distilled model was trained for guidance_scale in \[1, 4"
        ):
            pipe(1, class_labels=0, guidance_scale=w)
    narrow = student_pipeline()
    narrow.sampling = SamplingRecord("progressive", (1, 2, 4), 4, (2.0, 4.0))
    with pytest.raises(ValueError, match=r"guidance_scale in \[2, 4\]; got 1\.5$"):  # asked for: refused
        narrow(1, class_labels=0, guidance_scale=1.5)
    default = narrow(1, class_labels=0, seed=0, output_type="tensor")  # the default 1.5: the nearest scale, 2
    assert torch.equal(default, narrow(1, class_labels=0, seed=0, guidance_scale=2.0, output_type="tensor"))
    assert not torch.equal(default, narrow(1, class_labels=0, seed=0, guidance_scale=3.0, output_type="tensor"))


def test_inversion_runs_the_default_student_at_its_default_steps(tiny_pipeline):
    pipe = student_pipeline()
    calls, handle = forwards(pipe.unet)
    latents = pipe.invert(torch.full((1, 1, 8, 8), 0.5), fixed_point_iterations=0)
    handle.remove()
    assert latents.shape == (1, 1, 8, 8) and len(calls) == 4
    plain = forwards(tiny_pipeline.unet)  # an ordinary model inverts with 50 steps, as before
    tiny_pipeline.invert(torch.full((1, 1, 8, 8), 0.5), fixed_point_iterations=0)
    plain[1].remove()
    assert len(plain[0]) == 50


def test_to_moves_and_casts_every_student():
    pipe = student_pipeline().to(torch.bfloat16, memory_format=torch.channels_last)
    for unet in (pipe.unet, *pipe.step_unets.values()):
        assert unet.conv_in.weight.dtype == torch.bfloat16
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe(1, 2, seed=0, class_labels=1, guidance_scale=2.0, output_type="tensor").dtype == torch.float32


def test_a_guidance_distilled_model_is_not_exported_to_diffusers(tmp_path):
    pipe = student_pipeline()
    with pytest.raises(ValueError, match=r"^a guidance-distilled model takes the guidance scale as an input, which"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert not (tmp_path / "hf").exists()


def test_an_unguided_student_exports_its_default_weights_alone(tmp_path, caplog):
    pipe = student_pipeline(guided=False)
    with caplog.at_level(logging.WARNING, logger="diffusion"):
        pipe.save_pretrained(tmp_path / "hf", format="diffusers")
    assert "diffusers has no distilled models: exported the 4-step student alone" in caplog.text
    back = read_model(tmp_path / "hf")
    assert (back.sampling, back.step_unets) == (None, {})
    assert torch.equal(back.unet.conv_in.weight, pipe.unet.conv_in.weight)
