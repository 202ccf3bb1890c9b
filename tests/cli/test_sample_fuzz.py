"""Hostile arguments for sample.py (hypothesis, harness in tests/fuzzing.py): a clean error or images.

Sampling runs its whole loop with a stand-in for the UNet that returns zeros.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import FUZZ, argv_of, assert_clean, run
from hypothesis import given, settings
from PIL import Image

from diffusion import cli
from diffusion.denoiser import Denoiser

pytestmark = pytest.mark.usefixtures("tmp_cwd")


@pytest.fixture(scope="module")
def sample_tmp(tmp_path_factory) -> Path:
    """Inputs for --init-image, --mask and --interpolate: good, odd-sized, too large, not an image."""
    tmp = tmp_path_factory.mktemp("fuzz-sample")
    rng = np.random.default_rng(1)
    for name, size in (("image.png", 28), ("odd.png", 9), ("huge.png", 240)):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(tmp / name)
    mask = np.zeros((28, 28), np.uint8)
    mask[:, :14] = 255
    Image.fromarray(mask).save(tmp / "mask.png")
    (tmp / "text.png").write_text("not an image")
    return tmp


@contextlib.contextmanager
def zero_unet() -> Iterator[None]:
    """Sampling runs its whole loop, validation included, with a UNet stand-in that predicts zeros."""

    def predict(self, x, t, labels):
        return torch.zeros(x.shape, dtype=torch.float32)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Denoiser, "__call__", predict)
        yield


SAMPLE_VALID = {
    "--num-images": ["2", "1048577"],
    "--steps": ["2", "1000", "1001"],
    "--scheduler": ["ddim", "heun", "ddpm", "dpmsolver++", "lms"],
    "--class": ["bag", "0", "9", "10", "all", "none", "random", "bag,coat"],
    "--seeds": ["0-3", "5,9", "3-1", "0-99999999999", "-1", str(2**64 - 1), str(2**64)],
    "--seed": [str(2**64 - 1), str(2**64 - 2)],
    "--batch-size": ["1", "100000"],
    "--frames": ["2", "1048577"],
    "--resample": ["2", "1000", "1001"],
    "--init-image": ["{tmp}/image.png", "{tmp}/odd.png", "{tmp}/huge.png", "{tmp}/text.png", "{tmp}/missing.png"],
    "--mask": ["{tmp}/mask.png", "{tmp}/odd.png"],
    "--interpolate": ["3", "{tmp}/image.png", "{tmp}/huge.png"],
    "--model": ["{tmp}", "{tmp}/image.png"],
    "--grid": ["{tmp}/grid.png", "{tmp}"],
    "--out": ["{tmp}/out", "{tmp}/image.png"],
    "--device": ["cpu"],
}


def sample_base(tmp: Path) -> list[str]:
    return ["--out", str(tmp / "out"), "--steps", "2", "--num-images", "1", "--device", "cpu"]


@settings(FUZZ, max_examples=300)
@given(argv=argv_of(cli.sample_parser(), [], SAMPLE_VALID, must_refuse=False))
def test_sample_arguments_end_in_a_clean_error_or_images(sample_tmp, argv):
    argv = [w.replace("{tmp}", str(sample_tmp)) for w in sample_base(sample_tmp) + argv]
    with zero_unet():
        status, err = run(cli.sample_main, argv)
    assert_clean(status, err, "diffusion-sample", argv)


@settings(FUZZ, max_examples=300)
@given(argv=argv_of(cli.sample_parser(), [], SAMPLE_VALID, must_refuse=True))
def test_sample_refuses_every_example_with_a_bad_value(sample_tmp, argv):
    argv = [w.replace("{tmp}", str(sample_tmp)) for w in sample_base(sample_tmp) + argv]
    with zero_unet():
        status, err = run(cli.sample_main, argv)
    assert_clean(status, err, "diffusion-sample", argv)
    assert status == 2, (argv, err)


# ----- regressions: each bug the fuzzing found, with its message -----


@pytest.mark.parametrize(
    "args, message",
    [
        # hangs: a list of 10**12 seeds
        (["--num-images", str(10**12)], "--num-images must be at most 1048576, got 1000000000000"),
        (["--seeds", "0-1000000000000"], "argument --seeds: '0-1000000000000' is more than 1048576 seeds (see --help)"),
        # torch's "Overflow when unpacking long long"; -1 silently meant 2**64 - 1
        (["--seed", str(2**64)], "--seed must be in [0, 2**64 - 1] for --num-images 1, got 18446744073709551616"),
        (["--seed", "-1"], "--seed must be in [0, 2**64 - 1] for --num-images 1, got -1"),
        (["--seeds", str(2**64)], "seeds must be integers in [0, 2**64 - 1], got 18446744073709551616"),
        (["--interpolate", "-1", "1"], "--interpolate seeds must be integers in [0, 2**64 - 1], got -1"),
        # silently ignored without --interpolate; a hang with it
        (["--frames", "-1"], "--frames is the frame count of --interpolate: give --interpolate too"),
        (
            ["--interpolate", "0", "1", "--frames", str(10**12)],
            "--frames must be at most 1048576 per call, got 1000000000000; make several calls",
        ),
        # --out '' wrote into the current folder; --scheduler '' meant the model's own
        (["--out", ""], "--out was given an empty string; give a name or leave it out"),
        (["--scheduler", ""], "--scheduler was given an empty string; give a name or leave it out"),
        # MemoryError: a RePaint schedule of 10**12 runs
        (
            ["--init-image", "{tmp}/image.png", "--mask", "{tmp}/mask.png", "--resample", str(10**12)],
            "--resample must be at most 1000, got 1000000000000",
        ),
        # sampled at any size, however slow
        (
            ["--init-image", "{tmp}/huge.png"],
            "the image is 240x240, larger than this model can sample: at most 224x224 (8x the 28x28 it was trained "
            "at, 4096 at most); resize it",
        ),
        # a progress bar, then an error at the first step
        (["--scheduler", "ddim", "--eta", "inf"], "the ddim scheduler's --eta must be a finite number, got inf"),
        (["--steps", "abc"], "argument --steps: invalid int value: 'abc' (see --help)"),
    ],
)
def test_sample_regressions(sample_tmp, args, message):
    base = sample_base(sample_tmp)
    if {"--seeds", "--interpolate"} & set(args):  # they give the image count; --num-images would be refused
        base = base[: base.index("--num-images")] + base[base.index("--num-images") + 2 :]
    with zero_unet():
        status, err = run(cli.sample_main, base + [a.replace("{tmp}", str(sample_tmp)) for a in args])
    assert (status, err) == (2, [f"diffusion-sample: error: {message}"])
