"""A restart keeps what it abandons: `--resume PATH` to an older step and `--resume never` move the
previous history to OUT/abandoned/<UTC time>-<reason>/, whole, and `--resume auto` never looks there."""

import errno
import json
import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from tiny_run import TINY, config, make_images  # tests/training is on sys.path

from diffusion.cli import train_main
from diffusion.io.checkpoint import list_checkpoints
from diffusion.io.files import verify_manifest
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import Trainer

GRIDS = dict(sample_every=2, sample_steps=2, num_samples=4)


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def files_of(checkpoint: Path) -> dict:
    """A checkpoint's manifest, checked: the size and SHA-256 of each of its files."""
    assert verify_manifest(checkpoint)
    return json.loads((checkpoint / "manifest.json").read_text())["files"]


def the_abandoned_folder(out: Path, reason: str) -> Path:
    """The one folder under OUT/abandoned/ named for ``reason``, checked to be named
    <UTC YYYYmmdd-HHMMSS>-<reason> of about now."""
    (folder,) = [p for p in (out / "abandoned").iterdir() if p.name.endswith(reason)]
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
    old_config = (out / "train_config.json").read_text()
    old_events = sorted(p.name for p in (out / "pixel-diffusion").glob("events.out.tfevents.*"))
    step_2 = out / "checkpoints" / "step-2"
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=6, resume=str(step_2), **GRIDS), TINY).train(stop_at_step=3)

    folder = the_abandoned_folder(out, "resumed-from-step-2")
    assert f"is moved to {folder}, not deleted" in caplog.text and "(step-4, step-6)" in caplog.text
    moved = {name: (folder / "checkpoints" / name).stat().st_ino for name in ("step-4", "step-6")}
    assert moved == inodes  # renamed, not copied
    assert (folder / "metrics.jsonl").read_text() == old_metrics  # the full file, rows 1-6
    assert (folder / "train_config.json").read_text() == old_config
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step-4.png", "step-6.png"]
    assert (folder / "model" / "unet" / "model.safetensors").is_file() and (folder / "loss.png").is_file()
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "model",
        "pixel-diffusion",  # TensorBoard: the old run's steps 1-6 whole; the new log starts afresh
        "samples",
        "train_config.json",
    ]
    assert sorted(p.name for p in (folder / "pixel-diffusion").glob("events.out.tfevents.*")) == old_events
    new_events = sorted(p.name for p in (out / "pixel-diffusion").glob("events.out.tfevents.*"))
    assert len(new_events) == 1 and not set(new_events) & set(old_events)
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


def other_images(folder: Path) -> Path:
    """make_images' names and count, other pixels: a run on them is another run."""
    make_images(folder)
    for path in folder.rglob("*.png"):
        ImageOps.invert(Image.open(path).convert("RGB")).save(path)
    return folder


def test_resuming_another_runs_checkpoint_moves_this_run_aside_and_starts_from_a_copy(tmp_path, data, caplog):
    a, b, other = tmp_path / "a", tmp_path / "b", other_images(tmp_path / "other")
    Trainer(config(tmp_path, out="a"), TINY).train()  # step-2, step-4
    Trainer(config(tmp_path, out="b", data=str(other)), TINY).train()
    a_checkpoints = {name: files_of(a / "checkpoints" / name) for name in ("step-2", "step-4")}
    a_metrics, a_weights = (a / "metrics.jsonl").read_text(), (a / "model" / "unet" / "model.safetensors").read_bytes()
    source = b / "checkpoints" / "step-4"
    b_checkpoint = files_of(source)
    assert b_checkpoint != a_checkpoints["step-4"]
    with caplog.at_level(logging.WARNING):  # nothing left to train: A's step-4 must not be overwritten
        assert Trainer(config(tmp_path, out="a", data=str(other), resume=str(source)), TINY).train() == a / "model"

    folder = the_abandoned_folder(a, "resumed-from-b-checkpoints-step-4")
    assert (
        f"this run continues from {source}, which is not in {a / 'checkpoints'}: the run that was there is moved to "
        f"{folder}, not deleted" in caplog.messages
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "model",
        "pixel-diffusion",
        "train_config.json",
    ]
    assert {p.name: files_of(p) for p in (folder / "checkpoints").iterdir()} == a_checkpoints
    assert (folder / "metrics.jsonl").read_text() == a_metrics
    assert (folder / "model" / "unet" / "model.safetensors").read_bytes() == a_weights
    # A's history is now B's: a copy of its checkpoint, its metrics rows up to step 4, the model of its EMA.
    assert [s for s, _ in list_checkpoints(a)] == [4] and files_of(a / "checkpoints" / "step-4") == b_checkpoint
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    weights = "model/unet/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert files_of(source) == b_checkpoint  # the source is left as it was


def test_resuming_an_abandoned_checkpoint_continues_its_history_alone(tmp_path, data):
    out = tmp_path / "out"
    Trainer(config(tmp_path, max_steps=6), TINY).train()  # step-2, 4, 6
    Trainer(config(tmp_path, max_steps=3, resume=str(out / "checkpoints" / "step-2")), TINY).train()
    first = the_abandoned_folder(out, "resumed-from-step-2")  # step-4, step-6 and rows 1-6
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]
    Trainer(config(tmp_path, max_steps=6, resume=str(first / "checkpoints" / "step-4")), TINY).train()

    second = the_abandoned_folder(out, f"resumed-from-{first.name}-checkpoints-step-4")
    assert [s for s, _ in list_checkpoints(second)] == [2, 3] and steps_in(second / "metrics.jsonl") == [1, 2, 3]
    # One history: step-4's copy, then steps 5-6 trained again, to the first run's step-6 bit for bit.
    assert [s for s, _ in list_checkpoints(out)] == [4, 6]
    for name in ("model.safetensors", "ema.safetensors"):
        assert files_of(out / "checkpoints" / "step-6")[name] == files_of(first / "checkpoints" / "step-6")[name]
    rows = [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    first_rows = map(json.loads, (first / "metrics.jsonl").read_text().splitlines())
    assert rows == [(r["step"], r["loss"], r["lr"]) for r in first_rows] and len(rows) == 6


def test_linked_checkpoints_and_samples_folders_stay_and_keep_what_they_abandon_beside_them(tmp_path, data):
    out, disk = tmp_path / "out", (tmp_path / "disk2").resolve()  # as if another filesystem
    out.mkdir()
    for name in ("checkpoints", "samples"):
        (disk / name).mkdir(parents=True)
        (out / name).symlink_to(disk / name)
    Trainer(config(tmp_path, **GRIDS), TINY).train()  # step-2, step-4 and their grids, on disk2
    step_4 = files_of(disk / "checkpoints" / "step-4")
    Trainer(config(tmp_path, resume=str(out / "checkpoints" / "step-2"), **GRIDS), TINY).train(stop_at_step=3)

    folder = the_abandoned_folder(out, "resumed-from-step-2")
    beside = disk / "checkpoints" / "abandoned" / folder.name
    assert (folder / "checkpoints" / "step-4").readlink() == beside / "step-4"
    assert files_of(folder / "checkpoints" / "step-4") == files_of(beside / "step-4") == step_4
    assert (folder / "samples" / "step-4.png").readlink() == disk / "samples" / "abandoned" / folder.name / "step-4.png"
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]

    Trainer(config(tmp_path, resume="never", **GRIDS), TINY).train(stop_at_step=1)
    never = the_abandoned_folder(out, "resume-never")
    # The links stay: the old entries are moved beside themselves, and the new run writes on disk2.
    assert (out / "checkpoints").readlink() == disk / "checkpoints" and (out / "samples").readlink() == disk / "samples"
    assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["abandoned", "step-1"]
    assert sorted(p.name for p in (disk / "checkpoints" / "abandoned").iterdir()) == sorted([folder.name, never.name])
    for name in ("step-2", "step-3"):
        assert (never / "checkpoints" / name).readlink() == disk / "checkpoints" / "abandoned" / never.name / name
        assert files_of(never / "checkpoints" / name)
    assert (never / "samples" / "step-2.png").readlink() == disk / "samples" / "abandoned" / never.name / "step-2.png"
    assert (never / "metrics.jsonl").is_file() and not (never / "metrics.jsonl").is_symlink()


def cross_device(mount: Path):
    """An os.replace for which ``mount`` is another filesystem: a rename in or out of it fails with EXDEV."""
    real = os.replace

    def replace(src, dst, **kwargs):
        inside = [Path(p).absolute().is_relative_to(mount) for p in (src, dst)]
        if inside[0] != inside[1] or Path(src).absolute() == mount:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real(src, dst, **kwargs)

    return replace


def test_a_checkpoints_folder_on_another_filesystem_keeps_what_it_abandons_on_it(tmp_path, data, monkeypatch):
    out = tmp_path / "out"
    Trainer(config(tmp_path), TINY).train()  # step-2, step-4
    before = {name: files_of(out / "checkpoints" / name) for name in ("step-2", "step-4")}
    monkeypatch.setattr(os, "replace", cross_device(out / "checkpoints"))  # a mount point, not a link
    Trainer(config(tmp_path, resume="never"), TINY).train(stop_at_step=1)

    never = the_abandoned_folder(out, "resume-never")
    beside = (out / "checkpoints").resolve() / "abandoned" / never.name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["abandoned", "step-1"]
    assert {name: (never / "checkpoints" / name).readlink() for name in before} == {n: beside / n for n in before}
    assert {name: files_of(never / "checkpoints" / name) for name in before} == before  # nothing lost
    assert steps_in(never / "metrics.jsonl") == [1, 2, 3, 4] and steps_in(out / "metrics.jsonl") == [1]


def test_a_move_that_fails_even_on_its_own_filesystem_is_one_line_and_loses_nothing(
    tmp_path, data, monkeypatch, capsys
):
    out = tmp_path / "out"
    Trainer(config(tmp_path, max_steps=2)).train()
    real = os.replace

    def no_rename(src, dst, **kwargs):  # OUT/checkpoints and its steps cannot be renamed anywhere
        if Path(src).name == "checkpoints" or Path(src).name.startswith("step-"):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", no_rename)
    argv = ["--data", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "8", "--batch-size", "4"]
    assert train_main([*argv, "--max-steps", "2", "--sample-every", "0", "--resume", "never"]) == 2
    err = capsys.readouterr().err
    (folder,) = (out / "abandoned").iterdir()
    assert err.strip().splitlines()[-1] == (
        f"diffusion-train: error: could not move {out / 'checkpoints' / 'step-2'} aside: Invalid cross-device link. "
        f"Nothing is deleted: what was moved is in {folder}, the rest is still in {out}; move it by hand, or use a "
        "new --out"
    )
    assert "Traceback" not in err
    assert steps_in(folder / "metrics.jsonl") == [1, 2]  # moved before the checkpoints
    assert [s for s, _ in list_checkpoints(out)] == [2] and files_of(out / "checkpoints" / "step-2")


def test_a_finished_run_started_again_keeps_the_edits_to_its_model(tmp_path, data, caplog):
    out, model = tmp_path / "out", tmp_path / "out" / "model"
    Trainer(config(tmp_path, max_steps=2), TINY).train()
    index = json.loads((model / "model_index.json").read_text()) | {"default_scheduler": "ddim"}
    (model / "model_index.json").write_text(json.dumps(index))  # edits the model card invites
    card = (model / "README.md").read_text() + "\nTrained on my cat pictures.\n"
    (model / "README.md").write_text(card)
    with caplog.at_level(logging.INFO):
        assert Trainer(config(tmp_path, max_steps=2), TINY).train() == model
    assert f"{model} already holds the weights of step 2: left as it is" in caplog.messages
    assert json.loads((model / "model_index.json").read_text()) == index and (model / "README.md").read_text() == card
    assert DiffusionPipeline.from_pretrained(model).scheduler_name() == "ddim"
    assert not (out / "abandoned").exists() and not list(out.glob(".tmp-*"))

    weights = model / "unet" / "model.safetensors"  # damaged: replaced, and the damaged one kept
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    Trainer(config(tmp_path, max_steps=2), TINY).train()
    folder = the_abandoned_folder(out, "replaced-by-step-2")
    assert (folder / "model" / "unet" / "model.safetensors").read_bytes() == bytes(damaged)
    assert verify_manifest(model) and (model / "README.md").read_text() != card


def test_a_run_with_no_checkpoint_left_to_resume_moves_the_previous_run_aside(tmp_path, data, caplog):
    """Checkpoints deleted to save space (or on a disk not mounted): --resume auto starts over, and the old
    run's metrics, model, grids and logs are kept, not trimmed away or overwritten."""
    Trainer(config(tmp_path, max_steps=2, **GRIDS), TINY).train()
    out = tmp_path / "out"
    for checkpoint in (out / "checkpoints").iterdir():
        shutil.rmtree(checkpoint)
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=1), TINY).train()
    folder = the_abandoned_folder(out, "no-checkpoint")
    assert f"no checkpoint to resume: the previous run in {out} (" in caplog.text
    assert steps_in(folder / "metrics.jsonl") == [1, 2]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step-2.png"]
    assert (folder / "model" / "unet" / "model.safetensors").is_file()
    assert steps_in(out / "metrics.jsonl") == [1]


def test_a_linked_model_folder_is_refused_before_training(tmp_path, data):
    """The final model is renamed onto OUT/model, which a link cannot take: refused at once, not after training."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"out/model is a link; the final model is renamed into place there"):
        Trainer(config(tmp_path, max_steps=1), TINY)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]
    assert list((tmp_path / "elsewhere").iterdir()) == []
