"""Checkpoint integrity, write failures and safe loading, on the tiny runs of test_trainer."""

import errno
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, config, final_weights, make_images  # tests/training is on sys.path

from diffusion.cli import train_main
from diffusion.io.checkpoint import check_checkpoint, list_checkpoints, load_pickle_free
from diffusion.io.files import CorruptFolderError, sha256_of, verify_manifest, write_manifest
from diffusion.io.model_folder import SHIPPED_MODEL
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import Trainer, TrainingError, checkpointing
from diffusion.training import trainer as trainer_module


@pytest.fixture
def data(tmp_path):
    return make_images(tmp_path / "data")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0, msg=name)


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_every_checkpoint_carries_a_manifest_of_its_files(tmp_path, data):
    Trainer(config(tmp_path, max_steps=2), TINY).train()
    _, path = list_checkpoints(tmp_path / "out")[-1]
    files = json.loads((path / "manifest.json").read_text())["files"]
    on_disk = sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
    assert (
        sorted(files)
        == on_disk
        == [
            "ema.safetensors",
            "model.safetensors",
            "optimizer.pt",
            "rng-0.safetensors",
            "trainer_state.json",
        ]
    )
    for name, entry in files.items():
        assert entry == {"size": (path / name).stat().st_size, "sha256": sha256_of(path / name)}
    assert verify_manifest(path) is True


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: truncate(p / "model.safetensors"), "truncated or damaged"),
        (lambda p: flip_a_byte(p / "optimizer.pt"), "SHA-256 differs"),
        (lambda p: (p / "ema.safetensors").unlink(), "missing"),
        (lambda p: (p / "manifest.json").write_text("{"), "manifest.json is damaged"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    ],
    ids=["truncated", "flipped-byte", "missing-file", "bad-manifest", "no-manifest"],
)
def test_resume_auto_falls_back_to_the_previous_good_checkpoint(tmp_path, data, caplog, damage, reason):
    Trainer(config(tmp_path, out="straight"), TINY).train()
    Trainer(config(tmp_path), TINY).train(stop_at_step=4)  # writes step-2 and step-4
    bad = tmp_path / "out" / "checkpoints" / "step-4"
    damage(bad)
    with caplog.at_level(logging.INFO):
        assert Trainer(config(tmp_path), TINY).train() == tmp_path / "out" / "model"
    warning = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert f"checkpoint {bad} is damaged" in warning and reason in warning and "kept as corrupt-step-4" in warning
    step_2 = tmp_path / "out" / "checkpoints" / "step-2"
    assert f"steps: 4 in total (--max-steps 4); resuming from {step_2} at step 2 (2 to go)" in caplog.messages
    kept = tmp_path / "out" / "checkpoints" / "corrupt-step-4"
    assert kept.is_dir() and (kept / "trainer_state.json").is_file()  # never deleted
    with pytest.raises(CorruptFolderError):
        check_checkpoint(kept)
    assert_same_weights(tmp_path / "straight", tmp_path / "out")  # steps 3-4 redone exactly


def test_a_damaged_checkpoint_named_by_path_is_refused(tmp_path, data):
    Trainer(config(tmp_path), TINY).train(stop_at_step=2)
    path = tmp_path / "out" / "checkpoints" / "step-2"
    flip_a_byte(path / "model.safetensors")
    with pytest.raises(CorruptFolderError, match=r"--resume .*step-2: damaged checkpoint: .*SHA-256.*resume another"):
        Trainer(config(tmp_path, resume=str(path)), TINY).train()
    assert path.is_dir()  # refused, not renamed or removed


def test_no_intact_checkpoint_left_stops_instead_of_starting_over(tmp_path, data):
    Trainer(config(tmp_path, keep_checkpoints=1), TINY).train(stop_at_step=2)
    truncate(tmp_path / "out" / "checkpoints" / "step-2" / "model.safetensors")
    with pytest.raises(
        CorruptFolderError,
        match=r"no intact checkpoint .*\(corrupt-step-2\); start over with a new --out \(or --resume never, which "
        r"moves this run to .*out/abandoned/ and starts over\)",
    ):
        Trainer(config(tmp_path), TINY).train()
    with pytest.raises(CorruptFolderError, match="no intact checkpoint"):  # and again: nothing was started
        Trainer(config(tmp_path), TINY).train()


def test_disk_full_during_a_checkpoint_stops_cleanly_and_resume_works(tmp_path, data, monkeypatch, capsys, caplog):
    real = checkpointing.save_safetensors

    def full_at_step_4(filename, tensors, *args, **kwargs):
        if "step-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(filename, tensors, *args, **kwargs)

    argv = ["--data", str(data), "--preset", "tiny", "--channels", "3"]
    argv += ["--image-size", "8", "--batch-size", "4", "--warmup-steps", "2", "--max-steps", "4"]
    argv += ["--checkpoint-every", "2", "--sample-every", "0", "--log-every", "1", "--ema-decay", "0.9"]
    monkeypatch.setattr("sys.argv", ["train.py", *argv, "--out", str(tmp_path / "straight")])
    assert train_main() == 0  # an uninterrupted run to compare with
    monkeypatch.setattr(checkpointing, "save_safetensors", full_at_step_4)
    monkeypatch.setattr("sys.argv", ["train.py", *argv, "--out", str(tmp_path / "out")])
    assert train_main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("diffusion-train: error: could not write the checkpoint of step 4: No space left on")
    assert err[-1].endswith("then run the same command again with --resume auto")
    assert "Traceback" not in "\n".join(err)
    root = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]  # the partial step-4 was cleaned up
    assert verify_manifest(root / "step-2")
    monkeypatch.setattr(checkpointing, "save_safetensors", real)  # space is back
    with caplog.at_level(logging.INFO):
        assert train_main() == 0
    assert f"resuming from {root / 'step-2'} at step 2 (2 to go)" in caplog.text
    assert_same_weights(tmp_path / "straight", tmp_path / "out")


@pytest.mark.parametrize("what", ["metrics.jsonl", "the final model", "loss.png"])
def test_other_write_failures_are_one_line_training_errors(tmp_path, data, monkeypatch, what):
    real_save = DiffusionPipeline.save_pretrained

    def fail(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", "somewhere")

    def fail_half_way(pipe, folder, *args, **kwargs):
        real_save(pipe, folder, *args, **kwargs)  # the folder is written, then the disk gives out
        fail()

    if what == "metrics.jsonl":
        monkeypatch.setattr(trainer_module, "append_metrics", fail)
    elif what == "the final model":
        monkeypatch.setattr(DiffusionPipeline, "save_pretrained", fail_half_way)
    else:
        monkeypatch.setattr(trainer_module, "write_loss_curve", fail)
    with pytest.raises(TrainingError, match=rf"could not write {what}: Permission denied \(somewhere\)\. Earlier"):
        Trainer(config(tmp_path), TINY).train()
    assert (tmp_path / "out" / "model").is_dir() == (what == "loss.png")  # written before loss.png
    assert not list((tmp_path / "out").glob(".tmp-*"))  # the half-written model's space is given back


def test_every_file_of_a_checkpoint_and_the_model_follows_the_umask(tmp_path, data):
    previous = os.umask(0o022)
    try:
        model = Trainer(config(tmp_path, max_steps=2), TINY).train()
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    files = [p for folder in (out / "checkpoints" / "step-2", model) for p in folder.rglob("*") if p.is_file()]
    modes = {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {"checkpoints/step-2/ema.safetensors", "checkpoints/step-2/rng-0.safetensors"} < modes.keys()
    assert {"model/unet/model.safetensors", "model/README.md"} < modes.keys()
    assert modes == dict.fromkeys(modes, "0o644")


@pytest.mark.parametrize("failure", ["no images", "out of memory in step 1"])
def test_a_failed_run_leaves_no_new_out_behind(tmp_path, data, monkeypatch, capsys, failure):
    out = tmp_path / "new" / "out"
    argv = ["--data", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "8", "--batch-size", "4"]
    argv += ["--max-steps", "2", "--sample-every", "0"]
    if failure == "no images":
        (tmp_path / "empty").mkdir()
        argv[1] = str(tmp_path / "empty")
        message = "no image files found under"
    else:

        def out_of_memory(*args, **kwargs):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes.")

        monkeypatch.setattr(trainer_module, "training_loss", out_of_memory)
        message = "out of memory (tried to allocate 1.0 GiB); use a smaller --batch-size"
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()


def test_a_finished_run_started_again_rewrites_no_checkpoint(tmp_path, data):
    Trainer(config(tmp_path), TINY).train()
    last = tmp_path / "out" / "checkpoints" / "step-4"
    before = {p.name: p.stat().st_ino for p in last.iterdir()}
    assert Trainer(config(tmp_path), TINY).train() == tmp_path / "out" / "model"
    assert {p.name: p.stat().st_ino for p in last.iterdir()} == before  # the same files, untouched
    assert verify_manifest(tmp_path / "out" / "model")


def test_a_checkpoint_that_cannot_be_pruned_is_a_warning(tmp_path, data, monkeypatch, caplog):
    def busy(path):
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr("diffusion.io.checkpoint._remove", busy)
    with caplog.at_level(logging.WARNING):
        assert Trainer(config(tmp_path, keep_checkpoints=1), TINY).train() == tmp_path / "out" / "model"
    assert "could not remove the old checkpoint" in caplog.text and "Device or resource busy" in caplog.text
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2, 4]


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_executed(tmp_path, data):
    Trainer(config(tmp_path), TINY).train(stop_at_step=2)
    path = tmp_path / "out" / "checkpoints" / "step-2"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker)}, path / "optimizer.pt")
    write_manifest(path)  # an attacker can rewrite the manifest too
    with pytest.raises(ValueError, match=r"optimizer\.pt holds more than tensors .*refused without running it"):
        Trainer(config(tmp_path), TINY).train()
    with pytest.raises(ValueError, match="refused without running it"):
        load_pickle_free(path / "optimizer.pt")
    assert not marker.exists()


def test_a_model_folder_never_unpickles_anything(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, folder)
    marker = tmp_path / "pwned"
    for name in ("unet/diffusion_pytorch_model.bin", "unet/pytorch_model.bin", "unet/model.pt"):
        torch.save(Payload(marker), folder / name)  # weights a pickle-based loader would pick up
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.unet.config.num_classes == 10
    (folder / "unet" / "model.safetensors").unlink()
    with pytest.raises(CorruptFolderError, match=r"unet/model\.safetensors is missing"):
        DiffusionPipeline.from_pretrained(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found"):
        DiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, message",
    [(truncate, "is truncated or damaged"), (flip_a_byte, "is corrupt: its SHA-256 differs")],
    ids=["truncated", "flipped-byte"],
)
def test_from_pretrained_refuses_a_corrupt_weights_file(tmp_path, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, folder)
    damage(folder / "unet" / "model.safetensors")
    with pytest.raises(CorruptFolderError, match=rf"model folder .*model is damaged: .*model\.safetensors {message}"):
        DiffusionPipeline.from_pretrained(folder)


def test_a_trained_model_folder_carries_a_manifest(tmp_path, data):
    model = Trainer(config(tmp_path, max_steps=2), TINY).train()
    files = json.loads((model / "manifest.json").read_text())["files"]
    assert sorted(files) == ["unet/model.safetensors"]  # the JSON files are for people to edit
    assert verify_manifest(model) and verify_manifest(SHIPPED_MODEL)
