"""diffusion-prepare / python -m diffusion.prepare: the printed line, the prepared folder, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffusion
from diffusion.cli import prepare_main

pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three 12x10 RGB images in two classes, and one truncated PNG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in ("cat/0.png", "cat/1.png", "dog/0.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / name)
    (root / "dog" / "bad.png").write_bytes((root / "cat" / "0.png").read_bytes()[:60])
    return root


def test_prepare_prints_one_line_and_writes_the_dataset(image_folder, tmp_path, capsys):
    out = tmp_path / "prepared"
    argv = [str(image_folder), "--out", str(out), "--size", "6x8", "--channels", "1", "--workers", "1"]

    assert prepare_main(argv) == 0

    assert capsys.readouterr().out == f"prepared 3 images (1 skipped) of 6x8x1 into {out}\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shape"] == [6, 8, 1] and manifest["class_names"] == ["cat", "dog"]
    assert manifest["counts"] == {"found": 4, "prepared": 3, "skipped": 1}
    assert manifest["skipped"][0]["source"] == "dog/bad.png"

    assert prepare_main(argv) == 0  # a second run finds the folder complete and says the same
    assert capsys.readouterr().out == f"prepared 3 images (1 skipped) of 6x8x1 into {out}\n"


def test_python_m_entry_point(image_folder, tmp_path):
    out = tmp_path / "prepared"
    command = [sys.executable, "-m", "diffusion.prepare", str(image_folder), "--out", str(out), "--size", "8"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"prepared 3 images (1 skipped) of 8x8x3 into {out}\n"
    assert "skipped 1 unreadable image(s)" in done.stderr and "dog/bad.png (OSError: " in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "data-00000-of-00001.arrow",
        "dataset_info.json",
        "manifest.json",
        "state.json",
    ]


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--size", "8x"], "argument --size/--prepare-size: expected N or HxW, got '8x' (see --help)"),
        (
            ["--size", "0"],
            "argument --size/--prepare-size: expected N or HxW with positive sides, got '0' (see --help)",
        ),
        (
            ["--size", "8", "--channels", "2"],
            "argument --channels: invalid choice: 2 (choose from 1, 3, 4) (see --help)",
        ),
        (
            ["--size", "8", "--background", "blue"],
            "argument --background: invalid choice: 'blue' (choose from 'white', 'black', 'random') (see --help)",
        ),
        *(
            (
                ["--size", "8", *channels, "--background", "random"],
                "--background random is drawn per item at training time, so a preparation cannot store it: prepare "
                "with --channels 4 and no --background, then train with --channels 1 or 3 and --background random",
            )
            for channels in ([], ["--channels", "4"])
        ),
        (
            ["--size", "8", "--channels", "4", "--background", "black"],
            "--background black has no effect with --channels 4, which keeps transparency as the alpha channel: "
            "leave --background out, or prepare at --channels 1 or 3",
        ),
        (
            ["--size", "8", "--channels", "4", "--background", "white"],  # the default, typed: refused too
            "--background white has no effect with --channels 4, which keeps transparency as the alpha channel: "
            "leave --background out, or prepare at --channels 1 or 3",
        ),
    ],
)
def test_bad_flags_exit_2_in_one_line(image_folder, tmp_path, capsys, flags, error):
    try:
        code = prepare_main([str(image_folder), "--out", str(tmp_path / "out"), *flags])
    except SystemExit as stopped:  # argparse's own errors
        code = stopped.code
    assert code == 2
    assert capsys.readouterr().err == f"diffusion-prepare: error: {error}\n"
    assert not (tmp_path / "out").exists()


def test_rgba_and_a_black_background_are_recorded_and_a_change_of_them_is_refused(tmp_path, capsys):
    source = tmp_path / "images"
    source.mkdir()
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :4] = (10, 20, 30, 255)  # the rest is fully transparent
    Image.fromarray(rgba).save(source / "a.png")
    rgba_out, black_out = tmp_path / "rgba", tmp_path / "black"
    flags = ["--size", "8", "--workers", "1"]

    assert prepare_main([str(source), "--out", str(rgba_out), "--channels", "4", *flags]) == 0
    assert capsys.readouterr().out == f"prepared 1 images (0 skipped) of 8x8x4 into {rgba_out}\n"
    assert json.loads((rgba_out / "manifest.json").read_text())["settings"]["background"] is None
    assert prepare_main([str(source), "--out", str(black_out), "--background", "black", *flags]) == 0
    assert capsys.readouterr().out == f"prepared 1 images (0 skipped) of 8x8x3 into {black_out}\n"
    assert json.loads((black_out / "manifest.json").read_text())["settings"]["background"] == "black"

    assert prepare_main([str(source), "--out", str(black_out), *flags]) == 2  # white, the default
    assert capsys.readouterr().err == (
        f"diffusion-prepare: error: {black_out} holds a dataset prepared with background black, not white: add "
        "--overwrite to replace it, or give another --out\n"
    )
    assert prepare_main([str(source), "--out", str(rgba_out), *flags]) == 2
    assert capsys.readouterr().err == (
        f"diffusion-prepare: error: {rgba_out} holds a dataset prepared with channels 4, not 3: add --overwrite "
        "to replace it, or give another --out\n"
    )


def test_missing_source_exits_2_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "prepared"
    assert prepare_main([str(tmp_path / "nowhere"), "--out", str(out), "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffusion-prepare: error: data folder {tmp_path / 'nowhere'} not found")
    assert err.count("\n") == 1 and not out.exists()


def test_other_settings_exit_2_naming_the_fix(image_folder, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert prepare_main([str(image_folder), "--out", str(out), "--size", "8", "--workers", "1"]) == 0
    capsys.readouterr()
    assert prepare_main([str(image_folder), "--out", str(out), "--size", "16", "--workers", "1"]) == 2
    assert capsys.readouterr().err == (
        f"diffusion-prepare: error: {out} holds a dataset prepared with size 8x8, not 16x16: add --overwrite to "
        "replace it, or give another --out\n"
    )
    assert prepare_main([str(image_folder), "--out", str(out), "--size", "16", "--overwrite"]) == 0
    assert capsys.readouterr().out == f"prepared 3 images (1 skipped) of 16x16x3 into {out}\n"


def test_a_folder_being_prepared_exits_2_in_one_line(image_folder, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "prepared"
    out.mkdir()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        assert prepare_main([str(image_folder), "--out", str(out), "--size", "8", "--workers", "1"]) == 2
    assert capsys.readouterr().err == (
        f"diffusion-prepare: error: {out} is being prepared by another diffusion-prepare (pid 4242): wait for it, "
        "or give another --out\n"
    )
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_bad_workers_names_the_flag(image_folder, tmp_path, capsys):
    assert prepare_main([str(image_folder), "--out", str(tmp_path / "out"), "--size", "8", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "diffusion-prepare: error: --workers must be a positive integer, got 0\n"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        prepare_main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"diffusion-prepare {diffusion.__version__} (pixel-diffusion)\n"
