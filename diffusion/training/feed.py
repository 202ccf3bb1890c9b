"""The run's data as its steps meet it: opened once, cut into micro-batches by the data order, and the
items that did not decode.

- `open_data`: ``--data`` as `TrainingImages`, opened by the main process first, so that a bad source
  stops every process with the same one-line error and a Hugging Face source fills datasets' cache once,
  then by the others, which must find as many items;
- `micro_batches`: this process's `Batch` es from a step to the end of the run, through a DataLoader, with
  pinned memory when the device is CUDA; an error a worker raises keeps its own one-line message;
- `SkippedItems`: the items replaced because they do not decode: each warned of once by the process that
  met it, shared among the processes where they all are (logged steps, checkpoints), kept in checkpoints;
- `decoded_folder`: a folder decoded at start, as versions before lazy listing read it, for their runs.
"""

import logging
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..data import Batch, ImageFolder, TrainingImages, open_images, printable
from .config import TrainConfig
from .processes import gathered, on_main
from .sampler import Batches, StepBatchSampler

logger = logging.getLogger(__name__)


def open_data(config: TrainConfig, accelerator: Accelerator, size: tuple[int, int]) -> TrainingImages:
    """``config.data`` fitted to ``size``: the main process opens it first, and an error there is raised on
    every process (`processes.on_main`); the others then open what it checked or made."""
    opened = {}

    def open_on_main() -> None:
        opened["images"] = _open(config, size)

    on_main(accelerator, open_on_main)
    images, outcome = opened.get("images"), None
    try:
        images = images if images is not None else _open(config, size)
        outcome = len(images)
    except (ValueError, OSError) as e:  # another machine's view of --data: every process says the same line
        outcome = f"{type(e).__name__} on process {accelerator.process_index}: {e}"
    outcomes = gathered(accelerator, [outcome])
    errors = [o for o in outcomes if isinstance(o, str)]
    if errors:
        raise ValueError(errors[0])
    if len(set(outcomes)) > 1:
        counts = ", ".join(map(str, outcomes))
        raise ValueError(
            f"the processes found different numbers of items in {printable(config.data)} ({counts}): give every "
            "process the same data (a folder still being copied?)"
        )
    return images


def _open(config: TrainConfig, size: tuple[int, int]) -> TrainingImages:
    return open_images(
        config.data,
        size,
        config.channels,
        random_crop=config.random_crop,
        hflip=config.hflip,
        background=config.background,
        image_column=config.image_column,
        label_column=config.label_column,
    )


def decoded_folder(images: TrainingImages, config: TrainConfig) -> ImageFolder | None:
    """``images``, a folder listed by name, decoded instead (its undecodable files left out); None for
    another source, or a folder decoded already."""
    if not isinstance(images, ImageFolder) or images.validated:
        return None
    logger.info("decoding every file of %s, as the run being resumed did at its start ...", printable(config.data))
    c = config
    options = {"random_crop": c.random_crop, "hflip": c.hflip, "background": c.background}
    return ImageFolder(c.data, images.size, c.channels, **options, validate=True)


def micro_batches(
    images: TrainingImages, config: TrainConfig, accelerator: Accelerator, start: int, end: int
) -> Iterator[Batch]:
    """This process's micro-batches from step ``start`` to step ``end``, in the order `StepBatchSampler` fixes."""
    sampler = StepBatchSampler(
        len(images),
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        seed=config.seed,
        start_step=start,
        end_step=end,
    )
    # Each key list of the sampler is one batch (`Batches`). Its own generator: creating a DataLoader
    # iterator otherwise draws from torch's global RNG, which dropout also uses, and a resume would shift it.
    loader = DataLoader(
        Batches(images),
        sampler=sampler,
        batch_size=None,
        num_workers=config.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator(),
    )
    iterator = iter(loader)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as e:
            raise _own_message(e) from None


def _own_message(error: Exception) -> Exception:
    """A worker's error as the worker raised it: DataLoader re-raises it with the worker's whole traceback
    in its message, whose last line is the error's own."""
    text = str(error)
    if "\nOriginal Traceback" not in text:
        return error
    return type(error)(text.strip().splitlines()[-1].partition(": ")[2])


class SkippedItems:
    """The items that did not decode and were replaced, by name, with the reason."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = dict(known or {})  # every process's, as of the last `share`
        self.new: list[tuple[str, str]] = []  # this process's since
        self.unlogged: set[str] = set()  # shared, not yet named in a metrics row

    def note(self, skipped: tuple[tuple[str, str], ...]) -> None:
        """Warn of each of a batch's replaced items that this run has not met before."""
        for name, reason in skipped:
            if name not in self.known and name not in dict(self.new):
                message = "skipped %s, which does not decode (%s); the next item that does takes its place"
                logger.warning(message, name, reason)
                self.new.append((name, reason))

    def share(self, accelerator: Accelerator) -> list[str]:
        """Merge every process's new items (a collective: all processes call it alike); return the names
        new to the run, sorted."""
        everyone = gathered(accelerator, self.new)
        new = sorted({name for name, _ in everyone if name not in self.known})
        self.known |= dict(everyone)
        self.new = []
        self.unlogged.update(new)
        return new

    def metrics(self, accelerator: Accelerator) -> dict:
        """The fields of a metrics row: the running count and the names new since the last row, once any."""
        self.share(accelerator)
        named, self.unlogged = sorted(self.unlogged), set()
        if not self.known:
            return {}
        return {"skipped_files": len(self.known)} | ({"skipped": named} if named else {})
