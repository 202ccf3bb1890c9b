"""The README says the truth about the code: every module in its Layout, no command that no longer exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_layout_names_every_module():
    layout = README[README.index("## Layout") :]
    modules = sorted(p.relative_to(ROOT / "diffusion") for p in (ROOT / "diffusion").rglob("*.py"))
    missing = [m.as_posix() for m in modules if m.name != "__init__.py" and m.name not in layout]
    assert missing == []


def test_commands_the_readme_runs_exist_today():
    assert "huggingface-cli" not in README  # current huggingface_hub installs `hf` instead
    assert re.search(r"^hf download google/ddpm-cifar10-32 ", README, flags=re.MULTILINE)
