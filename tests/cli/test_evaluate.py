"""python -m diffusion.evaluate / diffusion-evaluate: printed labels, the JSON file, and one-line errors."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffusion import cli
from diffusion.metrics import EXTRACTORS
from diffusion.schedulers import SCHEDULERS

ROOT = Path(__file__).resolve().parents[2]


def test_module_entry_prints_labelled_numbers_and_writes_the_json(
    tiny_model, tiny_classifier, reference_folder, tmp_path
):
    out = tmp_path / "results" / "fd.json"
    command = [sys.executable, "-m", "diffusion.evaluate", "--model", str(tiny_model), "--reference"]
    command += [str(reference_folder), "--num-images", "8", "--steps", "2", "--scheduler", "ddim", "--seed", "3"]
    command += ["--extractor-path", str(tiny_classifier), "--batch-size", "4", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"FD@8 = \d+\.\d{4}", lines[0]), lines
    assert re.fullmatch(r"KID@8 = -?\d+\.\d{6} ± \d+\.\d{6} \(100 subsets of 4\)", lines[1]), lines
    assert lines[2].startswith(f"features: diffusion.metrics.classifier.Classifier from {tiny_classifier}, 16-d")
    assert lines[3].startswith(
        f"images: 8 generated (ddim, 2 steps, 2 NFE, seeds 3..10) vs 8 from {reference_folder}, in "
    )
    assert lines[4] == f"wrote {out}"
    data = json.loads(out.read_text())
    assert set(data) == {
        "fd", "kid", "kid_std", "num_images", "num_reference", "extractor", "extractor_description", "feature_dim",
        "kid_subset_size", "kid_num_subsets", "label", "kid_label", "model", "reference", "scheduler", "steps", "nfe",
        "seed", "dtype", "device", "image_size", "channels", "background", "seconds",
    }  # fmt: skip
    assert data["background"] == "white"  # the tiny model's, as its model folder records it (absent: white)
    assert (data["label"], data["kid_label"], data["num_images"], data["num_reference"]) == ("FD@8", "KID@8", 8, 8)
    assert (data["extractor"], data["feature_dim"], data["scheduler"], data["steps"], data["seed"]) == (
        "classifier",
        16,
        "ddim",
        2,
        3,
    )
    assert all(math.isfinite(data[k]) for k in ("fd", "kid", "kid_std", "seconds")) and data["fd"] > 0
    assert f"{data['fd']:.4f}" in lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["fd.json"]  # no temporary file left behind


def test_help_lists_flags_samplers_and_extractors():
    text = cli.evaluate_parser().format_help()
    for flag in ("--model", "--reference", "--num-images", "--num-reference", "--scheduler", "--steps", "--extractor",
                 "--extractor-path", "--seed", "--batch-size", "--device", "--dtype", "--json"):  # fmt: skip
        assert flag in text
    assert all(name in text for name in [*SCHEDULERS, *EXTRACTORS])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "{tmp}/none"], r"reference folder .*none not found"),
        (["--num-images", "13"], r"reference folder .* has 12 image files, fewer than the 13 asked for"),
        (["--num-reference", "20"], r"has 12 image files, fewer than the 20 asked for"),
        (["--num-images", "1"], r"error: --num-images must be an integer >= 2"),
        (["--seed", "-5"], r"error: --seed must be in \[0, 2\*\*64 - 4\] for 4 images, got -5$"),
        (
            ["--extractor", "fid"],
            "unknown extractor 'fid'; expected one of 'classifier', 'inception', 'efficientnet-lite0'",
        ),
        (["--extractor", "inception"], r"Inception-v3 weights not in torch hub's cache .* --extractor-path"),
        (["--extractor", "inception", "--extractor-path", "{tmp}/i.pth"], r"i\.pth not found; nothing is downloaded"),
        (["--scheduler", "nope"], "unknown scheduler 'nope'"),
        (["--model", "{tmp}/none"], "model folder .*none not found"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--json", "{tmp}"], "--json .* is a folder; give a file name such as"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    tiny_model, tiny_classifier, reference_folder, tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    base = ["--model", str(tiny_model), "--reference", str(reference_folder), "--num-images", "4", "--steps", "2"]
    if "--extractor" not in args:
        base += ["--extractor-path", str(tiny_classifier)]
    assert cli.evaluate_main(base + [a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-evaluate: error: "), err
    assert re.search(message, err[0]), err[0]


def test_too_few_reference_images_through_the_module_is_one_line(tiny_model, reference_folder):
    """In a fresh process logging goes to stderr, so this also proves nothing is logged before the check."""
    command = [sys.executable, "-m", "diffusion.evaluate", "--model", str(tiny_model), "--reference"]
    done = subprocess.run(
        [*command, str(reference_folder), "--num-images", "50"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"diffusion-evaluate: error: reference folder {reference_folder} has 12 image files, fewer than the 50 asked "
        "for; ask for fewer images or add more"
    ]


def test_an_rgb_model_with_the_grayscale_classifier_names_the_flags_to_change(tiny_rgb_model, tmp_path, capsys):
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    args = ["--model", str(tiny_rgb_model), "--reference", str(tmp_path), "--num-images", "4", "--steps", "2"]
    assert cli.evaluate_main(args) == 2
    assert capsys.readouterr().err == (
        "diffusion-evaluate: error: images have 3 channels but the classifier expects 1: this extractor cannot measure "
        "the model's 3-channel 8x16 images; pick another extractor ('inception' or 'efficientnet-lite0'), or a "
        "classifier trained on this data (bench/train_classifier.py) as --extractor-path\n"
    )
