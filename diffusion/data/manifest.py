"""The prepared-dataset format: a Hugging Face ``save_to_disk`` folder with our ``manifest.json`` beside it.

A folder ``PREPARED`` written by ``diffusion-prepare`` holds::

    manifest.json          this module's: format, version, settings, shape, counts, skipped files, checksums
                           and, at 4 channels, ``rgb_0_under_alpha_0`` (`stale_transparent_rgb`)
    dataset_info.json      datasets' own files (``Dataset.save_to_disk``), so that
    state.json             ``datasets.load_from_disk(PREPARED)`` reads it as any other dataset
    data-*.arrow

Columns: ``image``, the pixels as a fixed-length ``uint8`` list of ``height * width * channels`` values
in row-major (height, width, channels) order, the shape being the manifest's ``shape``: 1 or 3 channels
with transparency composited on the ``background`` of its settings (`prepared_settings`), or 4 (RGBA, the
alpha channel kept, composited when training reads it; RGB 0 wherever alpha is 0); ``label``, a
``ClassLabel``, when the source has classes; ``path``, where each row came from. A fixed-length list is
stored without offsets; datasets' ``Array3D`` stores an offset for every pixel row and column, which more
than doubles the files.

``manifest.json`` is written last: a folder without a complete one is an interrupted preparation. Its
``files`` give each data file's size and SHA-256: `check_files` compares the sizes (cheap, at every
start of training) or both (a full check).
"""

import json
from pathlib import Path
from typing import Any

from ..io.files import sha256_of

MANIFEST = "manifest.json"
FORMAT = "pixel-diffusion-prepared"
VERSION = 1
IMAGE, LABEL, PATH = "image", "label", "path"  # the column names
# True in a 4-channel manifest whose stored RGB is 0 wherever alpha is 0, as `diffusion.image.to_mode` gives it.
# A key beside the format version, not a new version: every version reads every manifest, with it or without.
RGB_0_UNDER_ALPHA_0 = "rgb_0_under_alpha_0"


def prepared_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` when it is of this format (complete or not); None when there is none, or
    it is another tool's ``manifest.json``."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


def prepared_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings a manifest was prepared with; one written before the background was a setting was
    prepared on white."""
    settings = manifest.get("settings")
    return {"background": "white"} | (settings if isinstance(settings, dict) else {})


def stale_transparent_rgb(manifest: dict[str, Any]) -> bool:
    """Whether a manifest's stored RGBA may keep, under alpha 0, the RGB its source files held: one written
    before `RGB_0_UNDER_ALPHA_0`, or that finished a preparation such a version began. Reading zeroes it."""
    shape = manifest.get("shape")
    return isinstance(shape, list) and shape[-1:] == [4] and manifest.get(RGB_0_UNDER_ALPHA_0) is not True


def is_prepared(folder: str | Path) -> bool:
    """Whether ``folder`` has a manifest of this format (complete or not)."""
    return prepared_manifest(folder) is not None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of ``folder``.

    Raises:
        FileNotFoundError: there is none.
        ValueError: it is not JSON.
    """
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); prepare the dataset again") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a prepared-dataset manifest; prepare the dataset again")
    return manifest


def check_complete(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest of another format or version, or one of an interrupted preparation.

    Raises:
        ValueError: naming the problem and the command that fixes it.
    """
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{Path(folder) / MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(
            f"{folder} was prepared by a newer pixel-diffusion (format version {manifest['version']}, this one "
            f"reads {VERSION}): upgrade pixel-diffusion"
        )
    if not manifest.get("complete"):
        raise ValueError(
            f"{folder} is an interrupted preparation: run the same diffusion-prepare command again to finish it"
        )


def check_files(folder: str | Path, manifest: dict[str, Any], *, hashes: bool = False) -> None:
    """Refuse a data file that is missing or whose size, and with ``hashes`` SHA-256, is not the manifest's.

    Raises:
        ValueError: naming the first such file and the command that fixes it.
    """
    files = manifest.get("files")
    again = "prepare the dataset again with --overwrite"
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{Path(folder) / MANIFEST} lists no data files: {again}")
    for name, entry in sorted(files.items()):
        path = Path(folder) / name
        expected = entry.get("bytes") if isinstance(entry, dict) else None
        try:
            found = path.stat().st_size
        except OSError:
            raise ValueError(f"{path} is missing (the manifest lists it): {again}") from None
        if found != expected:
            raise ValueError(f"{path} is damaged ({found} bytes, the manifest says {expected}): {again}")
        if hashes and sha256_of(path) != entry.get("sha256"):
            raise ValueError(f"{path} is damaged (its SHA-256 is not the manifest's): {again}")
