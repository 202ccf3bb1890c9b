"""sample.py / diffusion-sample: files, metadata, grid, and one-line errors."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion import cli
from diffusion.cli import sample_files
from diffusion.denoiser import Denoiser
from diffusion.io import model_folder
from diffusion.models import UNet
from diffusion.pipeline import DiffusionPipeline

ROOT = Path(__file__).resolve().parents[2]


def test_writes_one_png_per_seed_with_metadata_and_a_grid(tiny_rgb_model, tmp_path, capsys):
    out, grid = tmp_path / "out", tmp_path / "grids" / "g.png"
    code = cli.sample_main(
        [
            "--model",
            str(tiny_rgb_model),
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
def test_fast_samplers_and_karras_sigmas_from_the_command_line(
    tiny_rgb_model, tmp_path, capsys, scheduler, karras, nfe
):
    args = [
        "--model",
        str(tiny_rgb_model),
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


def test_seed_ranges_match_single_seeds(tiny_rgb_model, tmp_path):
    cli.sample_main(["--model", str(tiny_rgb_model), "--seeds", "3-4,9", "--steps", "2", "--out", str(tmp_path / "a")])
    cli.sample_main(
        [
            "--model",
            str(tiny_rgb_model),
            "--seed",
            "9",
            "--num-images",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["3.png", "4.png", "9.png"]
    assert (tmp_path / "a" / "9.png").read_bytes() == (tmp_path / "b" / "9.png").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope"], "model folder .*nope not found"),
        (["--model", "{tmp}"], "is not a model folder"),
        (["--num-images", "0"], "--num-images must be a positive integer, got 0"),
        (["--steps", "0"], r"^diffusion-sample: error: --steps must be in \[1, 1000\]"),
        (["--steps", "5000"], r"--steps must be in \[1, 1000\] \(num_train_timesteps\), got 5000"),
        (["--scheduler", "lms"], r"unknown scheduler 'lms'; expected one of 'ddpm', 'ddim', 'dpmsolver\+\+'"),
        (["--out", "{tmp}/file/sub"], "output folder .*file/sub is not writable"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (
            ["--scheduler", "ddim", "--eta", "-2"],
            r"error: --eta must be >= 0, got -2.0$",
        ),
        (
            ["--scheduler", "ddim", "--eta", "2"],
            r"error: --eta must be at most 1 \(DDPM's noise; more has no meaning in eq. 12\), got 2.0$",
        ),
        (
            ["--karras"],
            r"--karras needs a σ-space sampler \(dpmsolver\+\+, euler, euler-ancestral, heun, unipc\), but the "
            r"sampler is ddim \(the model's default\)$",
        ),
        (
            ["--scheduler", "euler", "--eta", "0.5"],
            "--eta is DDIM's stochasticity, but the sampler is euler; add --sch",
        ),
        (["--seeds", "0-3"], r"--seeds gives the images \(4 seeds\); leave out --num-images"),
        (["--mask", "m.png"], "--mask edits an image: give --init-image too"),
        (["--strength", "0.5"], "--strength edits an image: give --init-image too"),
        (["--jump-length", "3"], "--resample and --jump-length are RePaint settings for inpainting: give --mask too"),
        (["--resample", "1"], "--resample and --jump-length are RePaint settings for inpainting: give --mask too"),
        (["--interpolate", "0", "1", "--grid", "g.png"], r"--interpolate A B .*; leave out --grid, --num-images$"),
        (["--frames", "4"], "--frames is the frame count of --interpolate: give --interpolate too"),
        (["--model", "strength"], r"error: model folder strength not found$"),  # a value, not a flag name
        (
            ["--guidance-rescale", "0.5"],
            r"error: guidance needs a class-conditional model; this model is unconditional$",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(tiny_rgb_model, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["--model", str(tiny_rgb_model), "--out", str(tmp_path / "o"), "--steps", "2", "--num-images", "1"]
    assert cli.sample_main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-sample: error: ")
    assert __import__("re").search(message, err[0]), err[0]
    assert not (tmp_path / "o").exists()  # a failed command leaves no empty output folder behind


def test_a_full_disk_while_writing_images_is_one_line(tiny_rgb_model, tmp_path, capsys, monkeypatch):
    def full(image, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("diffusion.cli.sample_files.save_png", full)
    assert (
        cli.sample_main(
            ["--model", str(tiny_rgb_model), "--out", str(tmp_path / "o"), "--steps", "2", "--num-images", "1"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()  # after the progress bar
    assert "Traceback" not in "\n".join(err) and err[-1:] == [
        f"diffusion-sample: error: No space left on device ({tmp_path / 'o' / '0.png'}); free space or fix "
        "permissions, then run again"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_refused(tiny_rgb_model, tmp_path, capsys):
    assert cli.sample_main(["--model", str(tiny_rgb_model), "--device", "cuda", "--out", str(tmp_path)]) == 2
    message = "--device cuda was asked for but this machine has no CUDA device; use --device cpu"
    assert message in capsys.readouterr().err


def test_truncated_weights_through_the_script_give_no_traceback(tiny_rgb_model, tmp_path):
    broken = tmp_path / "broken"
    DiffusionPipeline.from_pretrained(tiny_rgb_model).save_pretrained(broken)
    weights = broken / "unet" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    done = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--model", str(broken), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "broken is damaged: " in done.stderr
    assert "model.safetensors is truncated or damaged: 100 bytes" in done.stderr
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


def test_grid_path_that_is_a_folder_is_refused_before_sampling(tiny_rgb_model, tmp_path, capsys):
    assert cli.sample_main(["--model", str(tiny_rgb_model), "--out", str(tmp_path / "o"), "--grid", str(tmp_path)]) == 2
    assert "is a folder; give a file name such as" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_without_model_flag_the_shipped_model_is_used(tmp_path, capsys):
    assert cli.sample_main(["--out", str(tmp_path), "--num-images", "2", "--steps", "2"]) == 0
    images = [Image.open(tmp_path / f"{seed}.png") for seed in (0, 1)]
    assert [(im.mode, im.size) for im in images] == [("L", (28, 28))] * 2
    assert images[0].text["model"] == "shipped: assets/fashion-mnist"


# ----- class conditioning and editing from the command line -----


def test_class_all_writes_one_grid_row_per_class(tiny_conditional_model, tmp_path):
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_conditional_model),
        "--steps",
        "2",
        "--out",
        str(out),
        "--class",
        "all",
        "--num-images",
        "3",
    ]
    assert cli.sample_main([*args, "--grid", str(tmp_path / "grid.png"), "--seed", "10"]) == 0
    assert sorted(int(p.stem) for p in out.glob("*.png")) == list(range(10, 16))  # 3 per class
    classes = [Image.open(out / f"{seed}.png").text["class"] for seed in range(10, 16)]
    assert classes == ["cat"] * 3 + ["dog"] * 3
    assert Image.open(out / "10.png").text["guidance_scale"] == str(cli.DEFAULT_GUIDANCE_SCALE)
    assert Image.open(tmp_path / "grid.png").size == (3 * 10 + 2, 2 * 10 + 2)  # 3 columns, 2 rows


def test_class_per_image_and_guidance_scale(tiny_conditional_model, tmp_path):
    out = tmp_path / "o"
    base = ["--model", str(tiny_conditional_model), "--steps", "2", "--num-images", "3", "--out", str(out)]
    assert cli.sample_main([*base, "--class", "dog,0,cat", "--guidance-scale", "0"]) == 0
    assert [Image.open(out / f"{i}.png").text["class"] for i in range(3)] == ["dog", "0", "cat"]
    assert Image.open(out / "0.png").text["guidance_scale"] == "0.0"
    unconditional = tmp_path / "u"
    assert cli.sample_main([*base[:-1], str(unconditional), "--class", "none"]) == 0
    for i in range(3):  # guidance 0 is the unconditional model
        assert Image.open(out / f"{i}.png").tobytes() == Image.open(unconditional / f"{i}.png").tobytes()


def test_init_image_mask_and_strength(tiny_conditional_model, tmp_path):
    rng = torch.Generator().manual_seed(0)
    picture = Image.fromarray((torch.rand(8, 8, generator=rng) * 255).byte().numpy(), mode="L")
    picture.save(tmp_path / "in.png")
    mask = Image.new("L", (8, 8))
    mask.paste(255, (0, 0, 4, 8))  # regenerate the left half
    mask.save(tmp_path / "mask.png")
    base = [
        "--model",
        str(tiny_conditional_model),
        "--steps",
        "4",
        "--num-images",
        "1",
        "--init-image",
        str(tmp_path / "in.png"),
    ]
    assert cli.sample_main([*base, "--strength", "0", "--out", str(tmp_path / "a")]) == 0
    assert Image.open(tmp_path / "a" / "0.png").tobytes() == picture.tobytes()
    assert cli.sample_main([*base, "--out", str(tmp_path / "c")]) == 0
    assert Image.open(tmp_path / "c" / "0.png").text["strength"] == str(cli.DEFAULT_STRENGTH)  # the one used
    args = [*base, "--mask", str(tmp_path / "mask.png"), "--resample", "2", "--jump-length", "2"]
    assert cli.sample_main([*args, "--out", str(tmp_path / "b")]) == 0
    inpainted = Image.open(tmp_path / "b" / "0.png")
    assert inpainted.crop((4, 0, 8, 8)).tobytes() == picture.crop((4, 0, 8, 8)).tobytes()
    assert inpainted.crop((0, 0, 4, 8)).tobytes() != picture.crop((0, 0, 4, 8)).tobytes()
    assert inpainted.text["resample"] == "2" and inpainted.text["mask"] == str(tmp_path / "mask.png")
    assert "class" not in inpainted.text  # editing without --class keeps to the null class, not a random one


def test_interpolate_writes_a_strip_and_a_gif(tiny_conditional_model, tiny_conditional_pipeline, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["--model", str(tiny_conditional_model), "--steps", "3", "--out", str(out), "--frames", "4"]
    assert cli.sample_main([*args, "--interpolate", "0", "5"]) == 0
    strip, gif = Image.open(out / "interpolation.png"), Image.open(out / "interpolation.gif")
    assert strip.size == (4 * 10 + 2, 12) and gif.n_frames == 4 and gif.size == (8, 8)
    assert "wrote" in capsys.readouterr().out
    # The first frame is seed 0's image with the same deterministic sampler.
    assert cli.sample_main(["--model", str(tiny_conditional_model), "--steps", "3", "--out", str(tmp_path / "s"),
                            "--num-images", "1", "--scheduler", "ddim", "--eta", "0"]) == 0  # fmt: skip
    assert strip.crop((2, 2, 10, 10)).tobytes() == Image.open(tmp_path / "s" / "0.png").tobytes()
    Image.new("L", (8, 8), 40).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 200).save(tmp_path / "b.png")
    two = ["--interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "i")]
    assert cli.sample_main([*args[:-4], *two, "--frames", "3", "--class", "dog"]) == 0
    assert Image.open(tmp_path / "i" / "interpolation.gif").n_frames == 3
    # The end frames regenerate the inverted images, inverted and regenerated with the same class.
    pipe = tiny_conditional_pipeline
    latents = pipe.invert(Image.open(tmp_path / "a.png"), 3, class_labels="dog")
    first = pipe(1, 3, "ddim", eta=0.0, latents=latents, class_labels="dog")[0]
    strip = Image.open(tmp_path / "i" / "interpolation.png")
    assert strip.crop((2, 2, 10, 10)).tobytes() == first.tobytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "wolf"], r"unknown class 'wolf'; this model knows ids 0-1: cat, dog"),
        (["--class", "resample"], r"unknown class 'resample'; this model knows ids 0-1: cat, dog"),
        (["--class", "cat", "--guidance-scale", "-1"], r"--guidance-scale must be a finite number >= 0"),
        (["--class", "none", "--guidance-scale", "2"], r"--guidance-scale needs --class: the class to guide towards"),
        (["--init-image", "{tmp}/none.png"], r"--init-image .*none.png not found"),
        (["--init-image", "{tmp}/text.png"], r"--init-image .*text.png is not a readable image"),
        (["--init-image", "{tmp}/ok.png", "--strength", "2"], r"error: --strength must be in \[0, 1\], got 2.0"),
        (["--init-image", "{tmp}/ok.png", "--mask", "{tmp}/wide.png"], r"the mask is 8x12 but the image is 8x8"),
        (["--init-image", "{tmp}/odd.png"], r"the image is 9x9; its sides must be multiples of 2"),
        (["--mask", "{tmp}/ok.png"], r"--mask edits an image: give --init-image too"),
        (["--interpolate", "0", "1", "--frames", "1"], r"--frames must be an integer >= 2"),
        (["--interpolate", "0", "1", "--scheduler", "ddpm"], r"interpolation needs a deterministic sampler"),
        (["--interpolate", "{tmp}/ok.png", "1", "--scheduler", "unipc"], r"regenerates DDIM-inverted latents"),
        (["--interpolate", "0", "1", "--class", "cat,dog"], r"--interpolate takes one --class for all frames"),
        (["--class", "all", "--seeds", "3,7"], r"--class all numbers its images from --seed; it does not take --seeds"),
        (["--resample", "3"], r"--resample and --jump-length are RePaint settings for inpainting: give --mask"),
    ],
)
def test_bad_conditioning_and_editing_input_is_one_line(tiny_conditional_model, tmp_path, capsys, args, message):
    (tmp_path / "text.png").write_text("not a png")
    Image.new("L", (8, 8)).save(tmp_path / "ok.png")
    Image.new("L", (12, 8)).save(tmp_path / "wide.png")
    Image.new("L", (9, 9)).save(tmp_path / "odd.png")
    args = [a.format(tmp=tmp_path) for a in args]
    base = ["--model", str(tiny_conditional_model), "--out", str(tmp_path / "o"), "--steps", "2"]
    assert cli.sample_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_class_all_on_an_unconditional_model_is_refused(tiny_rgb_model, tmp_path, capsys):
    assert cli.sample_main(["--model", str(tiny_rgb_model), "--class", "all", "--out", str(tmp_path)]) == 2
    assert "--class all needs a class-conditional model; this model is unconditional" in capsys.readouterr().err


def test_a_class_conditional_model_draws_a_class_per_seed_unless_told(
    tiny_conditional_model, tiny_conditional_pipeline, tmp_path
):
    base = ["--model", str(tiny_conditional_model), "--steps", "2", "--num-images", "4"]
    assert cli.sample_main([*base, "--out", str(tmp_path / "r"), "--seed", "20"]) == 0
    pipe = tiny_conditional_pipeline
    expected = [pipe.class_names[i] for i in pipe.random_class_labels(4, 20).tolist()]
    assert [Image.open(tmp_path / "r" / f"{s}.png").text["class"] for s in range(20, 24)] == expected
    assert cli.sample_main([*base, "--out", str(tmp_path / "n"), "--class", "none"]) == 0
    unconditional = pipe(4, 2, seed=0)
    for i in range(4):
        image = Image.open(tmp_path / "n" / f"{i}.png")
        assert "class" not in image.text and image.tobytes() == unconditional[i].tobytes()


# ----- what the command says is what it did -----


def test_ctrl_c_keeps_every_finished_batch_and_says_how_many(tiny_rgb_model, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    predict = Denoiser.__call__

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # the second of 3 steps of the third batch of 4
            raise KeyboardInterrupt
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "__call__", interrupted)
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_rgb_model),
        "--num-images",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--out",
        str(out),
    ]
    assert cli.sample_main([*args, "--grid", str(tmp_path / "g.png")]) == 130
    assert sorted(int(p.stem) for p in out.glob("*.png")) == list(range(8))  # batches 1 and 2, nothing after
    assert Image.open(out / "7.png").text["seed"] == "7"
    assert (
        capsys.readouterr().err.splitlines()[-1] == f"diffusion-sample: interrupted: 8 of 16 images written to {out}/"
    )
    assert not (tmp_path / "g.png").exists()


def test_an_interrupt_before_any_image_leaves_no_output_folder(tiny_rgb_model, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Denoiser, "__call__", interrupted)
    assert (
        cli.sample_main(["--model", str(tiny_rgb_model), "--steps", "2", "--out", str(tmp_path / "new" / "o")]) == 130
    )
    assert (
        capsys.readouterr().err.strip() == f"diffusion-sample: interrupted: 0 of 16 images written to {tmp_path}/new/o/"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "edit, nfe",
    [
        ([], 10),
        (["--init-image", "{tmp}/in.png", "--strength", "0.6"], 6),  # img2img runs the last ⌊0.6·10⌋ steps
        (["--init-image", "{tmp}/in.png"], 8),  # the default strength, 0.8
        (["--init-image", "{tmp}/in.png", "--strength", "0"], 0),
        (["--init-image", "{tmp}/in.png", "--mask", "{tmp}/mask.png"], 10),
        (["--init-image", "{tmp}/in.png", "--mask", "{tmp}/mask.png", "--resample", "2", "--jump-length", "5"], 20),
        (["--init-image", "{tmp}/in.png", "--mask", "{tmp}/mask.png", "--resample", "3", "--jump-length", "4"], 30),
        (["--init-image", "{tmp}/in.png", "--mask", "{tmp}/mask.png", "--strength", "0.5", "--resample", "2"], 10),
    ],
)
def test_reported_nfe_is_the_model_calls_made(tiny_rgb_model, tmp_path, capsys, monkeypatch, edit, nfe):
    Image.new("RGB", (16, 8), (200, 30, 90)).save(tmp_path / "in.png")
    Image.new("L", (16, 8), 255).save(tmp_path / "mask.png")
    calls = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    args = [
        "--model",
        str(tiny_rgb_model),
        "--num-images",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "10",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.sample_main(args + [a.format(tmp=tmp_path) for a in edit]) == 0
    assert len(calls) == nfe  # one batch: one forward per evaluation
    assert f", {nfe} NFE)" in capsys.readouterr().out
    assert Image.open(tmp_path / "o" / "1.png").text["nfe"] == str(nfe)


def test_sampler_flags_name_the_models_default_sampler(tmp_path, capsys):
    pipe = DiffusionPipeline.from_pretrained(None)  # the shipped model samples with dpmsolver++3m-sde
    assert pipe.scheduler_name() == "dpmsolver++3m-sde"
    assert cli.sample_main(["--eta", "0.3", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "diffusion-sample: error: --eta is DDIM's stochasticity, but the sampler is dpmsolver++3m-sde (the model's "
        "default); add --scheduler ddim"
    )
    assert cli.sample_main(["--interpolate", "0", "1", "--karras", "--out", str(tmp_path / "o")]) == 2
    assert "but the sampler is ddim (--interpolate's default)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jump-length", "5"], "--jump-length sets the runs that RePaint redoes: give --resample 2 or more too"),
        (["--guidance-rescale", "0.5", "--class", "none"], "--guidance-rescale needs --class: it rescales guidance"),
        (["--interpolate", "0", "1", "--seed", "3"], r"leave out --seed$"),
        (["--interpolate", "0", "1", "--init-image", "{tmp}/in.png"], r"leave out --init-image$"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(tiny_conditional_model, tmp_path, capsys, args, message):
    Image.new("L", (8, 8)).save(tmp_path / "in.png")
    base = ["--model", str(tiny_conditional_model), "--out", str(tmp_path / "o"), "--steps", "2"]
    edit = (
        ["--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "in.png")]
        if args[0] == "--jump-length"
        else []
    )
    assert cli.sample_main(base + edit + [a.format(tmp=tmp_path) for a in args]) == 2
    assert re.search(message, capsys.readouterr().err.strip())


def test_a_real_sigint_keeps_the_finished_batches(tiny_rgb_model, tmp_path):
    """sample.py in its own process, interrupted by SIGINT once its first batch is on disk."""
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_rgb_model),
        "--num-images",
        "40",
        "--batch-size",
        "2",
        "--steps",
        "100",
        "--out",
        str(out),
    ]
    # A child inherits an ignored SIGINT (pytest started as a background job of a script ignores it); a handled
    # one is reset to the default at exec, which Python turns into KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *args], stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while not (out / "1.png").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    written = sorted(int(p.stem) for p in out.glob("*.png"))
    assert process.returncode == 130
    assert 2 <= len(written) < 40 and written == list(range(len(written)))  # whole batches, in order
    assert err.splitlines()[-1] == f"diffusion-sample: interrupted: {len(written)} of 40 images written to {out}/"


def test_shipped_models_are_listed_and_found_by_name(tmp_path, capsys, monkeypatch):
    assert cli.sample_main(["--list-models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(model_folder.SHIPPED_MODELS)
    assert listed[0] == (
        "fashion-mnist: 10 classes (ankle-boot, bag, coat, dress, pullover, sandal, shirt, sneaker, t-shirt, "
        f"trouser); 1x28x28; sampler dpmsolver++3m-sde; {ROOT / 'assets' / 'fashion-mnist'}, the default"
    )
    assert [line.split(":")[0] for line in listed] == list(model_folder.SHIPPED_MODELS)
    fast = next(line for line in listed if line.startswith("fashion-mnist-fast:"))
    assert "; 1x28x28; sampler ddim at 1, 2, 4 steps (distilled; default 4); " in fast
    monkeypatch.setitem(model_folder.SHIPPED_MODELS, "noto-emoji", tmp_path / "absent")
    assert cli.sample_main(["--list-models"]) == 0
    absent = capsys.readouterr().out.splitlines()[1]
    assert absent == f"noto-emoji: not in this installation of pixel-diffusion (not at {tmp_path / 'absent'})"
    assert cli.sample_main(["--list-models", "--steps", "3"]) == 2
    args = ["--num-images", "1", "--steps", "2"]
    assert cli.sample_main([*args, "--model", "fashion-mnist", "--out", str(tmp_path / "named")]) == 0
    assert cli.sample_main([*args, "--out", str(tmp_path / "default")]) == 0
    named, default = Image.open(tmp_path / "named" / "0.png"), Image.open(tmp_path / "default" / "0.png")
    assert named.tobytes() == default.tobytes()
    # A plain wheel install has no assets/: one line that names --model PATH.
    monkeypatch.setitem(model_folder.SHIPPED_MODELS, "fashion-mnist", tmp_path / "not-installed")
    monkeypatch.chdir(tmp_path)
    assert cli.sample_main([*args, "--model", "fashion-mnist", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("otherwise pass the path of a trained model (--model PATH)")


def test_an_interrupt_while_writing_counts_the_files_on_disk(tiny_rgb_model, tmp_path, capsys, monkeypatch):
    written = []
    save = sample_files.save_png

    def interrupted(image, path, meta):
        if len(written) == 5:  # the second file of the second batch
            raise KeyboardInterrupt
        save(image, path, meta)
        written.append(path.name)

    monkeypatch.setattr(sample_files, "save_png", interrupted)
    out = tmp_path / "o"
    args = [
        "--model",
        str(tiny_rgb_model),
        "--num-images",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert cli.sample_main(args) == 130
    assert sorted(p.name for p in out.iterdir()) == sorted(written) == [f"{i}.png" for i in range(5)]
    assert (
        capsys.readouterr().err.splitlines()[-1] == f"diffusion-sample: interrupted: 5 of 16 images written to {out}/"
    )


def test_one_image_is_one_image(tiny_rgb_model, tmp_path, capsys):
    assert (
        cli.sample_main(["--model", str(tiny_rgb_model), "--num-images", "1", "--steps", "2", "--out", str(tmp_path)])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote 1 image to {tmp_path}/ in ")


def test_a_local_folder_named_like_a_shipped_model_never_replaces_the_default(tmp_path, monkeypatch):
    (tmp_path / "fashion-mnist" / "train").mkdir(parents=True)  # e.g. data prepared under data/
    monkeypatch.chdir(tmp_path)
    pipe = DiffusionPipeline.from_pretrained()
    assert len(pipe.class_names) == 10 and pipe.unet.config.in_channels == 1
    assert cli.sample_main(["--num-images", "1", "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    with pytest.raises(ValueError, match=r"^fashion-mnist is not a model folder"):  # named: the local folder wins
        DiffusionPipeline.from_pretrained("fashion-mnist")


def test_random_class_interpolation_from_an_image_is_refused_in_flag_names(tiny_conditional_model, tmp_path, capsys):
    """The start seed draws the class of every frame; an image as A has no seed to draw it from."""
    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    argv = ["--model", str(tiny_conditional_model), "--out", str(tmp_path / "o"), "--steps", "2", "--class", "random"]
    assert cli.sample_main([*argv, "--interpolate", str(tmp_path / "a.png"), "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--class random in --interpolate draws the start seed's class, and A is an image")
