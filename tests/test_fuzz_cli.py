"""Hostile arguments for train.py and sample.py (hypothesis): the outcome is always a clean error.

A clean error is exit status 2 with one stderr line ``diffusion-<cmd>: error: ...`` and no traceback.
The flags are those of the real parsers (introspected), each given a value from a hostile pool (negative,
zero, huge, NaN, inf, empty, not a number, unknown names) or a valid one. Runs that validation lets
through stay tiny: `Trainer.train` is replaced by a recorder that builds everything a real run builds
before its first step (the UNet on the meta device, AdamW, the noise schedule, the resume point, the data
order), and sampling runs with a stand-in for the UNet that returns zeros.
"""

import contextlib
import io
import logging
import re
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusion import cli
from diffusion.cli.common import run_command
from diffusion.io.checkpoint import resolve_resume
from diffusion.models import UNet
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import NoiseSchedule
from diffusion.training import Trainer
from diffusion.training.config import lr_factor, scheduler_config
from diffusion.training.sampler import StepBatchSampler

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run, so that a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_RUN = 20  # a run that takes longer counts as a hang
MEMORY_HEADROOM = 4 * 2**30  # address space a run may add: an allocation beyond it fails loudly

# Values by what a flag parses, mostly ones its parser takes (so that validation behind it is reached).
INTS = ["-1", "0", "1", "2", "7", str(10**12), str(2**63), str(2**64)]
FLOATS = ["-1", "0", "0.5", "1", "-0.5", "1e-30", "1e308", "1e999", "nan", "inf", "-inf"]
WORDS = ["", " ", "abc", "no-such-name", "-1", "0"]
NOT_NUMBERS = ["", "abc", "1.5", "0x10", "1e999x", "3x0", "1,-1"]
UNKNOWN_FLAGS = ["--no-such-flag", "--lrr", "-x", "--steps="]


# ----- a run's outcome -----


@pytest.fixture(autouse=True, scope="module")
def in_a_tmp_folder(tmp_path_factory) -> Iterator[None]:
    """Relative names drawn for --out, --grid, ... land in a temporary folder, not in the repository."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("fuzz-cwd"))
        yield


class Hang(BaseException):
    """Raised by `time_limit`: a BaseException, so that no handler of the code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def hang(*_: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(headroom: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``headroom`` (not where CUDA is: it maps address space of
    its own as it goes, so the cap would refuse it, and GPU memory is not what this guards)."""
    if torch.cuda.is_available():
        yield
        return
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (pages * resource.getpagesize() + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(main, argv: list[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``main(argv)``, with log records on stderr as the command has them."""
    err, out = io.StringIO(), io.StringIO()
    handler, root = logging.StreamHandler(err), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what run_command's logging.basicConfig sets up outside pytest
    try:
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
            time_limit(SECONDS_PER_RUN),
            memory_limit(MEMORY_HEADROOM),
        ):
            try:
                status = main(argv)
            except SystemExit as e:
                status = e.code
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return status, err.getvalue().strip().splitlines()


def assert_clean(status: int, err: list[str], prog: str, argv: list[str]) -> None:
    assert status in (0, 2), (status, argv, err)
    assert not any("Traceback" in line for line in err), (argv, err)
    if status == 2:
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), (argv, err)
        assert "out of memory" not in err[0], (argv, err)  # sizes are refused before anything is allocated


# ----- argv from the real flags -----


def flags_of(parser) -> dict[str, object]:
    """Every flag but --help and --version (which print and exit 0), by its first spelling."""
    return {
        a.option_strings[0]: a
        for a in parser._actions
        if a.option_strings and a.option_strings[0] not in ("-h", "--version")
    }


def value_for(action, valid: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    """The words that follow a flag: nothing for a switch (or a stray word), one or two values otherwise."""
    flag = action.option_strings[0]
    if action.nargs == 0:
        return st.one_of(st.just([]), st.sampled_from(WORDS).map(lambda v: [v]))
    own = [*valid.get(flag, []), *(str(c) for c in action.choices or ())]
    typed = {int: INTS, float: FLOATS}.get(action.type, WORDS)
    pool = st.one_of(st.sampled_from(own or typed), st.sampled_from(typed), st.sampled_from(NOT_NUMBERS))
    return st.lists(pool, min_size=action.nargs or 1, max_size=action.nargs or 1)


def words(parser, valid: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    """One flag with its value(s), or now and then an unknown flag."""
    known = st.sampled_from(sorted(flags_of(parser).items())).flatmap(
        lambda item: value_for(item[1], valid).map(lambda values: [item[0], *values])
    )
    unknown = st.sampled_from(UNKNOWN_FLAGS).map(lambda f: [f])
    return st.integers(0, 9).flatmap(lambda i: unknown if i == 0 else known)


# Flag and value pairs every command must refuse, whatever else argv holds: non-numbers, NaN and inf for
# every numeric flag, -1 for every count, a word no parser of a flag's own type takes, an empty name, a
# value after a switch, an unknown flag.
def refused(parser) -> list[list[str]]:
    pairs = []
    for flag, action in flags_of(parser).items():
        if action.nargs == 0:
            pairs.append([flag, "abc"])
        elif action.type in (int, float):
            pairs += [[flag, v] for v in ("abc", "", "1e999x", "nan", "inf", "-inf")]
            pairs += [[flag, "-1"]] if action.type is int and action.choices is None else []
        elif action.nargs == 2:
            pairs.append([flag, "", ""])
        elif action.choices is not None:
            pairs.append([flag, "no-such-name"])
        else:
            pairs.append([flag, "abc" if action.type is not None and action.type is not str else ""])
    return pairs + [[f] for f in UNKNOWN_FLAGS]


def argv_of(parser, base: list[str], valid: dict[str, list[str]], must_refuse: bool) -> st.SearchStrategy:
    drawn = st.lists(words(parser, valid), min_size=1 if not must_refuse else 0, max_size=4)
    if not must_refuse:
        return drawn.map(lambda parts: base + [w for part in parts for w in part])
    bad = st.sampled_from(refused(parser))  # last, so that no later value of its flag replaces it
    return st.tuples(drawn, bad).map(lambda t: base + [w for part in [*t[0], t[1]] for w in part])


# ----- train.py -----


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four random 8x8 RGB PNGs in two class folders."""
    root = tmp_path_factory.mktemp("fuzz-data")
    rng = np.random.default_rng(0)
    for i in range(4):
        path = root / "abc"[i % 2] / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


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
def test_train_arguments_end_in_a_clean_error_or_a_run(data, train_tmp, argv):
    status, err, runs = run_train(data, train_tmp, argv)
    assert len(runs) == (status == 0), (argv, err)


@FUZZ
@given(argv=argv_of(cli.train_parser(), [], TRAIN_VALID, must_refuse=True))
def test_train_refuses_every_example_with_a_bad_value(data, train_tmp, argv):
    status, err, runs = run_train(data, train_tmp, argv)
    assert status == 2 and not runs, (argv, err)


# ----- sample.py -----


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

    def predict(self, x, t, labels, scale, rescale):
        return torch.zeros(x.shape, dtype=torch.float32)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DiffusionPipeline, "_predict", predict)
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
def test_train_regressions(data, train_tmp, args, message):
    with recorded_training() as runs:
        status, err = run(cli.train_main, train_base(data, train_tmp / "out") + args)
    assert (status, err, runs) == (2, [f"diffusion-train: error: {message}"], [])


def test_train_refuses_a_unet_over_the_parameter_limit(data, train_tmp):
    with recorded_training() as runs:
        status, err = run(cli.train_main, [*train_base(data, train_tmp / "out"), "--base-channels", "16384"])
    assert status == 2 and not runs
    assert re.fullmatch(
        r"diffusion-train: error: this UNet would have [\d,]+ parameters, over the limit of 1,000,000,000: lower "
        r"--base-channels, --channel-mult or --num-res-blocks",
        err[0],
    ), err


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
        (["--interpolate", "-1", "1"], "--interpolate seeds must be in [0, 2**64 - 1], got -1 1"),
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


@pytest.mark.parametrize(
    "error, detail",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 8000000000000 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "tried to allocate 7450.6 GiB",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"),
            "tried to allocate 2.00 GiB",
        ),
        (MemoryError(), "MemoryError"),
    ],
)
def test_allocation_failures_are_one_line(error, detail, capsys):
    def main() -> int:
        raise error

    assert run_command("diffusion-sample", main) == 2
    assert capsys.readouterr().err == f"diffusion-sample: error: out of memory ({detail}); use a smaller --batch-size\n"


def test_other_runtime_errors_still_show_their_traceback():
    def main() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command("diffusion-sample", main)
