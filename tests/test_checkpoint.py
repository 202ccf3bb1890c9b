import pytest

from diffusion.checkpoint import begin_checkpoint, commit_checkpoint, list_checkpoints, resolve_resume


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
