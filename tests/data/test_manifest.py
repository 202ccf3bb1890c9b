"""diffusion.data.manifest.check_files: a prepared dataset's data files against its manifest's sizes, and
with ``hashes`` its SHA-256s."""

import hashlib
from pathlib import Path

import pytest

from diffusion.data.manifest import check_files

NAME = "data-00000-of-00001.arrow"
CONTENT = b"arrow data, 25 bytes long"


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, dict]:
    """A folder holding one data file, and a manifest that lists it with its size and SHA-256."""
    (tmp_path / NAME).write_bytes(CONTENT)
    manifest = {"files": {NAME: {"bytes": len(CONTENT), "sha256": hashlib.sha256(CONTENT).hexdigest()}}}
    return tmp_path, manifest


@pytest.mark.parametrize("hashes", [False, True])
def test_matching_files_pass(prepared, hashes):
    folder, manifest = prepared
    assert len(CONTENT) == 25
    check_files(folder, manifest, hashes=hashes)


@pytest.mark.parametrize("hashes", [False, True])
def test_a_truncated_file_is_damaged(prepared, hashes):
    folder, manifest = prepared
    (folder / NAME).write_bytes(CONTENT[:20])
    with pytest.raises(ValueError) as refused:
        check_files(folder, manifest, hashes=hashes)
    assert str(refused.value) == (
        f"{folder / NAME} is damaged (20 bytes, the manifest says 25): prepare the dataset again with --overwrite"
    )


@pytest.mark.parametrize("hashes", [False, True])
def test_a_missing_file(prepared, hashes):
    folder, manifest = prepared
    (folder / NAME).unlink()
    with pytest.raises(ValueError) as refused:
        check_files(folder, manifest, hashes=hashes)
    assert str(refused.value) == (
        f"{folder / NAME} is missing (the manifest lists it): prepare the dataset again with --overwrite"
    )


def test_a_flipped_byte_is_found_by_the_hashes_only(prepared):
    folder, manifest = prepared
    (folder / NAME).write_bytes(CONTENT.replace(b"25", b"26"))  # the same size
    check_files(folder, manifest)  # the cheap check compares sizes
    with pytest.raises(ValueError) as refused:
        check_files(folder, manifest, hashes=True)
    assert str(refused.value) == (
        f"{folder / NAME} is damaged (its SHA-256 is not the manifest's): prepare the dataset again with --overwrite"
    )


@pytest.mark.parametrize("files", [None, {}, ["data-00000-of-00001.arrow"]])
def test_a_manifest_without_its_files_is_refused(tmp_path, files):
    with pytest.raises(ValueError) as refused:
        check_files(tmp_path, {} if files is None else {"files": files})
    assert str(refused.value) == (
        f"{tmp_path / 'manifest.json'} lists no data files: prepare the dataset again with --overwrite"
    )
