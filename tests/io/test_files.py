import os

import pytest
import torch

from diffusion.io.files import atomic_write, read_json, save_safetensors, write_json
from diffusion.pipeline import DiffusionPipeline


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_json_round_trip(tmp_path):
    write_json(tmp_path / "a.json", {"b": [1, 2], "a": None})
    assert read_json(tmp_path / "a.json") == {"a": None, "b": [1, 2]}
    assert (tmp_path / "a.json").read_text().startswith('{\n  "a": null')  # sorted, indented


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def fail(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weights.bin"]


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, r"missing.json not found"),
        ("{not json", ValueError, r"is not valid JSON"),
        ("[1, 2]", ValueError, r"must hold a JSON object, found list"),
        (b"\xff\xfe", ValueError, r"is not valid JSON"),
    ],
)
def test_read_json_errors_are_one_clear_line(tmp_path, content, error, message):
    path = tmp_path / "missing.json"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        read_json(path)


def test_weights_follow_the_umask_like_every_other_file(tmp_path, tiny_model):
    """safetensors replaces the file it writes (0600); every weights file must come out 0644 under umask 022."""
    umask = os.umask(0o022)
    try:
        save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
        DiffusionPipeline.from_pretrained(tiny_model).save_pretrained(tmp_path / "model")
    finally:
        os.umask(umask)
    files = [tmp_path / "w.safetensors", *(p for p in (tmp_path / "model").rglob("*") if p.is_file())]
    assert {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in files} == {
        p.relative_to(tmp_path).as_posix(): 0o644 for p in files
    }
    assert "model/unet/model.safetensors" in {p.relative_to(tmp_path).as_posix() for p in files}
