"""A restart keeps what it abandons: `--resume PATH` to an older step and `--resume never` move the
previous history to OUT/abandoned/<UTC time>-<reason>/, whole, and `--resume auto` never looks there."""

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_trainer import TINY, config, make_images  # tests/training is on sys.path

from diffusion.checkpoint import list_checkpoints
from diffusion.training import Trainer

GRIDS = dict(sample_every=2, sample_steps=2, num_samples=4)


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def the_abandoned_folder(out: Path, reason: str) -> Path:
    """The one folder under OUT/abandoned/, checked to be named <UTC YYYYmmdd-HHMMSS>-<reason> of about now."""
    (folder,) = (out / "abandoned").iterdir()
    stamp, _, found = folder.name.partition(f"-{reason}")
    assert found == "" and folder.name.endswith(reason), folder.name
    when = datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    return folder


def test_resume_from_an_older_checkpoint_moves_the_later_history_aside(tmp_path, data, caplog):
    Trainer(config(tmp_path, max_steps=6, **GRIDS), TINY).train()  # step-2, 4, 6, grids, model, loss.png
    out = tmp_path / "out"
    old_metrics = (out / "metrics.jsonl").read_text()
    inodes = {name: (out / "checkpoints" / name).stat().st_ino for name in ("step-4", "step-6")}
    step_2 = out / "checkpoints" / "step-2"
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=6, resume=str(step_2), **GRIDS), TINY).train(stop_at_step=3)

    folder = the_abandoned_folder(out, "resumed-from-step-2")
    assert f"is moved to {folder}, not deleted" in caplog.text and "(step-4, step-6)" in caplog.text
    moved = {name: (folder / "checkpoints" / name).stat().st_ino for name in ("step-4", "step-6")}
    assert moved == inodes  # renamed, not copied
    assert (folder / "metrics.jsonl").read_text() == old_metrics  # the full file, rows 1-6
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step-4.png", "step-6.png"]
    assert (folder / "model" / "unet" / "model.safetensors").is_file() and (folder / "loss.png").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "loss.png", "metrics.jsonl", "model", "samples"]
    # What stays is the new history: step-2 it continued from, and what it wrote since.
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]
    assert steps_in(out / "metrics.jsonl") == [1, 2, 3]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-2.png"]
    assert not (out / "model").exists() and not (out / "loss.png").exists()

    with caplog.at_level(logging.INFO):  # --resume auto continues the new history, never the abandoned one
        assert Trainer(config(tmp_path, max_steps=6, **GRIDS), TINY).train() == out / "model"
    assert f"resuming from {out / 'checkpoints' / 'step-3'} (step 3)" in caplog.text
    assert [s for s, _ in list_checkpoints(out)] == [2, 3, 4, 6]
    assert len(list((out / "abandoned").iterdir())) == 1 and (folder / "checkpoints" / "step-6").is_dir()


def test_resume_never_moves_the_previous_run_aside_whole(tmp_path, data, caplog):
    Trainer(config(tmp_path, max_steps=2, **GRIDS), TINY).train()
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir())
    assert before == [
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "model",
        "pixel-diffusion",  # TensorBoard
        "samples",
        "train_config.json",
    ]
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=2, resume="never", **GRIDS), TINY).train(stop_at_step=1)
    folder = the_abandoned_folder(out, "resume-never")
    assert f"--resume never: the previous run in {out} (" in caplog.text and f"is moved to {folder}" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == before
    assert steps_in(folder / "metrics.jsonl") == [1, 2]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step-2.png"]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-2"]
    # The new run starts clean: its own step-1 and metrics, no grid of the old run.
    assert sorted(p.name for p in out.iterdir()) == [
        "abandoned",
        "checkpoints",
        "metrics.jsonl",
        "pixel-diffusion",
        "train_config.json",
    ]
    assert [s for s, _ in list_checkpoints(out)] == [1] and steps_in(out / "metrics.jsonl") == [1]


def test_resume_never_in_an_empty_out_moves_nothing(tmp_path, data):
    Trainer(config(tmp_path, max_steps=1, resume="never"), TINY).train()
    assert not (tmp_path / "out" / "abandoned").exists()


def test_a_longer_run_keeps_the_model_it_replaces(tmp_path, data, caplog):
    out = tmp_path / "out"
    Trainer(config(tmp_path, max_steps=2), TINY).train()
    first = (out / "model" / "unet" / "model.safetensors").read_bytes()
    Trainer(config(tmp_path, max_steps=2), TINY).train()  # started again: the same weights, nothing kept twice
    assert not (out / "abandoned").exists()
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=3), TINY).train()  # extended: the step-2 model is kept
    folder = the_abandoned_folder(out, "replaced-by-step-3")
    assert (folder / "model" / "unet" / "model.safetensors").read_bytes() == first
    assert (out / "model" / "unet" / "model.safetensors").read_bytes() != first
    assert f"the model of step 3 replaces {out / 'model'}; the old one is moved to {folder / 'model'}" in caplog.text
