"""`RunState` written and read back, and `check_same_run`'s refusals, without the training loop."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from tiny_run import make_images  # tests/training is on sys.path
from torch import nn

from diffusion.data import ImageFolder
from diffusion.models import UNetConfig
from diffusion.training import TrainConfig
from diffusion.training.checkpointing import (
    RunState,
    check_same_run,
    read_rng_states,
    read_run_state,
    write_rng_states,
    write_run_state,
)
from diffusion.training.ema import EMA


def make_run(seed: int, init_scale: float) -> RunState:
    """A linear model with AdamW, a 1/(s+1) learning-rate schedule, a grad scaler and an EMA."""
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return RunState(model, optimizer, lr_scheduler, scaler, EMA(model, 0.9), torch.Generator().manual_seed(seed))


def advance(run: RunState, steps: int) -> None:
    """Optimiser steps on inputs drawn from the run's generator, as the trainer's steps are."""
    for _ in range(steps):
        loss = run.model(torch.randn(4, 3, generator=run.generator)).square().mean()
        loss.backward()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.lr_scheduler.step()
        run.ema.update(run.model)


def snapshot(run: RunState) -> dict[str, torch.Tensor]:
    adam = {f"adam.{k}.{i}": v for i, s in run.optimizer.state.items() for k, v in s.items()}
    ema = {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    return {k: v.clone() for k, v in (run.model.state_dict() | ema | adam).items()}


def test_a_run_state_read_back_continues_exactly_as_the_written_one(tmp_path):
    written = make_run(seed=0, init_scale=1024.0)
    advance(written, 3)
    write_run_state(tmp_path, written)
    write_rng_states(tmp_path, written, rank=0)
    at_save = snapshot(written)
    global_draw = torch.rand(5)  # torch's global RNG (dropout's) right after the save
    advance(written, 2)

    read = make_run(seed=1, init_scale=1.0)  # other weights, generator and scale
    read_run_state(tmp_path, read)
    read_rng_states(tmp_path, read, rank=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.pt",
        "rng-0.safetensors",
    ]
    restored = snapshot(read)
    assert restored.keys() == at_save.keys()
    for name in at_save:
        torch.testing.assert_close(restored[name], at_save[name], rtol=0, atol=0, msg=name)
    assert {int(s["step"]) for s in read.optimizer.state.values()} == {3}  # AdamW's count: 3 updates
    assert read.lr_scheduler.last_epoch == 3 and read.lr_scheduler.get_last_lr() == [pytest.approx(0.1 / 4)]
    assert read.ema.num_updates == 3 and read.scaler.get_scale() == 1024.0
    torch.testing.assert_close(torch.rand(5), global_draw, rtol=0, atol=0)
    advance(read, 2)  # the same two steps: the generator's draws and every state agree
    after, expected = snapshot(read), snapshot(written)
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.fixture
def run(tmp_path) -> tuple[Path, dict, TrainConfig, UNetConfig, ImageFolder]:
    """A checkpoint's ``trainer_state.json`` fields for an 8-image unconditional run, with what it ran on."""
    config = TrainConfig(data=str(make_images(tmp_path / "data")), out=str(tmp_path / "out"), max_steps=4)
    unet = UNetConfig()
    dataset = ImageFolder(config.data, (8, 8), 3)
    state = {"config": config.to_dict(), "unet": unet.to_dict(), "class_names": [], "dataset_size": 8}
    return tmp_path / "out" / "checkpoints" / "step-2", state | {"world_size": 1}, config, unet, dataset


def test_the_same_run_may_change_its_length_intervals_and_unused_settings(run):
    path, state, config, unet, dataset = run
    longer = dataclasses.replace(config, max_steps=10, log_every=5, checkpoint_every=3, cond_drop_prob=0.5)
    check_same_run(path, state, longer, unet, [], dataset, 1)  # cond_drop_prob: unused unconditionally
    older = state | {"config": {k: v for k, v in state["config"].items() if k != "snr_gamma"}}
    check_same_run(path, older, config, unet, [], dataset, 1)  # a field added since: its default then
    # The same longer run with one real change is refused, naming only that change.
    with pytest.raises(ValueError, match=r"other settings: --lr 0\.0002 -> 0\.001\. To start"):
        check_same_run(path, state, dataclasses.replace(longer, lr=1e-3), unet, [], dataset, 1)


def test_a_changed_setting_is_refused_with_each_change_named(run):
    path, state, config, unet, dataset = run
    changed = dataclasses.replace(config, lr=1e-3, prediction_type="v_prediction")
    message = (
        f"checkpoint {path} was written with other settings: --lr 0.0002 -> 0.001; --prediction-type 'epsilon' -> "
        f"'v_prediction'; the UNet config. To start a new run, use a new --out (or --resume never, which moves "
        f"this run to {Path(config.out) / 'abandoned'}/ and starts over); to continue this one, use the same settings"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_same_run(path, state, changed, dataclasses.replace(unet, base_channels=32), [], dataset, 1)
    with pytest.raises(ValueError, match=r"the class subfolders \(\[\] -> \['cats', 'dogs'\]\)"):
        check_same_run(path, state, config, unet, ["cats", "dogs"], dataset, 1)
    message = f"checkpoint {path} was written by 1 process(es); resume it with the same number (this run has 2)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_same_run(path, state, config, unet, [], dataset, 2)
