"""`prepare`: decode a source of images once, fitted to one size, into a prepared dataset (`manifest`).

Every item is decoded once, in parallel, in the source's order. Rows go to shards under ``OUT/partial``
(`shards`), committed one by one: an interrupted preparation, run again with the same settings on the same
source (its listing, and a Hugging Face dataset's content fingerprint), keeps the shards it finished and
decodes only the missing ones. At the end the shards become one ``save_to_disk`` folder, the complete
manifest is written last and ``OUT/partial`` is removed. A preparation holds ``OUT/.lock`` throughout, so
that a second one into the same folder is refused instead of removing the first one's shards.
"""

import contextlib
import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.files import check_writable, sha256_of, undo_new_folders, write_json
from .arrow import ArrowImages
from .augment import BACKGROUNDS, background_with_rgba, check_conversion
from .files import printable, warn_skipped
from .manifest import (
    FORMAT,
    MANIFEST,
    RGB_0_UNDER_ALPHA_0,
    VERSION,
    check_complete,
    check_files,
    prepared_manifest,
    prepared_settings,
    read_manifest,
)
from .shards import class_names, decode_shards, default_shard_size, quiet, read_shards
from .sources import open_images, require_datasets

try:
    import fcntl
except ImportError:  # Windows: preparations are not locked
    fcntl = None

logger = logging.getLogger(__name__)

PARTIAL = "partial"  # the shards of a preparation in progress, inside OUT
LOCK = ".lock"  # inside OUT while a preparation runs: the process id of the one that holds it
# What `datasets.Dataset.save_to_disk` writes, with the manifest: all that --overwrite removes.
DATASET_FILES = ("dataset_info.json", "state.json", "data-*.arrow")
# What flock raises on a filesystem that cannot lock: the preparation goes on unlocked.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: tuple[int, int],
    channels: int = 3,
    background: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    workers: int | None = None,
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode every item of ``source`` once, fitted to ``size`` (cover, centre crop), into ``out``.

    Args:
        source: an image folder, a ``save_to_disk`` folder, parquet / arrow file(s) or a Hub dataset name.
        out: the prepared dataset's folder: new, empty, or a preparation of the same settings (which is
            finished if interrupted, and checked against its manifest's checksums if complete).
        size: (height, width) of the stored images.
        channels: 1 (grayscale) or 3 (RGB), transparency composited on ``background``; or 4 (RGBA, the alpha
            channel kept: training composites it on the background it chooses).
        background: white or black, for 1 and 3 channels; None is white there, and the only value 4 takes
            (random is drawn per item at training time: prepare 4 channels to train with it).
        image_column, label_column: the columns of a dataset source (default: found by their type).
        workers: decoding processes (default: one per available core; 1 decodes in this process).
        shard_size: rows per shard (default: up to 1000, fewer when that many would pass 256 MiB).
        overwrite: replace a prepared dataset of other settings, or restart an interrupted one.
        progress: show a progress bar over the images.

    Returns:
        The manifest (`manifest` describes it); its ``counts`` say how many items were found, prepared and
        skipped, and ``skipped`` names each skipped item with the reason.

    Raises:
        ValueError: bad arguments, ``out`` holding other files, a preparation of other settings or of a
            changed source, a damaged data file, another preparation running into ``out``, or no item of
            ``source`` decoding.
        FileNotFoundError: ``source`` does not exist.
    """
    settings = _settings(source, size, channels, background, image_column, label_column)
    size = (settings["size"][0], settings["size"][1])
    workers = _count("workers", workers, default=_available_cores())
    shard_size = _count("shard_size", shard_size, default=default_shard_size(size, channels))
    out = Path(out)
    with undo_new_folders(), _exclusive(out):
        done = _claim(out, settings, overwrite)
        if done is not None:
            logger.info("%s already holds this dataset, prepared with the same settings", printable(str(out)))
            shutil.rmtree(out / PARTIAL, ignore_errors=True)  # left over if the last run stopped after its manifest
            return done
        return _decode(source, out, settings, shard_size, workers, progress)


def _decode(
    source: str | os.PathLike, out: Path, settings: dict[str, Any], shard_size: int, workers: int, progress: bool
) -> dict[str, Any]:
    """Decode ``source`` into ``out`` as ``settings`` say (or finish an interrupted preparation), holding its
    lock; returns the manifest."""
    require_datasets(source)
    size, channels = (settings["size"][0], settings["size"][1]), settings["channels"]
    columns = {"image_column": settings["image_column"], "label_column": settings["label_column"]}
    images = open_images(source, size=size, channels=channels, background=settings["background"] or "white", **columns)
    assert len(images) > 0, "open_images refuses a source without items"
    names = _names(images)
    shard_size = _begin(out, settings, names, _fingerprint(images), shard_size)
    plan = [range(start, min(start + shard_size, len(images))) for start in range(0, len(images), shard_size)]
    with quiet():
        decode_shards(images, names, out / PARTIAL, plan, (size[0], size[1], channels), workers, progress)
        return _finish(out, images, settings, len(plan))


def _settings(
    source: str | os.PathLike,
    size: Sequence[int],
    channels: int,
    background: str | None,
    image_column: str | None,
    label_column: str | None,
) -> dict[str, Any]:
    """What the prepared data depends on, as the manifest stores it; a local source by its absolute path, the
    background as None for RGBA (nothing composited)."""
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"size must be (height, width) in positive integers, got {size!r}")
    if background == "random":  # drawn per item from its augmentation seed: only training knows it
        raise ValueError(
            "--background random is drawn per item at training time, so a preparation cannot store it: prepare "
            "with --channels 4 and no --background, then train with --channels 1 or 3 and --background random"
        )
    if channels == 4 and background is not None:
        raise ValueError(background_with_rgba(background, "prepare"))
    check_conversion(channels, "white" if background is None else background, tuple(BACKGROUNDS))
    where = Path(source).resolve() if os.path.exists(source) else source
    return {
        "source": str(where),
        "size": [size[0], size[1]],
        "channels": channels,
        "background": None if channels == 4 else background or "white",
        "image_column": image_column,
        "label_column": label_column,
    }


def _count(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block, creating the folder if need be; the lock file is removed at the end.

    Raises:
        ValueError: ``out`` is a file, or another process holds its lock.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {printable(str(out))} is a file; give a new or empty folder")
    check_writable(out)
    fd = None if fcntl is None else _lock(out)
    try:
        yield
    finally:
        if fd is not None:
            (out / LOCK).unlink(missing_ok=True)  # while still locked: see `_lock`
            os.close(fd)


def _lock(out: Path) -> int | None:
    """A descriptor of ``out/.lock`` holding its exclusive lock, with this process's id written in it; None
    where the filesystem cannot lock.

    A holder removes the file before it unlocks, so a lock is ours only if the file we locked is still the
    one at that path; if not, we lock the one that takes its place.
    """
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise ValueError(
                f"{printable(str(out))} is being prepared by another diffusion-prepare "
                f"(pid {holder if holder.isdigit() else 'unknown'}): wait for it, or give another --out"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in NO_LOCKS:
                raise
            logger.info("%s cannot be locked (%s): preparing it unlocked", printable(str(out)), e.strerror)
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        os.close(fd)


def _claim(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest of ``out`` when it is complete with these ``settings`` and its files match it; else None
    once ``out`` is free for this preparation: empty, in progress with these settings, or cleared by
    ``overwrite``.

    Raises:
        ValueError: ``out`` holds files that are not a prepared dataset (never removed), one of other
            settings without ``overwrite``, or a complete one whose files are damaged.
    """
    where = printable(str(out))
    manifest = prepared_manifest(out)
    if manifest is None:
        if any(path.name != LOCK for path in out.iterdir()):
            raise ValueError(
                f"--out {where} is not empty and holds no prepared dataset; give a new or empty folder "
                "(nothing in it is removed, --overwrite included)"
            )
        return None
    if overwrite:
        _remove_prepared(out)
        return None
    difference = _difference(prepared_settings(manifest), settings)
    if manifest.get("complete"):
        check_complete(out, manifest)
        if difference:
            raise ValueError(
                f"{where} holds a dataset prepared with {difference}: add --overwrite to replace it, "
                "or give another --out"
            )
        logger.info("%s is complete: checking its files against the manifest's checksums", where)
        check_files(out, manifest, hashes=True)
        return manifest
    if difference:
        raise ValueError(
            f"{where} holds an interrupted preparation with {difference}: add --overwrite to start again, "
            "or give another --out"
        )
    return None


def _difference(found: Any, wanted: dict[str, Any]) -> str:
    """The first setting in which ``found`` differs from ``wanted``, as ``size 8x8, not 16x16``; '' if none."""
    found = found if isinstance(found, dict) else {}
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"{key.replace('_', ' ')} {_shown(found.get(key))}, not {_shown(value)}"
    return ""


def _shown(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return "none" if value is None else str(value)


def _remove_prepared(out: Path) -> None:
    """Remove what a preparation writes into ``out``, and nothing else (its lock stays with its holder)."""
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    _remove_dataset_files(out)
    (out / MANIFEST).unlink()


def _remove_dataset_files(out: Path) -> None:
    for pattern in DATASET_FILES:
        for path in out.glob(pattern):
            path.unlink()


def _names(images: Any) -> list[str]:
    """Each item's name: the file path a dataset's ``Image`` column keeps for its row (read without
    decoding), else ``images.name`` (a folder's relative path, a dataset's ``row N``)."""
    paths: list[str | None] = [None] * len(images)
    if isinstance(images, ArrowImages) and images.shape is None:
        import pyarrow.compute as pc

        paths = pc.struct_field(images.dataset.data.column(images.image_column), "path").to_pylist()
    return [path or images.name(index) for index, path in enumerate(paths)]


def _fingerprint(images: Any) -> str | None:
    """The content fingerprint datasets gives a Hugging Face source; None for a folder, whose names suffice."""
    return getattr(getattr(images, "dataset", None), "_fingerprint", None)


def _listing_sha256(names: list[str], fingerprint: str | None) -> str:
    """The SHA-256 of the item names, one a line, after the source's fingerprint if it has one."""
    lines = names if fingerprint is None else [f"fingerprint {fingerprint}", *names]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _header(settings: dict[str, Any], complete: bool) -> dict[str, Any]:
    """The manifest's fields that say what it is, as every manifest of a preparation starts."""
    created_by = f"pixel-diffusion {__version__}"
    rgba = {RGB_0_UNDER_ALPHA_0: True} if settings["channels"] == 4 else {}  # as `diffusion.image.to_mode` gives it
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "created_by": created_by,
        "settings": settings,
    } | rgba


def _begin(out: Path, settings: dict[str, Any], names: list[str], fingerprint: str | None, shard_size: int) -> int:
    """Mark ``out`` as in progress, or check that its preparation in progress is of this source (its
    listing, and its fingerprint if it has one); the shard size to use (an interrupted one keeps its own)."""
    listing = _listing_sha256(names, fingerprint)
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.get("listing_sha256") != listing:
            kind, change = ("listing", "items were added, removed or renamed")
            if fingerprint is not None:
                kind, change = ("version", "its rows were added, removed or changed")
            raise ValueError(
                f"{printable(str(out))} holds an interrupted preparation of another {kind} of "
                f"{printable(settings['source'])} ({change} since): add --overwrite to start again, "
                "or give another --out"
            )
        logger.info("%s: continuing an interrupted preparation", printable(str(out)))
        return int(manifest["shard_size"])
    write_json(
        out / MANIFEST, _header(settings, complete=False) | {"listing_sha256": listing, "shard_size": shard_size}
    )
    return shard_size


def _finish(out: Path, images: Any, settings: dict[str, Any], count: int) -> dict[str, Any]:
    """Join the ``count`` shards into ``out``, write the complete manifest, remove the shards; the manifest."""
    import datasets

    parts, skipped = read_shards(out / PARTIAL, count)
    prepared = sum(len(part) for part in parts)
    if skipped:
        warn_skipped([(entry["source"], entry["reason"]) for entry in skipped], "image(s)", settings["source"])
    if prepared == 0:
        del parts
        _remove_prepared(out)
        first = skipped[0]
        raise ValueError(
            f"no item of {printable(settings['source'])} decodes (the first, {first['source']}: {first['reason']}); "
            "check the source"
        )
    _remove_dataset_files(out)  # left by a run that stopped while joining
    datasets.concatenate_datasets(parts).save_to_disk(str(out))
    del parts
    files = sorted(out.glob("data-*.arrow"))
    manifest = _header(settings, complete=True) | {
        "shape": [*settings["size"], settings["channels"]],
        "class_names": class_names(images),
        "counts": {"found": len(images), "prepared": prepared, "skipped": len(skipped)},
        "skipped": skipped,
        "files": {path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)} for path in files},
    }
    if RGB_0_UNDER_ALPHA_0 not in read_manifest(out):  # begun by a version whose shards may keep RGB under alpha 0
        manifest.pop(RGB_0_UNDER_ALPHA_0, None)
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(out / PARTIAL)
    return manifest
