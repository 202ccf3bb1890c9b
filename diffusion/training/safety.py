"""What keeps a run's work safe: stop signals finish the step and checkpoint, and a failed write stops
the run with one line that says what to do, never a traceback."""

import contextlib
import signal
from collections.abc import Iterator

from .errors import TrainingError


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turn a failed write (disk full, permissions, a vanished folder) into a one-line `TrainingError`."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise TrainingError(
            f"could not write {what}: {e.strerror or e}{where}. Earlier checkpoints are intact: free space "
            "(or fix permissions), then run the same command again with --resume auto"
        ) from None


def install_stop_handlers(stop: dict) -> dict:
    """On SIGINT/SIGTERM, finish the current step, checkpoint, then stop (see `Trainer.train`)."""

    def handler(signum: int, _frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
