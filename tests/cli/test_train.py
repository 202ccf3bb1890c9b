"""train.py / diffusion-train: the script, and every flag taking effect or being refused."""

import subprocess
import sys
from pathlib import Path

import pytest

from diffusion import cli
from diffusion.training import Trainer

ROOT = Path(__file__).resolve().parents[2]


def test_the_script_refuses_cleanly_and_has_help(capsys):
    assert cli.train_main([]) == 2
    assert "diffusion-train: error: both --data (a folder of images) and --out" in capsys.readouterr().err
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout


def test_unknown_flag_is_one_line_not_a_traceback():
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--no-such-flag"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in done.stderr and "Traceback" not in done.stderr


def train_base(images: Path, out: Path) -> list[str]:
    return ["--data", str(images), "--out", str(out), "--preset", "tiny", "--image-size", "8", "--max-steps", "2"]


@pytest.fixture
def recorded(monkeypatch) -> list:
    """`Trainer.train` records the trainer instead of training."""
    runs: list = []
    monkeypatch.setattr(Trainer, "train", lambda self, **kwargs: runs.append(self) or self.out / "model")
    return runs


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--cond-drop-prob", "0.2"],
            "--cond-drop-prob has no effect without --class-cond: add --class-cond, or leave it out",
        ),
        (
            ["--snr-gamma", "3"],
            "--snr-gamma has no effect with --loss-weighting uniform: add --loss-weighting min-snr, or leave it out",
        ),
        (
            ["--sample-every", "0", "--num-samples", "4", "--sample-steps", "5"],
            "--sample-steps has no effect with --sample-every 0 (no sample grids): leave it out, or give "
            "--sample-every N; --num-samples has no effect with --sample-every 0 (no sample grids): leave it out, "
            "or give --sample-every N",
        ),
        (
            ["--sample-every", "3"],
            "--sample-every 3 is longer than the run (2 steps): no grid is written; lower it, or --sample-every 0 to "
            "write none",
        ),
        (
            ["--num-samples", "4"],  # --sample-every 500, the default, is longer than the run
            "--num-samples has no effect: --sample-every 500 is longer than the run (2 steps): no grid is written; "
            "lower --sample-every, or leave it out",
        ),
        (
            ["--num-heads", "2"],
            "--num-heads has no effect while head_channels is 32 (from --head-channels, --model-config or --preset "
            "tiny): heads are channels // head_channels. To set the number of heads, leave out --head-channels and "
            'give --model-config FILE with {"head_channels": null} (or use --preset ddpm-cifar10, which counts heads)',
        ),
        (
            ["--attention-levels", "", "--no-mid-attention", "--head-channels", "8"],
            "--head-channels has no effect: this UNet has no attention (--attention-levels is empty and "
            "--no-mid-attention); give --attention-levels, or leave it out",
        ),
        (
            ["--channel-mult", "1", "--attention-levels", "0", "--resample", "resblock"],
            "--resample has no effect: with one level (--channel-mult 1) the UNet never down- or upsamples; give more "
            "levels, or leave it out",
        ),
        (
            ["--resample", "resblock", "--downsample-padding", "0"],
            "--downsample-padding has no effect with --resample resblock (it pads strided-conv downsampling): use "
            "--resample conv, or leave it out",
        ),
        (
            ["--max-steps", "3", "--epochs", "1", "--sample-every", "4"],  # refused before the scan, by --max-steps
            "--sample-every 4 is longer than the run (at most 3 steps): no grid is written; lower it, or "
            "--sample-every 0 to write none",
        ),
        (
            ["--max-steps", "3", "--epochs", "1", "--batch-size", "2", "--sample-every", "3"],  # 4 images: 2 steps
            "--sample-every 3 is longer than the run (2 steps): no grid is written; lower it, or --sample-every 0 to "
            "write none",
        ),
    ],
)
def test_train_refuses_a_flag_that_would_have_no_effect(tiny_image_folder, tmp_path, recorded, capsys, args, message):
    assert cli.train_main(train_base(tiny_image_folder, tmp_path / "out") + args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"diffusion-train: error: {message}"]
    assert recorded == [] and not (tmp_path / "out").exists()


def test_train_takes_defaults_and_flags_that_matter_without_complaint(tiny_image_folder, tmp_path, recorded):
    # The defaults --warmup-steps 500 and --sample-every 500 outlast this 2-step run, but were not typed.
    argv = [*train_base(tiny_image_folder, tmp_path / "out"), "--class-cond", "--cond-drop-prob", "0.2"]
    argv += ["--loss-weighting", "min-snr", "--snr-gamma", "3", "--sample-every", "2", "--num-samples", "4"]
    argv += ["--resample", "resblock", "--head-channels", "16"]
    assert cli.train_main(argv) == 0
    (trainer,) = recorded
    assert (trainer.config.cond_drop_prob, trainer.config.snr_gamma, trainer.config.num_samples) == (0.2, 3.0, 4)
    assert (trainer.unet_config.resample, trainer.unet_config.head_channels) == ("resblock", 16)


@pytest.mark.parametrize(
    "args",
    [
        ["--warmup-steps", "3"],  # longer than the 2-step run: it still sets every step's learning rate
        ["--lr-schedule", "cosine"],  # inside the default 500-step warmup: it decays once the run is extended
        ["--lr-schedule", "cosine", "--warmup-steps", "2"],
        ["--max-steps", "3", "--epochs", "1", "--batch-size", "2", "--warmup-steps", "3"],  # 4 images: 2 steps
    ],
)
def test_train_takes_a_warmup_longer_than_the_run(tiny_image_folder, tmp_path, recorded, args):
    """Warned about when the run starts (tests/training/test_report.py), not refused."""
    assert cli.train_main(train_base(tiny_image_folder, tmp_path / "out") + args) == 0
    (trainer,) = recorded
    assert (trainer.config.warmup_steps, trainer.config.lr_schedule) == (
        int(args[args.index("--warmup-steps") + 1]) if "--warmup-steps" in args else 500,
        "cosine" if "cosine" in args else "constant",
    )


def test_train_counts_heads_with_head_channels_null_in_a_model_config(tiny_image_folder, tmp_path, recorded):
    """What the --num-heads refusal suggests: the presets' head_channels unset by --model-config."""
    (tmp_path / "heads.json").write_text('{"head_channels": null}')
    argv = [
        *train_base(tiny_image_folder, tmp_path / "out"),
        "--model-config",
        str(tmp_path / "heads.json"),
        "--num-heads",
        "4",
    ]
    assert cli.train_main(argv) == 0
    (trainer,) = recorded
    assert (trainer.unet_config.head_channels, trainer.unet_config.num_heads) == (None, 4)
    assert (
        cli.train_main(
            [*train_base(tiny_image_folder, tmp_path / "o2"), "--preset", "ddpm-cifar10", "--num-heads", "2"]
        )
        == 0
    )
    assert (recorded[-1].unet_config.head_channels, recorded[-1].unet_config.num_heads) == (None, 2)


def test_train_image_size_help_says_n_or_hxw():
    text = " ".join(cli.train_parser().format_help().split())
    assert "--image-size IMAGE_SIZE N or HxW (height x width) to train at; None: the preset's size" in text


def test_train_background_and_channels_help_say_what_they_do():
    text = " ".join(cli.train_parser().format_help().split())
    assert (
        "--channels {1,3,4} 1 grayscale, 3 RGB, 4 RGBA (alpha kept, 255 where opaque); images are converted "
        "(default: 3)" in text
    )
    assert (
        "--background {white,black,random} what transparency is composited on at 1/3 channels; random: seeded, per "
        "item (default: 'white')" in text
    )


@pytest.mark.parametrize(
    "args", [["--background", "black"], ["--channels", "4"], ["--channels", "1", "--background", "random"]]
)
def test_train_passes_background_and_channels_on(tiny_image_folder, tmp_path, recorded, args):
    assert cli.train_main(train_base(tiny_image_folder, tmp_path / "out") + args) == 0
    (trainer,) = recorded
    channels = int(args[args.index("--channels") + 1]) if "--channels" in args else 3
    background = args[args.index("--background") + 1] if "--background" in args else "white"
    assert (trainer.config.channels, trainer.config.background) == (channels, background)
    assert (trainer.unet_config.in_channels, trainer.dataset.channels, trainer.dataset.background) == (
        channels,
        channels,
        background,
    )
