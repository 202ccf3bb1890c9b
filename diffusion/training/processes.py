"""What the processes of a multi-process run agree on, and how: work only the main process does, a stop
signal, a flag any process may raise. One process agrees with itself at no cost; several agree by a
collective, which every process must run at the same point of the run, or the others wait forever.
"""

import pickle
from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

T = TypeVar("T")


def on_main(accelerator: Accelerator, work: Callable[[], T]) -> T:
    """Run ``work`` on the main process only and return its result on every process. Should it raise,
    every process raises the error, so that none waits for a main process that has stopped."""
    if accelerator.num_processes == 1:
        return work()
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = work()
        except Exception as e:
            error = e
    outcome = [result, None if error is None else _portable(error)]
    broadcast_object_list(outcome)  # also the barrier: the others wait here until the main one is done
    if error is not None:
        raise error  # the main process's own, with its traceback
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def agree_to_stop(accelerator: Accelerator, stop: dict, logging: bool) -> bool:
    """Whether the run stops after this step: on a stop signal (`safety.install_stop_handlers`). One process
    reads its own flag; several agree by an all-reduce, which they run only on logging steps, all at the
    same steps, so that a step without logging never waits for the others."""
    if accelerator.num_processes == 1:
        return stop["signal"] is not None
    if not logging:
        return False
    if stop["signal"] is not None:
        accelerator.set_trigger()
    if accelerator.check_trigger():  # every process stops after the same step, or none does
        stop["signal"] = stop["signal"] or "a signal on another process"
        return True
    return False


def any_process(accelerator: Accelerator, flag: torch.Tensor) -> bool:
    """Whether the 0-d bool ``flag`` is set on any process (a read of the device: it waits for it)."""
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag.int(), "max")
    return bool(flag.item())


def gathered(accelerator: Accelerator, items: list[T]) -> list[T]:
    """Every process's ``items``, in rank order, on every process (a collective: all call it alike)."""
    return items if accelerator.num_processes == 1 else gather_object(items)


def _portable(error: Exception) -> Exception:
    """``error`` as another process can receive it: a copy of it if it pickles, else a RuntimeError that
    names its type and message."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
