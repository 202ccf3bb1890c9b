"""The harness of the hypothesis fuzz tests: settings, time and memory limits, and argv drawn from a
command's real flags.

A clean error is exit status 2 with one stderr line ``diffusion-<cmd>: error: ...`` and no traceback.
The flags are those of the real parsers (introspected), each given a value from a hostile pool (negative,
zero, huge, NaN, inf, empty, not a number, unknown names) or a valid one.
"""

import contextlib
import io
import logging
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run, so that a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_RUN = 20  # a run that takes longer counts as a hang
MEMORY_HEADROOM = 4 * 2**30  # address space a run may add: an allocation beyond it fails loudly

# Values by what a flag parses, mostly ones its parser takes (so that validation behind it is reached).
INTS = ["-1", "0", "1", "2", "7", str(10**12), str(2**63), str(2**64)]
FLOATS = ["-1", "0", "0.5", "1", "-0.5", "1e-30", "1e308", "1e999", "nan", "inf", "-inf"]
WORDS = ["", " ", "abc", "no-such-name", "-1", "0"]
NOT_NUMBERS = ["", "abc", "1.5", "0x10", "1e999x", "3x0", "1,-1"]
UNKNOWN_FLAGS = ["--no-such-flag", "--lrr", "-x", "--steps="]


class Hang(BaseException):
    """Raised by `time_limit`: a BaseException, so that no handler of the code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def hang(*_: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(headroom: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``headroom`` (not where CUDA is: it maps address space of
    its own as it goes, so the cap would refuse it, and GPU memory is not what this guards)."""
    if torch.cuda.is_available():
        yield
        return
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (pages * resource.getpagesize() + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(main, argv: list[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``main(argv)``, with log records on stderr as the command has them."""
    err, out = io.StringIO(), io.StringIO()
    handler, root = logging.StreamHandler(err), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what run_command's logging.basicConfig sets up outside pytest
    try:
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
            time_limit(SECONDS_PER_RUN),
            memory_limit(MEMORY_HEADROOM),
        ):
            try:
                status = main(argv)
            except SystemExit as e:
                status = e.code
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return status, err.getvalue().strip().splitlines()


def assert_clean(status: int, err: list[str], prog: str, argv: list[str]) -> None:
    assert status in (0, 2), (status, argv, err)
    assert not any("Traceback" in line for line in err), (argv, err)
    if status == 2:
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), (argv, err)
        assert "out of memory" not in err[0], (argv, err)  # sizes are refused before anything is allocated


# ----- argv from the real flags -----


def flags_of(parser) -> dict[str, object]:
    """Every flag but --help and --version (which print and exit 0), by its first spelling."""
    return {
        a.option_strings[0]: a
        for a in parser._actions
        if a.option_strings and a.option_strings[0] not in ("-h", "--version")
    }


def value_for(action, valid: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    """The words that follow a flag: nothing for a switch (or a stray word), one or two values otherwise."""
    flag = action.option_strings[0]
    if action.nargs == 0:
        return st.one_of(st.just([]), st.sampled_from(WORDS).map(lambda v: [v]))
    own = [*valid.get(flag, []), *(str(c) for c in action.choices or ())]
    typed = {int: INTS, float: FLOATS}.get(action.type, WORDS)
    pool = st.one_of(st.sampled_from(own or typed), st.sampled_from(typed), st.sampled_from(NOT_NUMBERS))
    return st.lists(pool, min_size=action.nargs or 1, max_size=action.nargs or 1)


def words(parser, valid: dict[str, list[str]]) -> st.SearchStrategy[list[str]]:
    """One flag with its value(s), or now and then an unknown flag."""
    known = st.sampled_from(sorted(flags_of(parser).items())).flatmap(
        lambda item: value_for(item[1], valid).map(lambda values: [item[0], *values])
    )
    unknown = st.sampled_from(UNKNOWN_FLAGS).map(lambda f: [f])
    return st.integers(0, 9).flatmap(lambda i: unknown if i == 0 else known)


# Flag and value pairs every command must refuse, whatever else argv holds: non-numbers, NaN and inf for
# every numeric flag, -1 for every count, a word no parser of a flag's own type takes, an empty name, a
# value after a switch, an unknown flag.
def refused(parser) -> list[list[str]]:
    pairs = []
    for flag, action in flags_of(parser).items():
        if action.nargs == 0:
            pairs.append([flag, "abc"])
        elif action.type in (int, float):
            pairs += [[flag, v] for v in ("abc", "", "1e999x", "nan", "inf", "-inf")]
            pairs += [[flag, "-1"]] if action.type is int and action.choices is None else []
        elif action.nargs == 2:
            pairs.append([flag, "", ""])
        elif action.choices is not None:
            pairs.append([flag, "no-such-name"])
        else:
            pairs.append([flag, "abc" if action.type is not None and action.type is not str else ""])
    return pairs + [[f] for f in UNKNOWN_FLAGS]


def argv_of(parser, base: list[str], valid: dict[str, list[str]], must_refuse: bool) -> st.SearchStrategy:
    drawn = st.lists(words(parser, valid), min_size=1 if not must_refuse else 0, max_size=4)
    if not must_refuse:
        return drawn.map(lambda parts: base + [w for part in parts for w in part])
    bad = st.sampled_from(refused(parser))  # last, so that no later value of its flag replaces it
    return st.tuples(drawn, bad).map(lambda t: base + [w for part in [*t[0], t[1]] for w in part])
