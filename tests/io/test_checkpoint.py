import logging
from datetime import datetime

import pytest

from diffusion.io import checkpoint
from diffusion.io.checkpoint import (
    abandoned_folder,
    begin_checkpoint,
    checkpoints_after,
    commit_checkpoint,
    list_checkpoints,
    move_aside,
    resolve_resume,
)
from diffusion.io.files import verify_manifest


def write(out, step, keep=10):
    tmp = begin_checkpoint(out, step)
    assert tmp.name == f".tmp-step-{step}"
    (tmp / "trainer_state.json").write_text("{}")
    return commit_checkpoint(tmp, keep)


def test_commit_publishes_and_prunes_to_the_newest_k(tmp_path):
    for step in (5, 10, 15, 20):
        final = write(tmp_path, step, keep=2)
        assert final == tmp_path / "checkpoints" / f"step-{step}"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]


def test_unfinished_temporary_folders_are_never_listed(tmp_path):
    write(tmp_path, 4)
    begin_checkpoint(tmp_path, 8)  # a crash mid-write leaves this behind
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]
    assert resolve_resume(tmp_path, "auto") == tmp_path / "checkpoints" / "step-4"
    write(tmp_path, 12)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # cleaned up by the next commit


def test_numeric_order_not_lexical(tmp_path):
    for step in (9, 10, 100):
        write(tmp_path, step)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10, 100]


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None  # a new folder simply starts
    write(tmp_path, 3)
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-3")) == tmp_path / "checkpoints" / "step-3"
    with pytest.raises(FileNotFoundError, match=r"--resume .*nope: not a checkpoint folder"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))


def test_abandoned_folders_are_named_by_utc_time_and_reason_and_never_reused(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(checkpoint, "datetime", Frozen)
    first = abandoned_folder(tmp_path, "resume-never")
    second = abandoned_folder(tmp_path, "resume-never")  # the same second: another folder
    assert (first.name, second.name) == ("20260102-030405-resume-never", "20260102-030405-resume-never-2")
    assert first.parent == second.parent == tmp_path / "abandoned"


def test_move_aside_renames_files_and_folders_into_place(tmp_path):
    write(tmp_path, 3)
    write(tmp_path, 6)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    inode = (tmp_path / "checkpoints" / "step-6").stat().st_ino
    folder = abandoned_folder(tmp_path, "test")
    move_aside(tmp_path, ["metrics.jsonl", "checkpoints/step-6"], folder)
    assert (folder / "checkpoints" / "step-6").stat().st_ino == inode  # a rename, not a copy
    assert (folder / "metrics.jsonl").read_text() == "{}\n" and not (tmp_path / "metrics.jsonl").exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]
    assert checkpoints_after(tmp_path, 0) == [tmp_path / "checkpoints" / "step-3"]


def test_a_step_written_again_moves_the_one_it_replaces_aside(tmp_path, caplog):
    for text in ("first", "second"):
        tmp = begin_checkpoint(tmp_path, 3)
        (tmp / "trainer_state.json").write_text(text)
        with caplog.at_level(logging.WARNING):
            final = commit_checkpoint(tmp, keep=10)
    assert (final / "trainer_state.json").read_text() == "second"
    (folder,) = (tmp_path / "abandoned").iterdir()
    assert folder.name.endswith("-replaced-step-3")
    kept = folder / "checkpoints" / "step-3"
    assert (kept / "trainer_state.json").read_text() == "first" and verify_manifest(kept)
    assert f"{final} is written again; the one it replaces is moved to {folder}" in caplog.messages
