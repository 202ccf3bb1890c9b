"""diffusion-sample, -evaluate and -export with a distilled model: its own step counts by default, a count it
was not trained for refused in one line, guidance reported as one pass, and no diffusers export of w."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from students import student_pipeline

from diffusion import DiffusionPipeline, cli
from diffusion.metrics.classifier import Classifier

ROOT = Path(__file__).resolve().parents[2]
AGREEMENT_FLOORS = {4: 0.9, 2: 0.9, 1: 0.9}  # steps -> share of 100 images (measured: 94%, 95%, 96%)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "model"
    student_pipeline().save_pretrained(path)
    return path


def test_a_student_samples_at_its_default_steps_with_its_own_sampler(student, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.sample_main(["--model", str(student), "--num-images", "3", "--out", str(out)]) == 0
    pipe = DiffusionPipeline.from_pretrained(student)
    expected = pipe(3, seed=0, class_labels="random")  # 4 steps of DDIM, w 1.5, the classes the seeds draw
    for i, image in enumerate(expected):
        written = Image.open(out / f"{i}.png")
        np.testing.assert_array_equal(np.asarray(written), np.asarray(image))
        assert {k: written.text[k] for k in ("steps", "nfe", "sampler", "guidance_scale")} == {
            "steps": "4",
            "nfe": "4",
            "sampler": "ddim",
            "guidance_scale": "1.5",
        }
    assert "(ddim, 4 steps, 4 NFE, guidance 1.5: in one pass (guidance-distilled))" in capsys.readouterr().out


def test_another_trained_step_count_samples_with_its_student(student, tmp_path):
    args = ["--model", str(student), "--num-images", "2", "--steps", "2", "--class", "b", "--out", str(tmp_path)]
    assert cli.sample_main(args) == 0
    pipe = DiffusionPipeline.from_pretrained(student)
    expected = DiffusionPipeline(pipe.step_unets[2], pipe.scheduler, pipe.class_names)(2, 2, seed=0, class_labels="b")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "1.png")), np.asarray(expected[1]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "3"], "this distilled model samples with 1, 2 or 4 steps; got 3 (--steps)"),
        (
            ["--interpolate", "0", "1", "--steps", "8"],
            "this distilled model samples with 1, 2 or 4 steps; got 8 (--steps)",
        ),
        (
            ["--class", "a", "--guidance-rescale", "0.5"],
            "a guidance-distilled model folds guidance into one pass; --guidance-rescale is not supported",
        ),
        (
            ["--class", "a", "--guidance-scale", "6"],
            "this guidance-distilled model was trained for --guidance-scale in [1, 4]; got 6",
        ),
    ],
)
def test_what_a_student_cannot_do_is_one_line_and_status_2(student, tmp_path, capsys, args, message):
    assert cli.sample_main(["--model", str(student), "--out", str(tmp_path / "o"), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"diffusion-sample: error: {message}"]
    assert not (tmp_path / "o").exists()


def test_interpolation_defaults_to_the_students_steps(student, tmp_path, capsys):
    args = ["--model", str(student), "--interpolate", "0", "1", "--frames", "2", "--out", str(tmp_path)]
    assert cli.sample_main(args) == 0
    assert Image.open(tmp_path / "interpolation.png").text["steps"] == "4"


def test_evaluate_measures_a_student_at_its_default_steps(student, tiny_classifier, reference_folder, tmp_path, capsys):
    args = ["--model", str(student), "--reference", str(reference_folder), "--num-images", "4", "--device", "cpu"]
    args += ["--extractor-path", str(tiny_classifier), "--json", str(tmp_path / "fd.json")]
    assert cli.evaluate_main(args) == 0
    assert "(ddim, 4 steps, 4 NFE, seeds 0..3)" in capsys.readouterr().out
    assert {k: json.loads((tmp_path / "fd.json").read_text())[k] for k in ("steps", "nfe")} == {"steps": 4, "nfe": 4}
    assert cli.evaluate_main([*args, "--steps", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "diffusion-evaluate: error: this distilled model samples with 1, 2 or 4 steps; got 3 (--steps)"
    )


def test_export_refuses_to_write_a_guidance_distilled_model_for_diffusers(student, tmp_path, capsys):
    assert cli.export_main(["--model", str(student), "--to", "diffusers", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-export: error: a guidance-distilled model takes the guidance")
    assert not (tmp_path / "hf").exists()
    assert cli.export_main(["--model", str(student), "--to", "pixel-diffusion", "--out", str(tmp_path / "own")]) == 0
    assert (
        DiffusionPipeline.from_pretrained(tmp_path / "own").sampling
        == DiffusionPipeline.from_pretrained(student).sampling
    )


def test_the_shipped_fast_model_samples_out_of_the_box_and_draws_the_class_asked_for(tmp_path):
    """`sample.py --model fashion-mnist-fast` with no other flag: its 4-step student, one pass per step; the
    shipped classifier names the requested class for most of 10 images per class at 4, 2 and 1 steps
    (docs/benchmarks.md, "Few-step generation", has the full measurement)."""
    assert cli.sample_main(["--model", "fashion-mnist-fast", "--num-images", "2", "--out", str(tmp_path)]) == 0
    png = Image.open(tmp_path / "0.png")
    assert (png.size, png.text["steps"], png.text["nfe"], png.text["sampler"]) == ((28, 28), "4", "4", "ddim")
    pipe = DiffusionPipeline.from_pretrained("fashion-mnist-fast", dtype=torch.bfloat16)
    classifier = Classifier.from_pretrained(ROOT / "assets" / "fashion-mnist-classifier").eval()
    labels = torch.arange(10).repeat_interleave(10)
    for steps, floor in AGREEMENT_FLOORS.items():
        images = pipe(100, steps, class_labels=labels, seed=0, output_type="tensor")
        with torch.inference_mode():
            predicted = classifier(images * 2 - 1).argmax(dim=1)
        assert (predicted == labels).float().mean().item() >= floor, steps
