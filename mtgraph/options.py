"""Validators for the options of configuration dataclasses (one wording for every strategy).

Every strategy config checks its fields in ``__post_init__`` with these, so a
bad value gets the same kind of message wherever it is given::

    AdaShareConfig.epochs must be an integer >= 1, got 0

Each function raises :class:`~mtgraph.errors.ConfigError` naming the owner
(the config class), the field, the rule and the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mtgraph.errors import ConfigError

__all__ = ["check_number", "check_choice", "check_flag", "check_names"]


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
    strict_high: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ConfigError unless ``value`` is a finite number (an int with ``integer``) within the bounds.

    Args:
        owner: the class that owns the option, e.g. ``"MTSLConfig"``.
        name: the option's name.
        value: the value given.
        low: the lowest value allowed (excluded with ``strict_low``).
        high: the highest value allowed (excluded with ``strict_high``).
        strict_low: ``low`` itself is refused.
        strict_high: ``high`` itself is refused.
        integer: only ints are allowed (``True``/``False`` never are).
        optional: None is allowed.

    Raises:
        ConfigError: the value is of the wrong type, not finite, or out of bounds.

    Examples:
        >>> from mtgraph.options import check_number
        >>> check_number("MyConfig", "lr", 1e-3, low=0, strict_low=True)
        >>> check_number("MyConfig", "epochs", 0, low=1, integer=True)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MyConfig.epochs must be an integer >= 1, got 0
        >>> check_number("MyConfig", "gamma", 1.5, low=0, high=1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MyConfig.gamma must be a number in [0, 1], got 1.5
    """
    if value is None and optional:
        return
    kind: Any = int if integer else (int, float)
    noun = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be {noun if integer else 'a finite number'}, got {value!r}")
    below = low is not None and (value <= low if strict_low else value < low)
    above = high is not None and (value >= high if strict_high else value > high)
    if below or above:
        raise ConfigError(f"{owner}.{name} must be {noun} {_range(low, high, strict_low, strict_high)}, got {value!r}")


def _range(low: float | None, high: float | None, strict_low: bool, strict_high: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if strict_low else '['}{low:g}, {high:g}{')' if strict_high else ']'}"
    if low is not None:
        return f"{'>' if strict_low else '>='} {low:g}"
    return f"{'<' if strict_high else '<='} {high:g}"


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``.

    Args:
        owner: the class that owns the option.
        name: the option's name.
        value: the value given.
        choices: the values allowed.

    Raises:
        ConfigError: the value is not one of the choices (they are listed).

    Examples:
        >>> from mtgraph.options import check_choice
        >>> check_choice("MyConfig", "rule", "code", ("paper", "code"))
        >>> check_choice("MyConfig", "rule", "best", ("paper", "code"))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MyConfig.rule must be one of ['paper', 'code'], got 'best'
    """
    if value not in choices:
        raise ConfigError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def check_flag(owner: str, name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is ``True`` or ``False``.

    Args:
        owner: the class that owns the option.
        name: the option's name.
        value: the value given.

    Raises:
        ConfigError: the value is not a bool (``1`` and ``"yes"`` are refused).

    Examples:
        >>> from mtgraph.options import check_flag
        >>> check_flag("MyConfig", "align", True)
        >>> check_flag("MyConfig", "align", 1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MyConfig.align must be True or False, got 1
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be True or False, got {value!r}")


def check_names(owner: str, name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of distinct non-empty strings (task names, say); ConfigError otherwise.

    Args:
        owner: the class or function that owns the option.
        name: the option's name.
        value: the value given: a sequence of names (a single string is refused).

    Returns:
        The names, in order.

    Raises:
        ConfigError: a string instead of a sequence, no names, a name that is
            not a non-empty string, or a repeated name (listed).

    Examples:
        >>> from mtgraph.options import check_names
        >>> check_names("select_networks", "tasks", ["seg", "depth"])
        ('seg', 'depth')
        >>> check_names("select_networks", "tasks", ["seg", "seg"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: select_networks.tasks: names must be unique; repeated: ['seg']
    """
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"{owner}.{name} must be a sequence of names, not the string {value!r}")
    try:
        names = tuple(value)
    except TypeError:
        raise ConfigError(f"{owner}.{name} must be a sequence of names, got {type(value).__name__}") from None
    if not names:
        raise ConfigError(f"{owner}.{name} must name at least one")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"{owner}.{name}: names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{owner}.{name}: names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    return names
