"""Atomic file writes, careful JSON reads and folder manifests: nothing we write is ever seen
half-written, and a file damaged after it was written is detected before it is used."""

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from safetensors.torch import save_file


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` so that readers see either the old file or the complete new one.

    ``write`` receives a temporary path in the same directory; once it returns, the file is flushed
    to disk and renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file: give it the mode open() would.
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``tensors`` as a safetensors file with the umask's mode, like every other file."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` as UTF-8."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object, raising one clear error for a missing, unparsable or non-object file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


# The folders `check_writable` created inside the innermost `undo_new_folders` block.
_new_folders: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("new_folders", default=None)


@contextlib.contextmanager
def undo_new_folders() -> Iterator[None]:
    """On any exception (Ctrl-C included), remove the folders that `check_writable` created in this block
    and that are still empty, deepest first: a failed command leaves no empty output folders behind.
    A folder that holds files (images written before an interrupt) is kept."""
    created: list[Path] = []
    token = _new_folders.set(created)
    try:
        yield
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()
        raise
    finally:
        _new_folders.reset(token)


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and prove it takes a file; ``PermissionError`` with the reason if not."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]  # outermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if (created := _new_folders.get()) is not None:
            created.extend(missing)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)  # a unique name per process
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"output folder {folder} is not writable ({e.strerror})") from None


MANIFEST_NAME = "manifest.json"
_MANIFEST_FORMAT = "pixel-diffusion manifest"


class CorruptFolderError(ValueError):
    """A folder's files do not match its manifest: missing, truncated or changed."""


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: str | os.PathLike, names: list[str] | None = None) -> None:
    """Write ``folder/manifest.json``: the size and SHA-256 of each file in ``names`` (paths relative to
    ``folder``), or of every file under it but hidden ones and the manifest itself."""
    folder = Path(folder)
    if names is None:
        names = [
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
        ]
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)} for name in names}
    write_json(folder / MANIFEST_NAME, {"format": _MANIFEST_FORMAT, "files": files})


def verify_manifest(folder: str | os.PathLike) -> bool:
    """Check every file ``folder/manifest.json`` lists; False when there is no manifest.

    Raises:
        CorruptFolderError: a listed file is missing, has another size, or another checksum; or the
            manifest itself is unreadable.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).exists():
        return False
    try:
        manifest = read_json(folder / MANIFEST_NAME)
        files = manifest["files"]
        entries = sorted((str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptFolderError(f"{folder / MANIFEST_NAME} is damaged ({e})") from None
    for name, size, digest in entries:
        path = folder / name
        if not path.is_file():
            raise CorruptFolderError(f"{path} is missing (listed in {MANIFEST_NAME})")
        if (found := path.stat().st_size) != size:
            raise CorruptFolderError(f"{path} is truncated or damaged: {found} bytes, {MANIFEST_NAME} says {size}")
        if sha256_of(path) != digest:
            raise CorruptFolderError(f"{path} is corrupt: its SHA-256 differs from {MANIFEST_NAME}")
    return True
