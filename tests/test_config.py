from dataclasses import dataclass
from typing import Literal

import pytest

from diffusion.config import (
    check_choice,
    config_from_dict,
    config_to_dict,
    literal_choices,
    validate_literals,
)


@dataclass(kw_only=True)
class Example:
    mode: Literal["a", "b"] = "a"  # a choice
    maybe: Literal[1, 2] | None = None  # an optional choice
    sizes: tuple[int, ...] = (1, 2)  # a tuple field

    def __post_init__(self) -> None:
        validate_literals(self)


def test_literal_choices_are_read_from_annotations():
    assert literal_choices(Literal["x", "y"]) == ("x", "y")
    assert literal_choices(Literal[0, 1] | None) == (0, 1)
    assert literal_choices(int) is None


def test_round_trip_turns_lists_back_into_tuples():
    config = Example(mode="b", maybe=2, sizes=(3, 4, 5))
    data = config_to_dict(config)
    assert data == {"mode": "b", "maybe": 2, "sizes": [3, 4, 5]}
    assert config_from_dict(Example, data) == config


def test_bad_choice_names_field_value_and_choices():
    with pytest.raises(ValueError, match=r"unknown mode 'c'; expected one of 'a', 'b'"):
        Example(mode="c")
    with pytest.raises(ValueError, match=r"unknown maybe 3; expected one of 1, 2"):
        Example(maybe=3)
    with pytest.raises(ValueError, match=r"unknown spacing 'x'; expected one of 'leading'"):
        check_choice("spacing", "x", ("leading",))


def test_unknown_keys_and_non_dicts_are_refused():
    with pytest.raises(
        ValueError, match=r"unknown Example field\(s\) \['mdoe'\]; known fields: \['maybe', 'mode', 'sizes'\]"
    ):
        config_from_dict(Example, {"mdoe": "a"})
    with pytest.raises(ValueError, match="Example must be built from a dict, got list"):
        config_from_dict(Example, [])
