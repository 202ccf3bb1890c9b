"""pyproject.toml says the truth: the Python it runs on, the setuptools that can build it, its licence."""

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Language and standard-library features newer than 3.10, as regular expressions over the source, and the
# Python that brought each (What's New in Python 3.11, 3.12 and 3.13).
NEWER_APIS = {
    r"hashlib\.file_digest": (3, 11),
    r"\btomllib\b": (3, 11),
    r"datetime\.UTC\b|from datetime import .*\bUTC\b": (3, 11),
    r"typing\.Self\b|from typing import .*\bSelf\b": (3, 11),
    r"\bStrEnum\b": (3, 11),
    r"\bExceptionGroup\b|\bexcept\*": (3, 11),
    r"\bTaskGroup\b": (3, 11),
    r"itertools\.batched|from itertools import .*\bbatched\b": (3, 12),
    r"typing\.override|from typing import .*\boverride\b": (3, 12),
    r"warnings\.deprecated|copy\.replace": (3, 13),
}


def _floor() -> tuple[int, int]:
    match = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert match, PYPROJECT["project"]["requires-python"]
    return int(match.group(1)), int(match.group(2))


def test_requires_python_covers_every_api_the_code_calls():
    sources = [p.read_text() for p in (ROOT / "diffusion").rglob("*.py")] + [
        p.read_text() for p in (ROOT / "tests").rglob("*.py")
    ]
    used = {api: version for api, version in NEWER_APIS.items() if any(re.search(api, text) for text in sources)}
    assert len(used) >= 2  # hashlib.file_digest (io.files.sha256_of: every load), datetime.UTC (io/checkpoint.py)
    assert _floor() >= max(used.values())
    assert sys.version_info[:2] >= _floor()  # the tests run on a Python the package declares
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py{}{}".format(*_floor())


def test_the_build_backend_reads_a_string_licence():
    (requirement,) = PYPROJECT["build-system"]["requires"]
    version = re.fullmatch(r"setuptools>=(\d+)", requirement)
    assert isinstance(PYPROJECT["project"]["license"], str)  # an SPDX expression: setuptools 77 and later
    assert version and int(version.group(1)) >= 77


def test_the_licence_file_ships_and_the_metadata_names_it():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    metadata = importlib.metadata.metadata("pixel-diffusion")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
