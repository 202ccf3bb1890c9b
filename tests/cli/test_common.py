"""What every command shares (diffusion/cli/common.py): --version, --device, interrupts and failed runs."""

import pytest
import torch

import diffusion
from diffusion import cli
from diffusion.cli.common import device_from_flag, run_command
from diffusion.io.files import check_writable


@pytest.mark.parametrize(
    "main, prog",
    [
        (cli.train_main, "diffusion-train"),
        (cli.sample_main, "diffusion-sample"),
        (cli.evaluate_main, "diffusion-evaluate"),
        (cli.export_main, "diffusion-export"),
        (cli.prepare_main, "diffusion-prepare"),
    ],
)
def test_every_command_has_version(main, prog, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"{prog} {diffusion.__version__} (pixel-diffusion)\n"


@pytest.mark.parametrize(
    "cuda, mps, flag, expected",
    [
        (False, True, "auto", "mps"),
        (True, True, "auto", "cuda"),
        (False, False, "auto", "cpu"),
        (False, True, "mps", "mps"),
        (True, False, "cpu", "cpu"),
    ],
)
def test_device_flag_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, flag, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert device_from_flag(flag) == torch.device(expected)


def test_a_device_the_machine_lacks_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"^--device mps was asked for but this machine has no MPS device; use --device cpu$"
    ):
        device_from_flag("mps")


def test_mps_is_a_choice_of_sample_and_evaluate():
    for parser in (cli.sample_parser(), cli.evaluate_parser()):
        device = next(a for a in parser._actions if a.dest == "device")
        assert device.choices == ("auto", "cpu", "cuda", "mps")


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt(), 130), (ValueError("bad"), 2)])
def test_a_failed_command_removes_the_empty_folders_it_created(tmp_path, capsys, error, status):
    (tmp_path / "kept").mkdir()

    def main() -> int:
        check_writable(tmp_path / "new" / "deeper" / "out")
        check_writable(tmp_path / "kept" / "sub")
        raise error

    assert run_command("prog", main) == status
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []
    assert capsys.readouterr().err == ("prog: interrupted\n" if status == 130 else "prog: error: bad\n")


def test_a_failed_command_keeps_folders_that_hold_files(tmp_path):
    def main() -> int:
        check_writable(tmp_path / "out")
        (tmp_path / "out" / "0.png").write_bytes(b"done before the failure")
        raise KeyboardInterrupt("interrupted: 1 of 2 images written")

    assert run_command("prog", main) == 130
    assert (tmp_path / "out" / "0.png").read_bytes() == b"done before the failure"


def test_commands_log_this_package_at_info_and_other_libraries_only_when_they_warn(capsys, monkeypatch):
    import logging

    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    monkeypatch.setattr(logging.getLogger("diffusion"), "level", logging.NOTSET)

    def main() -> int:
        logging.getLogger("diffusion.training").info("scanning data")
        logging.getLogger("httpx").info("HTTP Request: GET https://huggingface.co/api/models/x")
        logging.getLogger("httpx").warning("retrying")
        return 0

    assert run_command("prog", main) == 0
    assert capsys.readouterr().err == "scanning data\nretrying\n"


@pytest.mark.parametrize(
    "error, detail",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 8000000000000 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "tried to allocate 7450.6 GiB",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"),
            "tried to allocate 2.00 GiB",
        ),
        (MemoryError(), "MemoryError"),
    ],
)
def test_allocation_failures_are_one_line(error, detail, capsys):
    def main() -> int:
        raise error

    assert run_command("diffusion-sample", main) == 2
    assert capsys.readouterr().err == f"diffusion-sample: error: out of memory ({detail}); use a smaller --batch-size\n"


def test_other_runtime_errors_still_show_their_traceback():
    def main() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command("diffusion-sample", main)
