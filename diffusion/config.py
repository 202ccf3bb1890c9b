"""Typed component configs: dataclass <-> JSON dict, with `Literal` fields checked by name.

Every component (UNet, schedulers, training) has a dataclass config whose fields all carry a default
and a comment. These helpers are the one place that turns such a dataclass into a JSON-ready dict and
back, and that rejects values outside a field's `Literal` choices with a message naming the field,
the value and the allowed values.
"""

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            choices = literal_choices(arg)
            if choices is not None:
                return choices
    return None


def is_positive_int(value: object) -> bool:
    """An int (not a bool) >= 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class ConfigTypeError(TypeError, ValueError):
    """A setting of the wrong type. Also a ValueError, so that the commands report it as bad input in one line
    (as numpy's AxisError is both a ValueError and an IndexError)."""


# What `type_problem` asks of a field annotated with each type.
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def type_problem(annotation: Any, value: Any) -> str | None:
    """What a ``bool``, ``int``, ``float`` or ``str`` annotation (also inside ``X | None``) asks of ``value``
    (``"an integer"``, ...) if ``value`` is not that, else None. Ints count as floats, which must be finite;
    bools are no numbers. Other annotations (``Literal``, tuples) are left to their own checks."""
    union = get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = [a for a in (get_args(annotation) if union else (annotation,)) if a in _TYPE_NAMES]
    if not kinds or (value is None and union and type(None) in get_args(annotation)):
        return None
    kind = kinds[0]
    if kind is bool or kind is str:
        ok = isinstance(value, kind)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    return None if ok else _TYPE_NAMES[kind]


def check_types(config: Any, flags: bool = False) -> None:
    """Check every field of a dataclass instance with `type_problem`.

    Raises:
        ConfigTypeError: for a value of the wrong type, naming the first such field (as ``--field-name`` when
            ``flags``, else by its name).
        ValueError: likewise for a number that is not finite.
    """
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        problem = type_problem(hints[field.name], value)
        if problem is not None:
            name = f"--{field.name.replace('_', '-')}" if flags else field.name
            raise type_error(value)(f"{name} must be {problem}, got {value!r}")


def type_error(value: Any) -> type[ValueError]:
    """The exception for a value `type_problem` refuses: ValueError for a non-finite number, else `ConfigTypeError`."""
    return ValueError if isinstance(value, int | float) and not isinstance(value, bool) else ConfigTypeError


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def validate_literals(config: Any) -> None:
    """Check every ``Literal``-annotated field of a dataclass instance against its choices."""
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        choices = literal_choices(hints[field.name])
        value = getattr(config, field.name)
        if choices is not None and not (value is None and type(None) in get_args(hints[field.name])):
            check_choice(field.name, value, choices)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (tuples become lists)."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict written by `config_to_dict`.

    Unknown keys are an error (a typo must not silently become a default); lists become tuples where
    the field is a tuple. Validation of values is the dataclass's own ``__post_init__``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be built from a dict, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        annotation = hints[key]
        wants_tuple = get_origin(annotation) is tuple or any(get_origin(a) is tuple for a in get_args(annotation))
        if wants_tuple and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)
