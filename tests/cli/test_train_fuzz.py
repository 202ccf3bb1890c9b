"""Hostile arguments for train.py (hypothesis, harness in tests/fuzzing.py): a clean error or a run.

Runs that validation lets through stay tiny: `Trainer.train` is replaced by a recorder that builds everything
a real run builds before its first step (the UNet on the meta device, AdamW, the noise schedule, the resume
point, the data order).
"""

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fuzzing import FUZZ, argv_of, assert_clean, run
from hypothesis import given

from diffusion import cli
from diffusion.io.checkpoint import resolve_resume
from diffusion.models import UNet
from diffusion.schedulers import NoiseSchedule
from diffusion.training import Trainer
from diffusion.training.config import lr_factor, scheduler_config
from diffusion.training.sampler import StepBatchSampler

pytestmark = pytest.mark.usefixtures("tmp_cwd")


@contextlib.contextmanager
def recorded_training() -> Iterator[list]:
    """`Trainer.train` builds what a run builds before its first step, then returns without training."""
    runs: list = []

    def train(self, stop_at_step=None, progress=False):
        c = self.config
        with torch.device("meta"):
            model = UNet(self.unet_config)
        torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        NoiseSchedule(scheduler_config(c))
        [lr_factor(step, c, self.total_steps) for step in (0, self.total_steps - 1)]
        resolve_resume(self.out, c.resume)
        StepBatchSampler(
            len(self.dataset), batch_size=c.batch_size, grad_accum=c.grad_accum, rank=0, world_size=1,
            seed=c.seed, start_step=0, end_step=self.total_steps,
        )  # fmt: skip
        runs.append(c)
        return self.out / "model"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train", train)
        yield runs


def train_base(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "8", "--max-steps", "1"]


TRAIN_VALID = {
    "--data": ["{data}", "{tmp}/list.json"],
    "--image-size": ["8", "16x8", "4096", "4097", "100000x8"],
    "--model-config": ["{tmp}/missing.json", "{tmp}/list.json", "{tmp}/unet.json"],
    "--resume": ["auto", "never", "{tmp}"],
    "--channel-mult": ["1,2", "1,2,2,2,2,2", "1,100000"],
    "--attention-levels": ["0", "5"],
    "--base-channels": ["16", "65536", str(2**20)],
    "--num-res-blocks": ["1", "64", "65"],
    "--time-embed-dim": ["65536", "65537"],
    "--head-channels": ["16", "32"],
    "--batch-size": ["2", "4", str(2**20)],
    "--grad-accum": ["2", str(2**20)],
    "--num-samples": ["1024", "1025"],
    "--sample-every": ["1"],
    "--num-train-timesteps": ["2", "1000000", "1000001"],
    "--sample-steps": ["1000", "1001"],
    "--epochs": ["1e9", "1e10"],
    "--seed": [str(2**32 - 1024), str(2**32 - 1023)],
    "--num-workers": ["256", "257"],
}


def with_paths(argv: list[str], data: Path, tmp: Path) -> list[str]:
    return [w.replace("{data}", str(data)).replace("{tmp}", str(tmp)) for w in argv]


@pytest.fixture(scope="module")
def train_tmp(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz-train")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "unet.json").write_text('{"base_channels": 16, "norm_groups": 4}')
    return tmp


def run_train(data: Path, train_tmp: Path, argv: list[str]) -> tuple[int, str, list]:
    """train.py with ``argv`` after the fixed base arguments, training recorded instead of run."""
    argv = with_paths(train_base(data, train_tmp / "out") + argv, data, train_tmp)
    with recorded_training() as runs:
        status, err = run(cli.train_main, argv)
    assert_clean(status, err, "diffusion-train", argv)
    return status, err, runs


@FUZZ
@given(argv=argv_of(cli.train_parser(), [], TRAIN_VALID, must_refuse=False))
def test_train_arguments_end_in_a_clean_error_or_a_run(tiny_image_folder, train_tmp, argv):
    status, err, runs = run_train(tiny_image_folder, train_tmp, argv)
    assert len(runs) == (status == 0), (argv, err)


@FUZZ
@given(argv=argv_of(cli.train_parser(), [], TRAIN_VALID, must_refuse=True))
def test_train_refuses_every_example_with_a_bad_value(tiny_image_folder, train_tmp, argv):
    status, err, runs = run_train(tiny_image_folder, train_tmp, argv)
    assert status == 2 and not runs, (argv, err)


# ----- regressions: each bug the fuzzing found, with its message -----


@pytest.mark.parametrize(
    "args, message",
    [
        # OverflowError: cannot convert float infinity to integer (steps from epochs)
        (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
        (["--epochs", "1e10"], "--epochs must be in (0, 1e+09], got 10000000000.0"),
        # RuntimeError: DefaultCPUAllocator: can't allocate memory (8 TB of noise schedule)
        (["--num-train-timesteps", str(10**12)], "--num-train-timesteps must be in [2, 1000000], got 1000000000000"),
        # RuntimeError: Storage size calculation overflowed
        (
            ["--base-channels", str(10**12)],
            "a layer would have 2000000000000 channels (base_channels x channel_mult, in/out_channels or "
            "time_embed_dim); the limit is 65536",
        ),
        # a hang: 10**12 residual blocks
        (["--num-res-blocks", str(10**12)], "num_res_blocks must be at most 64, got 1000000000000"),
        # ZeroDivisionError; -1 was accepted
        (["--head-channels", "0"], "head_channels must be a positive integer or None, got 0"),
        (["--head-channels", "-1"], "head_channels must be a positive integer or None, got -1"),
        # RuntimeError: negative dimension; 0 silently meant the default
        (["--time-embed-dim", "-1"], "time_embed_dim must be a positive integer or None, got -1"),
        (["--time-embed-dim", "0"], "time_embed_dim must be a positive integer or None, got 0"),
        # accepted, then NaN outputs
        (["--norm-eps", "nan"], "norm_eps must be a finite number, got nan"),
        (["--norm-eps", "-1"], "norm_eps must be > 0, got -1.0"),
        (["--freq-shift", "inf"], "freq_shift must be a finite number, got inf"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--grad-clip", "nan"], "--grad-clip must be a finite number, got nan"),
        (["--snr-gamma", "inf"], "--snr-gamma must be a finite number, got inf"),
        # torch's "Invalid weight_decay value: nan", which did not name the flag
        (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
        # numpy's "Seed must be between 0 and 2**32 - 1" from accelerate, which did not name the flag
        (["--seed", str(2**32)], "--seed must be at most 4294966272 (2**32 - 1024), got 4294967296"),
        # accepted: 10**12 data-loading processes, a 10**12-image batch list, a 10**12-pixel resize
        (["--num-workers", str(10**12)], "--num-workers must be at most 256, got 1000000000000"),
        (
            ["--batch-size", str(10**12)],
            "a forward pass of 1000000000000 images of 8x8 holds 7.63e+06 GiB per activation at 32 channels, over "
            "the 32 GiB limit: lower --batch-size, raise --grad-accum, or lower --image-size or --base-channels",
        ),
        (
            ["--image-size", str(10**12)],
            "--image-size must be N or HxW with sides in [1, 4096], got (1000000000000, 1000000000000)",
        ),
        # accepted, then failed (or hung) at the first sample grid, after --sample-every steps
        (["--sample-steps", "1001"], "--sample-steps 1001 must be at most --num-train-timesteps (1000)"),
        (["--num-samples", str(10**12)], "--num-samples must be at most 1024 (one grid), got 1000000000000"),
        # silently ignored
        (["--model-config", ""], "--model-config was given an empty string; give a JSON file or leave it out"),
        # found only when training started
        (["--batch-size", "4", "--grad-accum", "3"], "--batch-size 4 must be divisible by --grad-accum (3)"),
        # argparse's errors came after a usage block of 20 lines
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc' (see --help)"),
    ],
)
def test_train_regressions(tiny_image_folder, train_tmp, args, message):
    with recorded_training() as runs:
        status, err = run(cli.train_main, train_base(tiny_image_folder, train_tmp / "out") + args)
    assert (status, err, runs) == (2, [f"diffusion-train: error: {message}"], [])


def test_train_refuses_a_unet_over_the_parameter_limit(tiny_image_folder, train_tmp):
    with recorded_training() as runs:
        status, err = run(
            cli.train_main, [*train_base(tiny_image_folder, train_tmp / "out"), "--base-channels", "16384"]
        )
    assert status == 2 and not runs
    assert re.fullmatch(
        r"diffusion-train: error: this UNet would have [\d,]+ parameters, over the limit of 1,000,000,000: lower "
        r"--base-channels, --channel-mult or --num-res-blocks",
        err[0],
    ), err
