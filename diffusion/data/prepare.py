"""`prepare`: decode a source of images once, fitted to one size, into a prepared dataset (`manifest`).

Every item is decoded once, in parallel, in the source's order. Rows go to shards under ``OUT/partial``,
each one a ``save_to_disk`` folder with its own list of skipped items, committed by a rename: an
interrupted preparation, run again with the same settings on the same source listing, keeps the shards it
finished and decodes only the missing ones. At the end the shards become one ``save_to_disk`` folder, the
complete manifest is written last and ``OUT/partial`` is removed.
"""

import contextlib
import hashlib
import logging
import math
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..io.files import check_writable, read_json, sha256_of, write_json
from .files import DECODE_ERRORS, printable, warn_skipped
from .manifest import FORMAT, IMAGE, LABEL, MANIFEST, PATH, VERSION, check_complete, is_prepared, read_manifest
from .sources import open_images

logger = logging.getLogger(__name__)

# What decoding a chunk of items gives: the indices that decode, their (h, w, c) uint8 pixels, and the
# (index, reason) of each item that does not.
Decoded = tuple[list[int], list[np.ndarray], list[tuple[int, str]]]

PARTIAL = "partial"  # the shards of a preparation in progress, inside OUT
SHARD = "shard.json"  # inside each shard: its index range and skipped items
SHARD_ROWS = 1000  # rows per shard, unless that many exceed SHARD_BYTES
SHARD_BYTES = 256 * 2**20  # pixels per shard at most: an interrupt loses at most this much work
CHUNK = 16  # items per task sent to a worker at most
# What `datasets.Dataset.save_to_disk` writes, with the manifest: all that --overwrite removes.
DATASET_FILES = ("dataset_info.json", "state.json", "data-*.arrow")


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: tuple[int, int],
    channels: int = 3,
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
            finished if interrupted, and left as it is if complete).
        size: (height, width) of the stored images.
        channels: 1 (grayscale) or 3 (RGB).
        image_column, label_column: the columns of a dataset source (default: found by their type).
        workers: decoding processes (default: one per available core; 1 decodes in this process).
        shard_size: rows per shard (default: up to 1000, fewer when that many would pass 256 MiB).
        overwrite: replace a prepared dataset of other settings, or restart an interrupted one.
        progress: show a progress bar over the images.

    Returns:
        The manifest (`manifest` describes it); its ``counts`` say how many items were found, prepared and
        skipped, and ``skipped`` names each skipped item with the reason.

    Raises:
        ValueError: bad arguments, ``out`` holding other files or a preparation of other settings, or no
            item of ``source`` decoding.
        FileNotFoundError: ``source`` does not exist.
    """
    settings = _settings(source, size, channels, image_column, label_column)
    size = (settings["size"][0], settings["size"][1])
    workers = _count("workers", workers, default=_available_cores())
    shard_size = _count("shard_size", shard_size, default=_default_shard_size(size, channels))
    out = Path(out)
    done = _claim(out, settings, overwrite)
    if done is not None:
        logger.info("%s already holds this dataset, prepared with the same settings", printable(str(out)))
        shutil.rmtree(out / PARTIAL, ignore_errors=True)  # left over if the last run stopped after its manifest
        return done
    _require_datasets()
    images = open_images(source, size=size, channels=channels, image_column=image_column, label_column=label_column)
    assert len(images) > 0, "open_images refuses a source without items"
    check_writable(out)
    shard_size = _begin(out, settings, _listing_sha256(images), shard_size)
    plan = [range(start, min(start + shard_size, len(images))) for start in range(0, len(images), shard_size)]
    with _quiet():
        _decode_shards(images, out / PARTIAL, plan, (size[0], size[1], channels), workers, progress)
        return _finish(out, images, settings, len(plan))


def _settings(
    source: str | os.PathLike, size: Sequence[int], channels: int, image_column: str | None, label_column: str | None
) -> dict[str, Any]:
    """What the prepared data depends on, as the manifest stores it; a local source by its absolute path."""
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"size must be (height, width) in positive integers, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    where = Path(source).resolve() if os.path.exists(source) else source
    return {
        "source": str(where),
        "size": [size[0], size[1]],
        "channels": channels,
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


def _default_shard_size(size: Sequence[int], channels: int) -> int:
    return max(1, min(SHARD_ROWS, SHARD_BYTES // (size[0] * size[1] * channels)))


def _require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ValueError(
            "preparing a dataset needs the datasets package: pip install 'pixel-diffusion[datasets]'"
        ) from None


def _claim(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest of ``out`` when it is complete with these ``settings``; else None once ``out`` is free
    for this preparation: absent, empty, in progress with these settings, or cleared by ``overwrite``.

    Raises:
        ValueError: ``out`` is a file, holds files that are not a prepared dataset (never removed), or
            holds one of other settings without ``overwrite``.
    """
    where = printable(str(out))
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"--out {where} is a file; give a new or empty folder")
    if not is_prepared(out):
        if any(out.iterdir()):
            raise ValueError(
                f"--out {where} is not empty and holds no prepared dataset; give a new or empty folder "
                "(nothing in it is removed, --overwrite included)"
            )
        return None
    if overwrite:
        _remove_prepared(out)
        return None
    manifest = read_manifest(out)
    difference = _difference(manifest.get("settings"), settings)
    if manifest.get("complete"):
        check_complete(out, manifest)
        if difference:
            raise ValueError(
                f"{where} holds a dataset prepared with {difference}: add --overwrite to replace it, "
                "or give another --out"
            )
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
    """Remove what a preparation writes into ``out``, and nothing else."""
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    for pattern in DATASET_FILES:
        for path in out.glob(pattern):
            path.unlink()
    (out / MANIFEST).unlink()


def _listing_sha256(images: Any) -> str:
    """The SHA-256 of the source's item names, one a line: a resumed preparation must see the same items."""
    names = "\n".join(images.name(i) for i in range(len(images)))
    return hashlib.sha256(names.encode("utf-8", "surrogateescape")).hexdigest()


def _begin(out: Path, settings: dict[str, Any], listing: str, shard_size: int) -> int:
    """Mark ``out`` as in progress, or check that its preparation in progress is of this source listing;
    the shard size to use (an interrupted preparation keeps its own)."""
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.get("listing_sha256") != listing:
            raise ValueError(
                f"{printable(str(out))} holds an interrupted preparation of another listing of "
                f"{printable(settings['source'])} (items were "
                "added, removed or renamed since): add --overwrite to start again, or give another --out"
            )
        logger.info("%s: continuing an interrupted preparation", printable(str(out)))
        return int(manifest["shard_size"])
    write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "version": VERSION,
            "complete": False,
            "created_by": f"pixel-diffusion {__version__}",
            "settings": settings,
            "listing_sha256": listing,
            "shard_size": shard_size,
        },
    )
    return shard_size


def _features(h: int, w: int, c: int, class_names: list[str] | None) -> Any:
    """The columns: the pixels as a fixed-length uint8 list, the label when there are classes, the name."""
    import datasets

    columns = {IMAGE: datasets.List(datasets.Value("uint8"), length=h * w * c)}
    if class_names is not None:
        columns[LABEL] = datasets.ClassLabel(names=list(class_names))
    columns[PATH] = datasets.Value("string")
    return datasets.Features(columns)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without datasets' own progress bars (saving, loading), which would interleave with ours."""
    import datasets

    shown = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.utils.enable_progress_bars()


def _shard_path(partial: Path, number: int) -> Path:
    return partial / f"shard-{number:05d}"


def _is_done(partial: Path, number: int, rows: range) -> bool:
    try:
        shard = read_json(_shard_path(partial, number) / SHARD)
    except (OSError, ValueError):
        return False
    return shard.get("start") == rows.start and shard.get("stop") == rows.stop


def _decode_shards(
    images: Any, partial: Path, plan: list[range], shape: tuple[int, int, int], workers: int, progress: bool
) -> None:
    """Decode and commit, in order, every shard of ``plan`` that ``partial`` does not hold yet."""
    partial.mkdir(exist_ok=True)
    for stale in partial.glob(".shard-*"):  # a shard being written when the last run stopped
        shutil.rmtree(stale)
    todo = [number for number, rows in enumerate(plan) if not _is_done(partial, number, rows)]
    left = sum(len(plan[number]) for number in todo)
    if left < len(images):
        logger.info("%d of %d shards are done; decoding the other %d", len(plan) - len(todo), len(plan), len(todo))
    chunk = max(1, min(CHUNK, math.ceil(left / (4 * workers))))  # a few tasks per worker, for balance
    tasks = [(number, plan[number][i : i + chunk]) for number in todo for i in range(0, len(plan[number]), chunk)]
    results: list[Decoded] = []
    with (
        tqdm(total=len(images), initial=len(images) - left, disable=not progress, unit="img", desc="prepare") as bar,
        _decoder(images, min(workers, len(tasks))) as decode,
    ):
        for (number, rows), result in zip(tasks, decode([rows for _, rows in tasks]), strict=True):
            results.append(result)
            bar.update(len(rows))
            if rows.stop == plan[number].stop:
                _commit_shard(images, partial, number, plan[number], results, shape)
                results = []


@contextlib.contextmanager
def _decoder(images: Any, workers: int) -> Iterator[Any]:
    """A function from chunks of indices to their decoded items, in order: in this process for one worker,
    else by a pool whose workers receive ``images`` once."""
    if workers <= 1:
        yield lambda chunks: (_decode_chunk(images, rows) for rows in chunks)
        return
    with Pool(workers, initializer=_start_worker, initargs=(images,)) as pool:
        yield lambda chunks: pool.imap(_decode_in_worker, chunks)


_worker_images: Any = None  # a pool worker's source, set once by `_start_worker`


def _start_worker(images: Any) -> None:
    global _worker_images
    _worker_images = images
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops the pool


def _decode_in_worker(rows: range) -> Decoded:
    return _decode_chunk(_worker_images, rows)


def _decode_chunk(images: Any, rows: range) -> Decoded:
    """The items of ``rows`` decoded, each one that does not decode with the reason."""
    kept, pixels, skipped = [], [], []
    for index in rows:
        try:
            pixels.append(images.pixels(index))
        except DECODE_ERRORS as e:
            skipped.append((index, f"{type(e).__name__}: {e}"))
            continue
        kept.append(index)
    return kept, pixels, skipped


def _commit_shard(
    images: Any,
    partial: Path,
    number: int,
    rows: range,
    results: list[Decoded],
    shape: tuple[int, int, int],
) -> None:
    """Write shard ``number`` (the items of ``rows``) under a temporary name, then rename it into place."""
    kept = [index for chunk, _, _ in results for index in chunk]
    pixels = [p for _, chunk, _ in results for p in chunk]
    assert all(p.shape == shape and p.dtype == np.uint8 for p in pixels), "the reader fits items to the size"
    skipped = [{"source": printable(images.name(i)), "reason": why} for _, _, chunk in results for i, why in chunk]
    temporary, final = partial / f".shard-{number:05d}", _shard_path(partial, number)
    shutil.rmtree(temporary, ignore_errors=True)
    if kept:
        labels = None if images.labels is None else images.labels[kept]
        paths = [printable(images.name(i)) for i in kept]
        _dataset(np.stack(pixels), labels, paths, _class_names(images)).save_to_disk(str(temporary))
    else:
        temporary.mkdir()  # datasets cannot load a saved dataset of no rows: the shard is its skip list only
    write_json(temporary / SHARD, {"start": rows.start, "stop": rows.stop, "rows": len(kept), "skipped": skipped})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)


def _class_names(images: Any) -> list[str] | None:
    """The class names when the source has labels, else None (no label column)."""
    return None if images.labels is None else list(images.class_names)


def _dataset(pixels: np.ndarray, labels: np.ndarray | None, paths: list[str], class_names: list[str] | None) -> Any:
    """A `datasets.Dataset` of these rows, its arrow table built directly (no per-row Python objects)."""
    import datasets
    import pyarrow as pa

    n, h, w, c = pixels.shape
    features = _features(h, w, c, class_names)
    columns = {IMAGE: pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), h * w * c)}  # (n, h*w*c)
    if labels is not None:
        columns[LABEL] = pa.array(labels, pa.int64())
    columns[PATH] = pa.array(paths, pa.string())
    table = pa.table(columns).cast(features.arrow_schema)
    assert table.num_rows == n
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _finish(out: Path, images: Any, settings: dict[str, Any], count: int) -> dict[str, Any]:
    """Join the ``count`` shards into ``out``, write the complete manifest, remove the shards; the manifest."""
    import datasets

    partial = out / PARTIAL
    folders = [_shard_path(partial, number) for number in range(count)]
    shards = [(folder, read_json(folder / SHARD)) for folder in folders]
    skipped = [entry for _, shard in shards for entry in shard["skipped"]]
    parts = [datasets.load_from_disk(str(folder)) for folder, shard in shards if shard["rows"]]
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
    for pattern in DATASET_FILES:  # left by a run that stopped while joining
        for path in out.glob(pattern):
            path.unlink()
    datasets.concatenate_datasets(parts).save_to_disk(str(out))
    del parts
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "complete": True,
        "created_by": f"pixel-diffusion {__version__}",
        "settings": settings,
        "shape": [*settings["size"], settings["channels"]],
        "class_names": _class_names(images),
        "counts": {"found": len(images), "prepared": prepared, "skipped": len(skipped)},
        "skipped": skipped,
        "files": {
            path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(out.glob("data-*.arrow"))
        },
    }
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(partial)
    return manifest
