"""What every command shares: flags generated from config dataclasses, one-line errors, devices."""

import argparse
import ast
import contextlib
import dataclasses
import errno
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, get_args, get_origin, get_type_hints

import torch

from .. import __version__
from ..arguments import is_out_of_memory
from ..config import literal_choices
from ..io.files import undo_new_folders
from ..training.errors import TrainingError

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, TrainingError)
# OSErrors that are the machine's state, not a bug: reported in one line.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors in the commands' one-line form: ``prog: error: ...``, status 2, no usage
    block (``--help`` shows it), and ``--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__} (pixel-diffusion)")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in a dataclass's source."""
    lines = inspect.getsource(cls).splitlines()
    comments = {}
    for node in ast.walk(ast.parse(inspect.getsource(cls))):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            _, _, comment = lines[node.end_lineno - 1].partition("  # ")
            comments[node.target.id] = comment.strip()
    return comments


def _size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sides, got {text!r}")
    return parts[0], parts[1]


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser_for(annotation: Any, name: str) -> dict[str, Any]:
    """argparse keyword arguments for a field's type."""
    choices = literal_choices(annotation)
    if choices is not None:
        return {"choices": choices, "type": type(choices[0])}
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(base) is tuple:
        return {"type": _size if name in ("image_size", "sample_size") else _int_tuple}
    return {"type": base}


def given_flags(make_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags that ``argv`` spells out: a second parse, by a fresh parser from
    ``make_parser`` in which no flag has a default, so argparse sets only those given."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any, cls: type, *, skip: Sequence[str] = (), from_preset: bool = False
) -> None:
    """One ``--field-name`` flag per dataclass field, typed, with the field comment as help."""
    hints, comments, defaults = get_type_hints(cls), field_comments(cls), cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kwargs = _parser_for(hints[field.name], field.name)
        default = None if from_preset else getattr(defaults, field.name)
        shown = "from the preset" if from_preset else repr(default)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=default,
            help=f"{comments.get(field.name, '')} (default: {shown})",
            **kwargs,
        )


def flag_names(message: str, flags: dict[str, str]) -> str:
    """A library message with the argument names in ``flags`` (whole words, not quoted values or parts of
    paths) replaced by the command's flags."""
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    return re.sub(rf"(?<![-\w/.'\"])({names})(?![\w/'\"])", lambda m: flags[m.group(1)], message)


@contextlib.contextmanager
def named_as_flags(flags: dict[str, str]) -> Iterator[None]:
    """Re-raise a library call's `ValueError` with its argument names as this command's flags (`flag_names`).
    Wrap only calls whose messages quote the user's values (class names, paths are the command's own)."""
    try:
        yield
    except ValueError as e:
        raise type(e)(flag_names(str(e), flags)) from None


def run_command(prog: str, main: Callable[[], int]) -> int:
    """Run ``main`` as command ``prog``: user errors, the machine's errors and Ctrl-C become one line on
    stderr and an exit status (2, or 130 for an interrupt), and output folders the command created are
    removed again if it fails before writing into them."""
    # This package's progress at INFO; other libraries' (httpx requests, accelerate) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("diffusion").setLevel(logging.INFO)
    try:
        with undo_new_folders():
            return main()
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"{prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's side: a full disk, a read-only or forbidden folder, an I/O error
        if e.errno not in MACHINE_ERRNOS:
            raise  # anything else is a bug, and its traceback is wanted
        where = f" ({e.filename})" if e.filename else ""
        message = f"{e.strerror or e}{where}; free space or fix permissions, then run again"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    # Caught last, so that a run too big for the machine ends in one line instead of a traceback. Sizes a
    # command can check beforehand are refused before any work.
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(e):
            raise
        print(f"{prog}: error: out of memory ({_memory_detail(e)}); use a smaller --batch-size", file=sys.stderr)
        return 2


def _memory_detail(error: BaseException) -> str:
    """The size a failed allocation asked for, from torch's message, else the message's first sentence."""
    text = str(error)
    asked = re.search(r"tried to allocate (\d+) bytes", text, flags=re.IGNORECASE)
    if asked:
        return f"tried to allocate {int(asked.group(1)) / 2**30:.1f} GiB"
    asked = re.search(r"tried to allocate ([\d.]+ [KMGT]iB)", text, flags=re.IGNORECASE)
    return f"tried to allocate {asked.group(1)}" if asked else (text.strip().splitlines() or [type(error).__name__])[0]


DEVICES = ("auto", "cpu", "cuda", "mps")  # --device choices; auto: CUDA, else Apple's MPS, else the CPU


def device_from_flag(name: str) -> torch.device:
    """The device of a ``--device`` choice, refused in one line where this machine has none."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next(kind for kind in ("cuda", "mps", "cpu") if available[kind])
    if not available[name]:
        raise ValueError(
            f"--device {name} was asked for but this machine has no {name.upper()} device; use --device cpu"
        )
    return torch.device(name)
