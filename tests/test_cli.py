import subprocess
import sys
from pathlib import Path

import pytest

from diffusion import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script, entry, message",
    [
        ("train.py", cli.train_main, "diffusion-train: error: both --data (a folder of images) and --out"),
        ("sample.py", cli.sample_main, "diffusion-sample: error: --num-images must be a positive integer, got 0"),
    ],
)
def test_entry_points_exist_and_refuse_cleanly(script, entry, message, capsys):
    assert entry([] if script == "train.py" else ["--num-images", "0"]) == 2
    assert message in capsys.readouterr().err
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout


def test_unknown_flag_is_one_line_not_a_traceback():
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--no-such-flag"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in done.stderr and "Traceback" not in done.stderr
