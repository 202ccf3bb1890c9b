"""Crash safety: `train.py` killed with SIGKILL again and again still ends on the uninterrupted run's weights.

The test process is the killer: it launches `train.py`, picks each kill's moment from a seeded
generator (so a failure replays with the same schedule), and relaunches the same command, which
resumes with ``--resume auto``. Three kinds of moment:

- ``write``: as soon as a checkpoint's temporary folder appears, i.e. in the middle of writing it;
- ``step``: a few milliseconds after the checkpoint of a chosen later step is published;
- ``start``: a random time after launch, often during start-up or while a resume is loading.
"""

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_trainer import ROOT, make_images  # tests/training is on sys.path

from diffusion.io.checkpoint import list_checkpoints

SEED = 20261129  # the kill schedule; change it to explore other moments
KILLS = 12
MAX_STEPS = 40
ARGS = ["--preset", "tiny", "--channels", "3", "--image-size", "8", "--batch-size", "4", "--warmup-steps", "2"]
ARGS += ["--max-steps", str(MAX_STEPS), "--checkpoint-every", "1", "--keep-checkpoints", "2", "--sample-every", "0"]
ARGS += ["--log-every", "1", "--ema-decay", "0.9", "--base-channels", "16", "--channel-mult", "1,2"]
ARGS += ["--norm-groups", "8", "--attention-levels", "1"]


def launch(data: Path, out: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), *ARGS]
    with open(log, "w") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)


def newest_step(out: Path) -> int:
    found = list_checkpoints(out)
    return found[-1][0] if found else 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll ``condition`` every millisecond; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("train.py made no progress for a minute")


def weights(out: Path) -> dict[str, torch.Tensor]:
    _, last = list_checkpoints(out)[-1]
    return {
        **{f"model.{k}": v for k, v in load_file(last / "model.safetensors").items()},
        **{f"ema.{k}": v for k, v in load_file(last / "ema.safetensors").items()},
        **{f"final.{k}": v for k, v in load_file(out / "model" / "unet" / "model.safetensors").items()},
    }


def test_sigkill_at_random_moments_never_loses_or_changes_the_run(tmp_path):
    data = make_images(tmp_path / "data")
    straight = tmp_path / "straight"
    assert launch(data, straight, tmp_path / "straight.log").wait(timeout=120) == 0

    rng = random.Random(SEED)
    out, kills, mid_write, runs = tmp_path / "out", [], 0, []
    while len(kills) < KILLS:
        expected = newest_step(out)  # what this launch must resume from
        log = tmp_path / f"run-{len(runs)}.log"
        proc = launch(data, out, log)
        runs.append((log, expected))
        kind = rng.choice(["write", "step", "start"])
        if kind == "write":
            hit = wait_for(lambda: any((out / "checkpoints").glob(".tmp-step-*")), proc)
        elif kind == "step":
            target = min(expected + rng.randint(1, 3), MAX_STEPS - 1)
            hit = wait_for(lambda t=target: newest_step(out) >= t, proc)
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            time.sleep(rng.uniform(0.5, 4.0))
            hit = proc.poll() is None
        if not hit or proc.poll() is not None:  # the run ended before this kill: it must have finished
            assert proc.wait() == 0, log.read_text()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(kind)
        mid_write += any(p.name.startswith(".tmp-step-") for p in (out / "checkpoints").glob(".tmp-*"))
    assert len(kills) >= 10, f"only {len(kills)} kills before the run ended: {kills}"
    assert mid_write >= 1, "no kill landed during a checkpoint write"

    log = tmp_path / "final.log"
    runs.append((log, newest_step(out)))
    assert launch(data, out, log).wait(timeout=120) == 0, log.read_text()

    for log, expected in runs:  # every resume took the newest complete checkpoint, never a damaged one
        text = log.read_text()
        assert "damaged" not in text and "Traceback" not in text, text
        resumed = re.search(r"resuming from \S+ \(step (\d+)\)", text)
        if resumed:  # absent when the kill came before the resume was logged
            assert int(resumed.group(1)) == expected, text
    assert newest_step(out) == MAX_STEPS
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
