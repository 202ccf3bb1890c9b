"""Crash safety: `train.py` killed with SIGKILL again and again still ends on the uninterrupted run's weights.

The test process is the killer: it launches `train.py`, picks each kill's moment from a seeded
generator (so a failure replays with the same schedule), and relaunches the same command, which
resumes with ``--resume auto``. Each moment is a point of the run's progress, never a time, so that a
loaded machine changes how long the test takes but not what it tests. Four kinds of moment, the first
three once the launch has started (resumed and tidied ``OUT``):

- ``write``: as soon as this launch starts writing a checkpoint (a temporary folder appears, or is made
  again under a stale one's name), i.e. in the middle of writing it; a stale temporary folder that an
  earlier kill left stays until a launch writes that step again, and does not count;
- ``step``: as soon as the metrics row of a chosen later step is written, before its checkpoint;
- ``checkpoint``: as soon as the checkpoint of a chosen later step is published;
- ``start``: as soon as the run logs a chosen line of its start-up: before the data scan, or after
  the resume, before the first step.
"""

import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_run import ROOT, make_images  # tests/training is on sys.path

from diffusion.io.checkpoint import list_checkpoints, load_pickle_free

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


def wait_for(condition, proc: subprocess.Popen, timeout: float = 600.0) -> bool:
    """Poll ``condition`` every millisecond; False if the process ended first. The timeout only stops a hung
    run: it is long enough for any load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError(f"train.py made no progress for {timeout:g} s")


def weights(out: Path) -> dict[str, torch.Tensor]:
    _, last = list_checkpoints(out)[-1]
    return {
        **{f"model.{k}": v for k, v in load_file(last / "model.safetensors").items()},
        **{f"ema.{k}": v for k, v in load_file(last / "ema.safetensors").items()},
        **{f"final.{k}": v for k, v in load_file(out / "model" / "unet" / "model.safetensors").items()},
    }


def pending_writes(out: Path) -> dict[str, int]:
    """The checkpoint temporary folders in ``out``, each with its change time: a folder made again under the
    name of a stale one (``begin_checkpoint`` removes it first) is another folder."""
    found = {}
    for path in (out / "checkpoints").glob(".tmp-step-*"):
        with contextlib.suppress(FileNotFoundError):  # published or removed since the listing
            found[path.name] = path.stat().st_ctime_ns
    return found


def logged_step(out: Path) -> int:
    """The step of the last complete metrics row (0 if none)."""
    path = out / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []  # a line without its newline is cut
    return json.loads(lines[-1])["step"] if lines else 0


def started(log: Path) -> bool:
    """Whether the run has logged its start-up summary, i.e. resumed (if it does) and tidied OUT."""
    return "steps: " in log.read_text()


def start_step(log: Path) -> int | None:
    """The step the run's start-up summary says it starts from; None if it was killed before saying."""
    found = re.search(
        r"^steps: \d+ in total .*; (?:a new run from step 0|resuming from \S+ at step (\d+))", log.read_text(), re.M
    )
    return None if found is None else int(found.group(1) or 0)


def kill_moment(kind: str, rng: random.Random, out: Path, log: Path, expected: int, stale: dict[str, int]):
    """The condition that marks the kill's moment; ``stale`` is `pending_writes` at the launch."""
    target = min(expected + rng.randint(1, 3), MAX_STEPS - 1)
    if kind == "write":
        return lambda: started(log) and bool(pending_writes(out).items() - stale.items())
    if kind == "step":  # a row of this session: rows past the checkpoint are trimmed at start-up
        return lambda: started(log) and logged_step(out) >= target
    if kind == "checkpoint":
        return lambda: started(log) and newest_step(out) >= target
    line = rng.choice(["listing ", "steps: "])
    return lambda: line in log.read_text()


def test_sigkill_at_random_moments_never_loses_or_changes_the_run(tmp_path):
    data = make_images(tmp_path / "data")
    straight = tmp_path / "straight"
    assert launch(data, straight, tmp_path / "straight.log").wait(timeout=600) == 0

    rng = random.Random(SEED)
    out, kills, mid_write, runs = tmp_path / "out", [], 0, []
    while len(kills) < KILLS:
        expected = newest_step(out)  # what this launch must resume from
        stale = pending_writes(out)  # left by earlier kills: not this launch's writes
        log = tmp_path / f"run-{len(runs)}.log"
        proc = launch(data, out, log)
        runs.append((log, expected))
        kind = rng.choice(["write", "step", "checkpoint", "start"])
        hit = wait_for(kill_moment(kind, rng, out, log, expected, stale), proc)
        if not hit or proc.poll() is not None:  # the run ended before this kill: it must have finished
            assert proc.wait() == 0, log.read_text()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(kind)
        if kind != "start":  # it landed where its moment says: after this launch's start-up
            assert start_step(log) == expected, f"{kind} kill of {log.name} before its start-up:\n{log.read_text()}"
        mid_write += bool(pending_writes(out).items() - stale.items())  # a write of this launch, cut short
    assert len(kills) >= 10, f"only {len(kills)} kills before the run ended: {kills}"
    assert mid_write >= 1, "no kill landed during a checkpoint write"

    log = tmp_path / "final.log"
    runs.append((log, newest_step(out)))
    assert launch(data, out, log).wait(timeout=600) == 0, log.read_text()

    for log, expected in runs:  # every resume took the newest complete checkpoint, never a damaged one
        text = log.read_text()
        assert "damaged" not in text and "Traceback" not in text, text
        resumed = re.search(r"resuming from \S+ \(step (\d+)\)", text)
        if resumed:  # absent when the kill came before the resume was logged
            assert int(resumed.group(1)) == expected, text
        began = start_step(log)  # None: killed before the start-up summary
        assert began in (None, expected), f"{log.name} started at step {began}, not at the newest checkpoint {expected}"
    # The last launch resumed where the kills left the run, and ran only the steps that were left.
    last = runs[-1][1]
    assert last > 0 and start_step(log) == last, f"the last run started at step {start_step(log)}, not {last}"
    assert log.read_text().count("checkpoint written") == MAX_STEPS - last
    assert newest_step(out) == MAX_STEPS
    optimizer = load_pickle_free(out / "checkpoints" / f"step-{MAX_STEPS}" / "optimizer.pt")
    assert {int(s["step"]) for s in optimizer["optimizer"]["state"].values()} == {MAX_STEPS}
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
