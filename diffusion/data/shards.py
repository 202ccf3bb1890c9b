"""The shards of a preparation in progress (`prepare`): decoding items in parallel and committing them.

A shard is a ``save_to_disk`` folder of consecutive items of the source, with a ``shard.json`` of its index
range and skipped items; it is written under a temporary name and renamed into place, so a shard folder
that exists is complete. A shard whose items all fail to decode holds its ``shard.json`` only (datasets
cannot load a saved dataset of no rows).
"""

import contextlib
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

from ..io.files import read_json, write_json
from .files import DECODE_ERRORS, printable
from .manifest import IMAGE, LABEL, PATH

logger = logging.getLogger(__name__)

# What decoding a chunk of items gives: the indices that decode, their (h, w, c) uint8 pixels, and the
# (index, reason) of each item that does not.
Decoded = tuple[list[int], list[np.ndarray], list[tuple[int, str]]]

SHARD = "shard.json"  # inside each shard: its index range and skipped items
SHARD_ROWS = 1000  # rows per shard, unless that many exceed SHARD_BYTES
SHARD_BYTES = 256 * 2**20  # pixels per shard at most: an interrupt loses at most this much work
CHUNK = 16  # items per task sent to a worker at most


def default_shard_size(size: Sequence[int], channels: int) -> int:
    return max(1, min(SHARD_ROWS, SHARD_BYTES // (size[0] * size[1] * channels)))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without datasets' own progress bars (saving, loading), which would interleave with ours."""
    import datasets

    shown = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.utils.enable_progress_bars()


def shard_path(partial: Path, number: int) -> Path:
    return partial / f"shard-{number:05d}"


def _is_done(partial: Path, number: int, rows: range) -> bool:
    try:
        shard = read_json(shard_path(partial, number) / SHARD)
    except (OSError, ValueError):
        return False
    return shard.get("start") == rows.start and shard.get("stop") == rows.stop


def decode_shards(
    images: Any,
    names: list[str],
    partial: Path,
    plan: list[range],
    shape: tuple[int, int, int],
    workers: int,
    progress: bool,
) -> None:
    """Decode and commit, in order, every shard of ``plan`` that ``partial`` does not hold yet; ``names``
    are the items' names, for the ``path`` column and the skip list."""
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
                commit_shard(images, names, partial, number, plan[number], results, shape)
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


def commit_shard(
    images: Any,
    names: list[str],
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
    skipped = [{"source": printable(names[i]), "reason": why} for _, _, chunk in results for i, why in chunk]
    temporary, final = partial / f".shard-{number:05d}", shard_path(partial, number)
    shutil.rmtree(temporary, ignore_errors=True)
    if kept:
        labels = None if images.labels is None else images.labels[kept]
        paths = [printable(names[i]) for i in kept]
        _dataset(np.stack(pixels), labels, paths, class_names(images)).save_to_disk(str(temporary))
    else:
        temporary.mkdir()
    write_json(temporary / SHARD, {"start": rows.start, "stop": rows.stop, "rows": len(kept), "skipped": skipped})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)


def read_shards(partial: Path, count: int) -> tuple[list[Any], list[dict[str, str]]]:
    """The ``count`` committed shards of ``partial``: their datasets (memory-mapped; none for a shard of no
    rows) and their skipped items, in order."""
    import datasets

    shards = [(folder, read_json(folder / SHARD)) for folder in (shard_path(partial, n) for n in range(count))]
    parts = [datasets.load_from_disk(str(folder)) for folder, shard in shards if shard["rows"]]
    return parts, [entry for _, shard in shards for entry in shard["skipped"]]


def class_names(images: Any) -> list[str] | None:
    """The class names when the source has labels, else None (no label column)."""
    return None if images.labels is None else list(images.class_names)


def _features(h: int, w: int, c: int, classes: list[str] | None) -> Any:
    """The columns: the pixels as a fixed-length uint8 list, the label when there are classes, the name."""
    import datasets

    columns = {IMAGE: datasets.List(datasets.Value("uint8"), length=h * w * c)}
    if classes is not None:
        columns[LABEL] = datasets.ClassLabel(names=list(classes))
    columns[PATH] = datasets.Value("string")
    return datasets.Features(columns)


def _dataset(pixels: np.ndarray, labels: np.ndarray | None, paths: list[str], classes: list[str] | None) -> Any:
    """A `datasets.Dataset` of these rows, its arrow table built directly (no per-row Python objects)."""
    import datasets
    import pyarrow as pa

    n, h, w, c = pixels.shape
    features = _features(h, w, c, classes)
    columns = {IMAGE: pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), h * w * c)}  # (n, h*w*c)
    if labels is not None:
        columns[LABEL] = pa.array(labels, pa.int64())
    columns[PATH] = pa.array(paths, pa.string())
    table = pa.table(columns).cast(features.arrow_schema)
    assert table.num_rows == n
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features))
