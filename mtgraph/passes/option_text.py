"""The text form of pass options: each option's type decides how its value is written in a pipeline.

Option types a pass field may have: ``bool``, ``int``, ``float``, ``str``,
``tuple[str, ...]`` (tasks joined by ``+``) and ``tuple[tuple[str, ...], ...]``
(groups separated by ``/``), each possibly ``| None``.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from mtgraph.errors import PassError

if TYPE_CHECKING:
    from mtgraph.passes.base import Pass

__all__ = ["option_types", "encode_option", "decode_option", "format_pass"]


def option_types(cls: type) -> dict[str, Any]:
    """The resolved type of every option (dataclass field) of pass class ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _is_optional(hint: Any) -> tuple[bool, Any]:
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return True, next(a for a in args if a is not type(None))
    return False, hint


def encode_option(hint: Any, value: Any) -> str | None:
    """The pipeline-text form of one option value (None for an unset optional option)."""
    optional, base = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise PassError(f"option value None is not allowed for type {hint}")
    if base is bool:
        return "true" if value else "false"
    if base is int:
        return str(int(value))
    if base is float:
        return repr(float(value))
    if base is str:
        return str(value)
    if base == tuple[str, ...]:
        return "+".join(value)
    if base == tuple[tuple[str, ...], ...]:
        return "/".join("+".join(group) for group in value)
    raise PassError(f"no text form for option type {hint}")


def decode_option(hint: Any, text: str) -> Any:
    """Parse one option value from pipeline text; raises ValueError with the reason."""
    _, base = _is_optional(hint)
    if base is bool:
        if text not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text == "true"
    if base is int:
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValueError(f"expected an integer, got {text!r}")
        return int(text)
    if base is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    if base is str:
        return text
    if base == tuple[str, ...]:
        parts = text.split("+")
        if any(not p for p in parts):
            raise ValueError(f"expected task names joined by '+', got {text!r}")
        return tuple(parts)
    if base == tuple[tuple[str, ...], ...]:
        groups = [g.split("+") for g in text.split("/")]
        if any(not t for g in groups for t in g):
            raise ValueError(f"expected groups like 'A+B/C' ('+' inside a group, '/' between groups), got {text!r}")
        return tuple(tuple(g) for g in groups)
    raise ValueError(f"no text form for option type {hint}")


def format_pass(pass_: Pass) -> str:
    """The pipeline-text form of one pass: ``name{opt=value,...}`` (unset optional options omitted)."""
    types = option_types(type(pass_))
    parts = []
    for field_name, hint in types.items():
        text = encode_option(hint, getattr(pass_, field_name))
        if text is not None:
            parts.append(f"{field_name}={text}")
    return f"{pass_.name}{{{','.join(parts)}}}" if parts else pass_.name
