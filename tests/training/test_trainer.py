"""The training loop end to end, on tiny models and generated images."""

import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_run import ROOT, TINY, config, final_weights, make_images  # tests/training is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode

from diffusion.io.checkpoint import list_checkpoints
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import TrainConfig, Trainer, TrainingError
from diffusion.training import trainer as trainer_module
from diffusion.training.config import scheduler_config
from diffusion.training.loss import drop_labels


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")


def test_tiny_run_writes_every_output(tmp_path, data):
    c = config(tmp_path, sample_every=2, sample_steps=2, num_samples=4, checkpoint_every=2, keep_checkpoints=1)
    model_dir = Trainer(c, TINY).train()
    out = tmp_path / "out"
    assert model_dir == out / "model"
    assert [s for s, _ in list_checkpoints(out)] == [4]  # keep_checkpoints=1 pruned step-2
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-2.png", "step-4.png"]
    grid = Image.open(out / "samples" / "step-4.png")
    assert (
        grid.size == (2 * 10 + 2, 2 * 10 + 2) and grid.text["sampler"] == "dpmsolver++3m-sde"
    )  # 2x2 grid of 8px + 2px pads
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["img_per_s"] > 0 for r in rows)
    assert rows[0]["lr"] == pytest.approx(2e-4 * 2 / 2) and rows[-1]["epoch"] == pytest.approx(2.0)
    assert json.loads((out / "train_config.json").read_text())["train"]["max_steps"] == 4
    assert Image.open(out / "loss.png").size == (640, 360)
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    assert pipe.class_names == [] and pipe.unet.config.num_classes is None  # unconditional: no classes
    images = pipe(num_images=2, num_inference_steps=2, output_type="tensor", seed=0)
    assert images.shape == (2, 3, 8, 8)
    ema = load_file(list_checkpoints(out)[-1][1] / "ema.safetensors")
    torch.testing.assert_close(pipe.unet.state_dict()["conv_in.weight"], ema["conv_in.weight"], rtol=0, atol=0)


def test_a_tiny_model_learns_in_twenty_steps(tmp_path, data):
    """The loss falls on one batch: the same 8 images every step, new noise and timesteps each time.
    (The slow tests/models/test_unet.py::test_tiny_model_overfits_one_batch goes further, without the loop.)"""
    c = config(tmp_path, batch_size=8, max_steps=20, lr=3e-3, warmup_steps=0, hflip=False, checkpoint_every=20)
    Trainer(c, TINY).train()
    losses = [json.loads(r)["loss"] for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses  # a loop that does not learn stays near its first losses


def adam_steps(trainer: Trainer) -> int:
    """AdamW's step count: the updates the weights have had, restored from a checkpoint or made since."""
    state = getattr(trainer.optimizer, "optimizer", trainer.optimizer).state
    counts = {int(s["step"]) for s in state.values()}
    assert len(counts) <= 1, counts
    return counts.pop() if counts else 0


def counting_steps(monkeypatch, trainer: Trainer) -> list[int]:
    """The optimiser's step count at each `training_loss` call (each micro-batch) of ``trainer``."""
    seen, real = [], trainer_module.training_loss

    def spy(*args, **kwargs):
        seen.append(adam_steps(trainer))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", spy)
    return seen


def cosine_lr(step: int, lr: float = 2e-4, warmup: int = 2, total: int = 6) -> float:
    """The learning rate after ``step`` steps: linear warmup, then a half cosine to 0 (see test_train_config.py)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def test_resume_reproduces_the_uninterrupted_run_bit_exactly(tmp_path, data, monkeypatch, caplog):
    # Dropout, random crops, flips, gradient accumulation, warmup and a cosine schedule all in play.
    unet = TINY | {"dropout": 0.1}
    knobs = dict(random_crop=True, grad_accum=2, lr_schedule="cosine", max_steps=6, checkpoint_every=3)
    Trainer(config(tmp_path, out="straight", **knobs), unet).train()
    assert Trainer(config(tmp_path, out="resumed", **knobs), unet).train(stop_at_step=3) is None
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [3]
    resumed = Trainer(config(tmp_path, out="resumed", **knobs), unet)
    steps_seen = counting_steps(monkeypatch, resumed)
    with caplog.at_level(logging.INFO, logger="diffusion"):
        resumed.train()  # --resume auto picks up step-3
    # It resumed: the log says so, and AdamW went on from the checkpoint's 3 steps for 3 more (2 micro-batches each).
    step_3 = tmp_path / "resumed" / "checkpoints" / "step-3"
    assert f"steps: 6 in total (--max-steps 6); resuming from {step_3} at step 3 (3 to go)" in caplog.messages
    assert steps_seen == [3, 3, 4, 4, 5, 5] and adam_steps(resumed) == 6
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(r)["loss"] for r in metrics] == [
        json.loads(r)["loss"] for r in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [json.loads(r)["lr"] for r in metrics] == pytest.approx([cosine_lr(s) for s in range(1, 7)], rel=1e-12)


def test_resume_never_starts_over_and_explicit_path_is_checked(tmp_path, data):
    Trainer(config(tmp_path, max_steps=2)).train()
    c = config(tmp_path, max_steps=2, resume="never")
    Trainer(c).train()  # starts from step 0 again; the first run's step-2 is moved to OUT/abandoned/
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2]
    (old,) = (tmp_path / "out" / "abandoned").iterdir()
    assert (old / "checkpoints" / "step-2" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        Trainer(config(tmp_path, max_steps=3, resume=str(tmp_path / "nope"))).train()


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, data):
    Trainer(config(tmp_path, out="fp32", max_steps=2)).train()
    Trainer(config(tmp_path, out="bf16", max_steps=2, mixed_precision="bf16")).train()
    loss = {
        p: [json.loads(r)["loss"] for r in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
        for p in ("fp32", "bf16")
    }
    # Same data, noise and init: bf16 autocast changes the loss only slightly, but does change it.
    assert loss["bf16"] != loss["fp32"]
    np.testing.assert_allclose(loss["bf16"], loss["fp32"], rtol=0.05)
    weights = final_weights(tmp_path / "bf16")
    weights.pop("ema.__num_updates__")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # weights and EMA stay fp32


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path, data, monkeypatch):
    Trainer(config(tmp_path, max_steps=2)).train()
    real = trainer_module.training_loss
    monkeypatch.setattr(trainer_module, "training_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match=r"loss became nan at step 3; .* last checkpoint is intact"):
        Trainer(config(tmp_path, max_steps=4)).train()
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2]


def test_needs_a_length_and_divisible_batches(tmp_path, data):
    with pytest.raises(ValueError, match="give --max-steps or --epochs"):
        Trainer(config(tmp_path, max_steps=None))
    assert Trainer(config(tmp_path, max_steps=None, epochs=3)).total_steps == 6  # 8 images / batch 4 * 3
    assert Trainer(config(tmp_path, max_steps=5, epochs=3)).total_steps == 5
    with pytest.raises(ValueError, match=r"--batch-size 4 must be divisible by --grad-accum \(3\)"):
        Trainer(config(tmp_path, grad_accum=3)).train()


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, **kwargs)


def test_cli_trains_and_reports_bad_input_in_one_line(tmp_path, data):
    common = ["--preset", "tiny", "--image-size", "8", "--batch-size", "4", "--sample-every", "0"]
    done = run_cli(
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--base-channels",
        "16",
        "--channel-mult",
        "1,2",
        "--norm-groups",
        "8",
        "--attention-levels",
        "1",
        *common,
    )
    assert done.returncode == 0, done.stderr
    assert "model written to" in done.stdout
    assert json.loads((tmp_path / "o" / "model" / "unet" / "config.json").read_text())["base_channels"] == 16
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    cases = [
        (
            ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--max-steps", "1"],
            "data folder .*missing not found",
        ),
        (
            ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x"), "--max-steps", "1"],
            "no image files found",
        ),
        (
            ["--data", str(data), "--out", str(tmp_path / "file" / "sub"), "--max-steps", "1"],
            "output folder .* is not writable",
        ),
        (
            ["--data", str(data), "--out", str(tmp_path / "x"), "--max-steps", "0"],
            "--max-steps must be a positive integer",
        ),
        (
            ["--data", str(data), "--out", str(tmp_path / "x"), "--max-steps", "1", "--preset", "huge"],
            "argument --preset: invalid choice: 'huge'",
        ),
    ]
    for args, message in cases:
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("diffusion-train: error: ") and __import__("re").search(message, last), last


def test_sigterm_writes_a_checkpoint_then_exits(tmp_path, data):
    args = [
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--preset",
        "tiny",
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--sample-every",
        "0",
    ]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "o" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    steps = [s for s, _ in list_checkpoints(tmp_path / "o")]
    assert len(steps) == 1 and steps[0] >= 10  # log_every=10: metrics appear after 10 steps
    assert f"stopped by SIGTERM at step {steps[0]}; checkpoint written" in err


def test_the_step_a_run_stops_at_gets_its_metrics_row(tmp_path, data, monkeypatch):
    """Ctrl-C, SIGTERM or ``stop_at_step`` between two logged steps: the last step is logged too."""
    real, calls = trainer_module.training_loss, []

    def interrupt_in_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler lets the step finish, then the run stops
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", interrupt_in_step_3)
    c = config(tmp_path, max_steps=6, log_every=4, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGINT at step 3; checkpoint written"):
        Trainer(c, TINY).train()
    metrics = tmp_path / "out" / "metrics.jsonl"
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()] == [3]
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [3]
    monkeypatch.setattr(trainer_module, "training_loss", real)
    assert Trainer(c, TINY).train(stop_at_step=5) is None
    Trainer(c, TINY).train()  # the last step of a run is logged although 6 is no multiple of 4
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()] == [3, 4, 5, 6]


def free_port() -> int:
    """A port nothing listens on: the one the system picks for a socket bound to port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path, data):
    # accelerate 1.x runs `launch --cpu --num_processes 2` as ONE process unless MPI is installed; torchrun
    # (which `--multi_gpu` uses) plus ACCELERATE_USE_CPU=1 gives real DDP over gloo on the CPU.
    env = os.environ | {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--main_process_port",
        str(free_port()),  # not torchrun's default 29500, which another run on this machine may hold
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "train.py"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--checkpoint-every",
        "2",
        "--sample-every",
        "0",
        "--log-every",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model written to") == 1  # only the main process reports
    step, path = list_checkpoints(out)[-1]
    assert step == 3 and sorted(p.name for p in path.glob("rng-*")) == [
        "rng-0.safetensors",
        "rng-1.safetensors",
    ]
    assert json.loads((path / "trainer_state.json").read_text())["world_size"] == 2
    assert (out / "model" / "unet" / "model.safetensors").is_file()
    # A longer run resumes on both processes from the main process's choice: step-3 is damaged, so step-2.
    (path / "model.safetensors").write_bytes(b"")
    command[command.index("--max-steps") + 1] = "4"
    command[command.index("--main_process_port") + 1] = str(free_port())
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("is damaged") == 1 and done.stderr.count("(step 2) [--resume auto]") == 2
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and (out / "checkpoints" / "corrupt-step-3").is_dir()


def launch_two_cpu_processes(
    data, out, *args: str, timeout: float = 300, script: Path = ROOT / "train.py"
) -> subprocess.CompletedProcess:
    """``train.py`` under ``accelerate launch`` with two gloo processes on the CPU (see the test below)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--main_process_port"]
    command += [str(free_port()), "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", str(script), "--data", str(data), "--out", str(out)]
    command += ["--preset", "tiny", "--image-size", "8", "--batch-size", "4", "--sample-every", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("case", ["only damaged checkpoints", "damaged --resume PATH", "changed settings"])
def test_two_processes_that_cannot_resume_all_stop_with_one_line(tmp_path, data, case):
    # The main process alone checks the checkpoints; when it refuses, the other process must stop with it
    # at once (not wait in the broadcast of its choice until the launcher gives up) and say the same.
    out = tmp_path / "ddp"
    done = launch_two_cpu_processes(data, out, "--max-steps", "2", "--checkpoint-every", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    step_2 = out / "checkpoints" / "step-2"
    args = ["--max-steps", "4", "--checkpoint-every", "2"]
    if case == "only damaged checkpoints":
        (step_2 / "model.safetensors").write_bytes(b"")
        expected = f"no intact checkpoint in {out / 'checkpoints'}, only damaged ones (corrupt-step-2); "
    elif case == "damaged --resume PATH":
        (step_2 / "model.safetensors").write_bytes(b"")
        args += ["--resume", str(step_2)]
        expected = f"--resume {step_2}: damaged checkpoint: "
    else:
        args += ["--lr", "0.001"]
        expected = f"checkpoint {step_2} was written with other settings: --lr "
    start = time.monotonic()
    done = launch_two_cpu_processes(data, out, *args, timeout=120)  # gloo's own timeout is 30 minutes
    assert done.returncode != 0 and time.monotonic() - start < 120
    # One line from each process; the two processes share stderr, so one's line may end up glued to the other's.
    errors = re.findall(r"diffusion-train: error: (.*?)(?=diffusion-train: error: |\n)", done.stderr)
    assert len(errors) == 2 and errors[0] == errors[1], done.stderr[-3000:]
    assert errors[0].startswith(expected), errors[0]
    # No process's traceback: the only one is the launcher's own report that its processes failed.
    assert "[rank" not in done.stderr and done.stderr.count("Traceback") <= 1, done.stderr[-3000:]
    assert "ChildFailedError" in done.stderr.split("Traceback")[-1]


def test_metrics_and_sample_grids_also_go_to_tensorboard_when_installed(tmp_path, data):
    pytest.importorskip("tensorboard")  # an optional dependency; the test extra installs it
    Trainer(config(tmp_path, max_steps=2, sample_every=2, sample_steps=2, num_samples=4), TINY).train()
    run_dir = tmp_path / "out" / "pixel-diffusion"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # scalars and images; hparams sit in a subfolder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == [1, 2]
    grid = Image.open(tmp_path / "out" / "samples" / "step-2.png")
    assert [(e.step, e.width, e.height) for e in accumulator.Images("samples")] == [(2, *grid.size)] == [(2, 22, 22)]


def test_resume_refuses_changed_settings_but_allows_a_longer_run(tmp_path, data):
    Trainer(config(tmp_path, max_steps=2)).train()
    with pytest.raises(
        ValueError,
        match=r"other settings: --lr 0.0002 -> 0.001; --seed 0 -> 5\. To start a new run, use a new --out \(or "
        r"--resume never, which moves this run to .*out/abandoned/ and starts over\); to continue this one, use the "
        r"same settings$",
    ):
        Trainer(config(tmp_path, max_steps=4, seed=5, lr=1e-3)).train()
    with pytest.raises(ValueError, match="other settings: the UNet config"):
        Trainer(config(tmp_path, max_steps=4), TINY).train()
    Trainer(config(tmp_path, max_steps=3, log_every=2)).train()  # length and intervals may change
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2, 3]


def test_a_new_history_never_mixes_with_an_abandoned_one(tmp_path, data):
    Trainer(config(tmp_path, max_steps=4)).train()
    Trainer(config(tmp_path, max_steps=4, resume="never")).train(stop_at_step=1)
    out = tmp_path / "out"
    assert [s for s, _ in list_checkpoints(out)] == [1]  # step-2 and step-4 of the old run are moved aside
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a line cut short by a crash
    Trainer(config(tmp_path, max_steps=2)).train()
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize(
    "model_config, message",
    [
        ({"dropout": "0.1"}, r"--model-config .*: a value has the wrong type"),
        ({"channel_mult": 2}, r"--model-config .*: a value has the wrong type"),
        ({"out_channels": 6}, r"out_channels must equal --channels \(3\)"),
        ({"num_classes": 10}, "num_classes comes from the data: use --class-cond"),
        ({"base_chanels": 8}, r"unknown UNetConfig field\(s\) \['base_chanels'\]"),
    ],
)
def test_bad_model_config_files_are_clear_errors(tmp_path, data, model_config, message):
    (tmp_path / "m.json").write_text(json.dumps(model_config))
    with pytest.raises(ValueError, match=message):
        Trainer(config(tmp_path, model_config=str(tmp_path / "m.json")))


def test_zero_terminal_snr_needs_a_prediction_type_that_survives_it(tmp_path):
    with pytest.raises(ValueError, match="--zero-terminal-snr needs --prediction-type v_prediction or sample"):
        config(tmp_path, zero_terminal_snr=True)
    assert config(tmp_path, zero_terminal_snr=True, prediction_type="v_prediction").zero_terminal_snr


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_prediction_type_reaches_the_loss_and_the_saved_model(tmp_path, data, monkeypatch, prediction_type):
    """--prediction-type is what the loss trains (the trainer's noise schedule) and what the model folder's
    sampler reads back."""
    assert scheduler_config(TrainConfig(prediction_type=prediction_type)).prediction_type == prediction_type
    seen, real = [], trainer_module.training_loss

    def spy(forward, schedule, *args, **kwargs):
        seen.append(schedule.config.prediction_type)
        return real(forward, schedule, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", spy)
    trainer = Trainer(config(tmp_path, max_steps=2, prediction_type=prediction_type), TINY)
    model_dir = trainer.train()
    assert trainer.schedule.config.prediction_type == prediction_type and seen == [prediction_type] * 2
    saved = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == prediction_type
    assert DiffusionPipeline.from_pretrained(model_dir).scheduler.config.prediction_type == prediction_type


def test_preset_choices_are_the_presets():
    from typing import get_args, get_type_hints

    from diffusion.models import PRESETS

    assert get_args(get_type_hints(TrainConfig)["preset"]) == tuple(PRESETS)


# ----- class-conditional training -----


def test_class_conditional_run_stores_classes_and_trains_both_branches(tmp_path, data):
    c = config(tmp_path, class_cond=True, cond_drop_prob=0.5, sample_every=4, sample_steps=2, num_samples=4)
    model_dir = Trainer(c, TINY).train()
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    assert pipe.class_names == ["cats", "dogs"] and pipe.unet.config.num_classes == 2
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["class_names"] == ["cats", "dogs"]
    state = final_weights(tmp_path / "out")  # one embedding row per class, and the null class
    assert state["class_embed.weight"].shape == (3, pipe.unet.time_embed.linear_2.out_features)
    grid = Image.open(tmp_path / "out" / "samples" / "step-4.png")
    assert grid.size == (22, 22)
    images = pipe(num_images=2, num_inference_steps=2, class_labels=["dogs", "cats"], output_type="tensor")
    assert images.shape == (2, 3, 8, 8)


def test_class_conditional_training_feeds_labels_with_dropout(tmp_path, data, monkeypatch):
    """The model sees each image's folder label, or the null label 2 at the drop rate."""
    seen = []
    forward = trainer_module.UNet.forward

    def spy(self, sample, timesteps, class_labels=None):
        seen.append(class_labels.clone())
        return forward(self, sample, timesteps, class_labels)

    monkeypatch.setattr(trainer_module.UNet, "forward", spy)
    Trainer(config(tmp_path, class_cond=True, cond_drop_prob=0.0, max_steps=2), TINY).train()
    # Two steps of 4 are one pass over the 8 images, 4 in each class folder: every label once, none dropped.
    assert len(seen) == 2 and sorted(torch.cat(seen).tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    seen.clear()
    Trainer(config(tmp_path, out="all-null", class_cond=True, cond_drop_prob=1.0, max_steps=2), TINY).train()
    assert [labels.tolist() for labels in seen] == [[2, 2, 2, 2]] * 2


def test_label_dropout_rate_is_within_statistical_bounds():
    """Each label is dropped independently with probability p: the count is Binomial(n, p)."""
    n, null = 100_000, 10
    labels = torch.arange(n) % null
    for p in (0.0, 0.1, 0.5, 1.0):
        dropped = drop_labels(labels, null, p, torch.Generator().manual_seed(0))
        count = (dropped == null).sum().item()
        bound = 5 * (n * p * (1 - p)) ** 0.5  # five standard deviations
        assert abs(count - n * p) <= bound
        kept = dropped != null
        assert torch.equal(dropped[kept], labels[kept])  # the others are untouched


def test_class_conditional_needs_class_folders_and_the_same_classes_on_resume(tmp_path, data):
    flat = tmp_path / "flat"
    make_images(flat / "x")
    Image.new("RGB", (8, 8)).save(flat / "top.png")
    with pytest.raises(ValueError, match=r"--class-cond needs every image in a class subfolder .* 1 image\(s\) are at"):
        Trainer(config(tmp_path, data=str(flat), class_cond=True), TINY)
    Trainer(config(tmp_path, class_cond=True), TINY).train(stop_at_step=2)
    (data / "birds").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(data / "birds" / f"{i}.png")
    (data / "cats" / "1.png").unlink()
    (data / "dogs" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"other settings: .*the UNet config; the class subfolders"):
        Trainer(config(tmp_path, class_cond=True), TINY).train()


def test_cond_drop_prob_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--cond-drop-prob must be in \[0, 1\], got 1.5"):
        config(tmp_path, cond_drop_prob=1.5)


def test_checkpoints_from_before_a_setting_existed_resume_with_its_default(tmp_path, data, caplog):
    Trainer(config(tmp_path), TINY).train(stop_at_step=2)
    _, path = list_checkpoints(tmp_path / "out")[-1]
    state = json.loads((path / "trainer_state.json").read_text())
    for key in ("class_cond", "cond_drop_prob"):  # a checkpoint of a version without class conditioning
        del state["config"][key]
    del state["class_names"], state["manifest"]  # and without manifests
    (path / "trainer_state.json").write_text(json.dumps(state))
    (path / "manifest.json").unlink()
    # An unconditional run does not use --cond-drop-prob, so changing it does not make another run.
    with caplog.at_level(logging.INFO, logger="diffusion.io.checkpoint"):
        assert Trainer(config(tmp_path, cond_drop_prob=0.3), TINY).train() == tmp_path / "out" / "model"
    assert f"{path} has no manifest (written by an older version): not verified" in caplog.text


def test_fused_adamw_trains_like_the_default_optimizer(tmp_path, data):
    """The fused kernel (faster: docs/benchmarks.md, "Every lever, one line each") rounds differently, nothing more."""
    Trainer(config(tmp_path, out="plain", max_steps=3), TINY).train()
    trainer = Trainer(config(tmp_path, out="fused", max_steps=3, fused_adamw=True), TINY)
    trainer.train()
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer).defaults["fused"] is True
    plain, fused = final_weights(tmp_path / "plain"), final_weights(tmp_path / "fused")
    assert plain.keys() == fused.keys()
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-5)
    losses = [
        [json.loads(r)["loss"] for r in (tmp_path / o / "metrics.jsonl").read_text().splitlines()]
        for o in ("plain", "fused")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_fewer_images_on_resume_names_the_entries_this_version_passes_over(tmp_path, data):
    """A run started by a version that counted images in hidden folders (.ipynb_checkpoints) resumes with fewer."""
    Trainer(config(tmp_path), TINY).train(stop_at_step=2)
    hidden = data / "cats" / ".ipynb_checkpoints"
    hidden.mkdir()
    (data / "cats" / "1.png").rename(hidden / "1-checkpoint.png")
    with pytest.raises(ValueError) as refused:
        Trainer(config(tmp_path), TINY).train()
    assert (
        "other settings: the number of images (8 -> 7) (this version passes over 1 hidden or tool-made entries such "
        "as cats/.ipynb_checkpoints; move them out of the data folder, or use a new --out). To start a new run"
    ) in str(refused.value)


class HostSyncs(TorchDispatchMode):
    """Counts `aten::_local_scalar_dense` (behind `.item()` and `if tensor:`: on an accelerator, the host
    waits for the device) outside torch.optim, whose AdamW keeps its step counters on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += not any("torch/optim" in frame.filename for frame in traceback.extract_stack())
        return func(*args, **(kwargs or {}))


def test_a_training_step_that_does_not_log_never_waits_for_the_host(tmp_path, data):
    """The loss, the NaN check and the stop signal stay off the host between logged steps: a run of 12 steps
    reads the device exactly as often as a run of 4 (its set-up, its one logged step and its checks)."""
    counts = []
    for steps in (4, 12):
        trainer = Trainer(config(tmp_path, out=f"o{steps}", max_steps=steps, log_every=100, checkpoint_every=100))
        with HostSyncs() as syncs:
            trainer.train()
        counts.append(syncs.count)
    assert counts[0] == counts[1]


def test_a_nan_between_logged_steps_names_the_steps_and_saves_nothing(tmp_path, data, monkeypatch):
    real = trainer_module.training_loss
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(trainer_module, "training_loss", nan_at_step_3)
    message = r"^loss became nan or infinite at one of steps 1-4; stopped without saving it\. The last checkpoint"
    with pytest.raises(TrainingError, match=message):
        Trainer(config(tmp_path, max_steps=6, log_every=4, checkpoint_every=4)).train()
    assert list_checkpoints(tmp_path / "out") == []


NAN_ON_THE_SECOND_PROCESS = """
import os, sys
import diffusion.training.trainer as trainer
from diffusion.cli import train_main
real, calls = trainer.training_loss, [0]
def loss(*args, **kwargs):  # NaN in the third step, on the second process only
    calls[0] += 1
    return real(*args, **kwargs) * (float("nan") if calls[0] == 3 and os.environ["RANK"] == "1" else 1.0)
trainer.training_loss = loss
sys.exit(train_main())
"""


def test_a_nan_on_one_process_stops_every_process_before_any_output(tmp_path, data):
    """Gradients are averaged, so a NaN on one process reaches the weights of all: every process sees it at
    the same check (here the sample grid of step 3, between logged steps 0 and 4) and stops there."""
    script = tmp_path / "nan_on_the_second_process.py"
    script.write_text(NAN_ON_THE_SECOND_PROCESS)
    args = ["--max-steps", "8", "--log-every", "4", "--checkpoint-every", "8", "--sample-every", "3"]
    args += ["--sample-steps", "2", "--num-samples", "1"]
    done = launch_two_cpu_processes(data, tmp_path / "ddp", *args, timeout=120, script=script)
    assert done.returncode != 0
    message = "loss became nan or infinite at one of steps 1-3; stopped without saving it. The last checkpoint"
    assert done.stderr.count(f"diffusion-train: error: {message}") == 2, done.stderr[-3000:]
    assert not (tmp_path / "ddp" / "samples").exists() and list_checkpoints(tmp_path / "ddp") == []
