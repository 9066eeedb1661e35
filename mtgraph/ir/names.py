"""What a task name and a weight key may be: the patterns, the reserved task names and their checks.

Task names are identifiers (they are IR tokens, output keys of the compiled
module and ONNX output names). A few identifiers mean something else to
mtgraph and are refused as task names wherever tasks are first named: the
IR builders and the construction of ``Head`` and ``Gate`` nodes. Every part of
mtgraph that gives such a name its meaning imports it from here (the ONNX
exporter names its input :data:`INPUT_NAME`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from mtgraph.errors import IRError

__all__ = ["TASK_NAME", "WEIGHT_KEY", "INPUT_NAME", "RESERVED_TASK_NAMES", "check_task_name", "check_weight_key"]

#: A task name: an identifier, so that it is a valid ONNX output name and IR token.
TASK_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: A weight key: letters, digits and ``_ . + -``, not starting with punctuation.
WEIGHT_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*"
#: Name of the single input of every exported model (an output named so would shadow it).
INPUT_NAME = "input"
#: Identifiers that cannot name a task, each with the reason.
RESERVED_TASK_NAMES: Mapping[str, str] = MappingProxyType({
    INPUT_NAME: "the name of an exported ONNX model's input",
})
#: Weight keys with this prefix belong to heads (``head.TASK``); no block or gate may use one.
HEAD_KEY_PREFIX = "head."


def _reserved_text() -> str:
    return "; ".join(f"{name!r}: {why}" for name, why in RESERVED_TASK_NAMES.items())


def check_task_name(name: object, what: str = "task name") -> str:
    """Return ``name`` if it can name a task; IRError saying why not otherwise.

    Args:
        name: the candidate task name.
        what: how the error message refers to it (``"task name"``, ``"the gate's task"``).

    Returns:
        ``name``, unchanged.

    Raises:
        IRError: ``name`` is not a str, not an identifier, or one of
            :data:`RESERVED_TASK_NAMES` (the message lists them).

    Examples:
        >>> from mtgraph.ir.names import check_task_name
        >>> check_task_name("seg")
        'seg'
        >>> check_task_name("input")
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: task name 'input' is reserved; reserved task names are 'input': the name of ...
    """
    if not isinstance(name, str) or not re.fullmatch(TASK_NAME, name):
        raise IRError(f"{what} {name!r} is not an identifier (letters, digits, '_'; not starting with a digit)")
    if name in RESERVED_TASK_NAMES:
        raise IRError(f"{what} {name!r} is reserved; reserved task names are {_reserved_text()}. Rename the task")
    return name


def check_weight_key(key: object, what: str = "weight key") -> str:
    """Return ``key`` if a Block, Skip or Gate node may name it; IRError otherwise.

    Args:
        key: the candidate weight key.
        what: how the error message refers to it.

    Returns:
        ``key``, unchanged.

    Raises:
        IRError: ``key`` is not a str, does not match :data:`WEIGHT_KEY`, or
            starts with ``head.`` (reserved for heads).

    Examples:
        >>> from mtgraph.ir.names import check_weight_key
        >>> check_weight_key("b3.S+E")
        'b3.S+E'
        >>> check_weight_key("b3 S")
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: weight key 'b3 S' is malformed: use letters, digits and '_ . + -', ...
    """
    if not isinstance(key, str) or not re.fullmatch(WEIGHT_KEY, key):
        raise IRError(f"{what} {key!r} is malformed: use letters, digits and '_ . + -', starting with a letter, digit or '_'")
    if key.startswith(HEAD_KEY_PREFIX):
        raise IRError(f"{what} {key!r} is reserved for heads ('{HEAD_KEY_PREFIX}TASK'); name block and gate weights otherwise")
    return key
