"""sample.py / diffusion-sample: files, metadata, grid, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion import cli
from diffusion.models import UNet, UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=3,
        sample_size=(8, 16),
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        norm_groups=8,
    )
    path = tmp_path_factory.mktemp("model") / "m"
    DiffusionPipeline(UNet(config), DDIMScheduler()).save_pretrained(path)
    return path


def test_writes_one_png_per_seed_with_metadata_and_a_grid(model, tmp_path, capsys):
    out, grid = tmp_path / "out", tmp_path / "grids" / "g.png"
    code = cli.sample_main(
        [
            "--model",
            str(model),
            "--num-images",
            "5",
            "--steps",
            "3",
            "--seed",
            "7",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--grid",
            str(grid),
            "--scheduler",
            "ddpm",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in range(7, 12))
    image = Image.open(out / "9.png")
    assert image.mode == "RGB" and image.size == (16, 8)
    assert {k: image.text[k] for k in ("seed", "sampler", "steps")} == {"seed": "9", "sampler": "ddpm", "steps": "3"}
    assert Image.open(grid).size == (3 * 18 + 2, 2 * 10 + 2)  # 3 columns x 2 rows of 16x8 with 2px padding
    captured = capsys.readouterr()
    assert f"wrote 5 images to {out}/ and a grid to {grid} in " in captured.out
    assert "sampling: 100%" in captured.err  # the tqdm bar


@pytest.mark.parametrize("scheduler, karras, nfe", [("heun", True, 5), ("dpmsolver++3m", False, 3), ("unipc", True, 3)])
def test_fast_samplers_and_karras_sigmas_from_the_command_line(model, tmp_path, capsys, scheduler, karras, nfe):
    args = [
        "--model",
        str(model),
        "--num-images",
        "2",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "--scheduler",
        scheduler,
    ]
    assert cli.sample_main(args + (["--karras"] if karras else [])) == 0
    image = Image.open(tmp_path / "1.png")
    assert {k: image.text.get(k) for k in ("sampler", "steps", "nfe", "use_karras_sigmas")} == {
        "sampler": scheduler,
        "steps": "3",
        "nfe": str(nfe),
        "use_karras_sigmas": "True" if karras else None,
    }
    karras_text = ", Karras σ" if karras else ""
    assert f"({scheduler}{karras_text}, 3 steps, {nfe} NFE)" in capsys.readouterr().out


def test_seed_ranges_match_single_seeds(model, tmp_path):
    cli.sample_main(["--model", str(model), "--seeds", "3-4,9", "--steps", "2", "--out", str(tmp_path / "a")])
    cli.sample_main(
        ["--model", str(model), "--seed", "9", "--num-images", "1", "--steps", "2", "--out", str(tmp_path / "b")]
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["3.png", "4.png", "9.png"]
    assert (tmp_path / "a" / "9.png").read_bytes() == (tmp_path / "b" / "9.png").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope"], "model folder .*nope not found"),
        (["--model", "{tmp}"], "is not a model folder"),
        (["--num-images", "0"], "--num-images must be a positive integer, got 0"),
        (["--steps", "0"], r"num_inference_steps must be in \[1, 1000\]"),
        (["--steps", "5000"], r"num_inference_steps must be in \[1, 1000\] \(num_train_timesteps\), got 5000"),
        (["--scheduler", "lms"], r"unknown scheduler 'lms'; expected one of 'ddpm', 'ddim', 'dpmsolver\+\+'"),
        (["--out", "{tmp}/file/sub"], "output folder .*file/sub is not writable"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--eta", "-2"], "eta must be >= 0, got -2.0"),
        (["--karras"], "the ddim scheduler has no setting use_karras_sigmas"),
        (["--scheduler", "euler", "--eta", "0.5"], "the euler scheduler has no setting eta"),
    ],
)
def test_bad_input_is_one_line_and_status_2(model, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["--model", str(model), "--out", str(tmp_path / "o"), "--steps", "2", "--num-images", "1"]
    assert cli.sample_main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-sample: error: ")
    assert __import__("re").search(message, err[0]), err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_refused(model, tmp_path, capsys):
    assert cli.sample_main(["--model", str(model), "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda was asked for but no CUDA device is available" in capsys.readouterr().err


def test_truncated_weights_through_the_script_give_no_traceback(model, tmp_path):
    broken = tmp_path / "broken"
    DiffusionPipeline.from_pretrained(model).save_pretrained(broken)
    weights = broken / "unet" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    done = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--model", str(broken), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a readable safetensors file" in done.stderr
    helped = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--help"], capture_output=True, text=True)
    for flag in (
        "--model",
        "--num-images",
        "--steps",
        "--scheduler",
        "--eta",
        "--karras",
        "--seed",
        "--seeds",
        "--batch-size",
        "--out",
        "--grid",
        "--device",
        "--dtype",
    ):
        assert flag in helped.stdout


def test_grid_path_that_is_a_folder_is_refused_before_sampling(model, tmp_path, capsys):
    assert cli.sample_main(["--model", str(model), "--out", str(tmp_path / "o"), "--grid", str(tmp_path)]) == 2
    assert "is a folder; give a file name such as" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_without_model_flag_the_shipped_model_is_used(tmp_path, capsys):
    assert cli.sample_main(["--out", str(tmp_path), "--num-images", "2", "--steps", "2"]) == 0
    images = [Image.open(tmp_path / f"{seed}.png") for seed in (0, 1)]
    assert [(im.mode, im.size) for im in images] == [("L", (28, 28))] * 2
    assert images[0].text["model"] == "shipped: assets/fashion-mnist"
