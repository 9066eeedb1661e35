"""The pass registry and the one-line text form of a pipeline.

Grammar (whitespace between tokens is allowed and ignored)::

    pipeline := pass ("," pass)*
    pass     := NAME ["{" [option ("," option)*] "}"]
    option   := NAME "=" VALUE
    VALUE    := one or more of  A-Z a-z 0-9 _ . + - /

Values are typed by the pass's fields: ints, floats, words, task sets
``S+E`` (``+`` joins tasks) and groups ``S+E/D`` (``/`` separates groups).
Example: ``fuse{tasks=seg+edge,block=3,init=average},dce``.

:func:`format_pipeline` writes every option that is set, in field order, so
``format_pipeline(parse_pipeline(text)) == text`` for text in that form and
``parse_pipeline(format_pipeline(passes)) == passes`` always. Pass names are
looked up only in :data:`REGISTRY`, an explicit dict; nothing else can be
named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import MISSING, fields
from typing import Any, cast

from mtgraph.errors import MTGraphError, ParseError, PassError
from mtgraph.passes.base import Pass
from mtgraph.passes.cse import CSEPass
from mtgraph.passes.dce import DCEPass
from mtgraph.passes.fuse import FusePass
from mtgraph.passes.gate import GatePass
from mtgraph.passes.harden import HardenPass
from mtgraph.passes.option_text import decode_option, format_pass, option_types
from mtgraph.passes.skip import SkipPass
from mtgraph.passes.split import SplitPass

__all__ = ["REGISTRY", "pass_class", "parse_pipeline", "format_pipeline", "MAX_PIPELINE_CHARS"]

#: Every pass that can be named in a pipeline string: name -> class.
REGISTRY: dict[str, type[Pass]] = {
    "fuse": FusePass,
    "split": SplitPass,
    "skip": SkipPass,
    "gate": GatePass,
    "harden": HardenPass,
    "cse": CSEPass,
    "dce": DCEPass,
}

#: Longer pipeline strings are refused outright.
MAX_PIPELINE_CHARS = 1_000_000

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"[A-Za-z0-9_.+\-/]+")


def pass_class(name: str) -> type[Pass]:
    """The pass class registered under ``name``; PassError listing the valid names otherwise.

    Args:
        name: a pass name as written in a pipeline (``"fuse"``).

    Returns:
        The class from :data:`REGISTRY`.

    Raises:
        PassError: ``name`` is not registered.

    Examples:
        >>> from mtgraph.passes import pass_class
        >>> pass_class("fuse").__name__
        'FusePass'
        >>> pass_class("merge")
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: unknown pass 'merge'; valid passes are ['cse', 'dce', 'fuse', ...]
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise PassError(f"unknown pass {name!r}; valid passes are {sorted(REGISTRY)}") from None


class _Reader:
    """A cursor over pipeline text that reports errors with the position and a caret."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> ParseError:
        at = self.pos if pos is None else pos
        found = repr(self.text[at]) if at < len(self.text) else "the end"
        return ParseError(f"pipeline position {at} (at {found}): {message}\n  {self.text}\n  {' ' * at}^")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r} {context}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> tuple[str, int]:
        self.skip_space()
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected {what}")
        start, self.pos = self.pos, m.end()
        return m.group(0), start


def _parse_pass(reader: _Reader) -> Pass:
    name, name_pos = reader.match(_NAME, "a pass name")
    if name not in REGISTRY:
        raise reader.error(f"unknown pass {name!r}; valid passes are {sorted(REGISTRY)}", name_pos)
    cls = REGISTRY[name]
    types = option_types(cls)
    options: dict[str, object] = {}
    if reader.peek() == "{":
        reader.pos += 1
        if reader.peek() == "}":
            reader.pos += 1
        else:
            while True:
                key, key_pos = reader.match(_NAME, f"an option name of {name!r} (one of {list(types)})")
                if key not in types:
                    raise reader.error(f"pass {name!r} has no option {key!r}; its options are {list(types)}", key_pos)
                if key in options:
                    raise reader.error(f"option {key!r} of {name!r} is given twice", key_pos)
                reader.expect("=", f"after option {key!r}")
                text, value_pos = reader.match(_VALUE, f"a value for option {key!r}")
                try:
                    options[key] = decode_option(types[key], text)
                except ValueError as exc:
                    raise reader.error(f"bad value for option {key!r} of {name!r}: {exc}", value_pos) from None
                if reader.peek() == ",":
                    reader.pos += 1
                    continue
                reader.expect("}", f"or ',' after the value of {key!r}")
                break
    required = [f.name for f in fields(cast(Any, cls)) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in options]
    if missing:
        raise reader.error(f"pass {name!r} is missing options {missing}; its options are {list(types)}", name_pos)
    try:
        return cls(**options)  # type: ignore[arg-type]
    except MTGraphError as exc:
        raise reader.error(str(exc), name_pos) from None


def parse_pipeline(text: str) -> list[Pass]:
    """Parse ``fuse{tasks=S+E,block=3},dce`` into pass objects; ParseError naming the position otherwise.

    Args:
        text: the pipeline (grammar in the module docstring).

    Returns:
        The passes, in order.

    Raises:
        ParseError: ``text`` is not a str, is too long or empty, does not
            follow the grammar, names an unknown pass or option, misses a
            required option or has an invalid value; the message shows the
            position with a caret.

    Examples:
        >>> from mtgraph.passes import parse_pipeline
        >>> parse_pipeline("fuse{tasks=S+E,block=3},dce")
        [FusePass(tasks=('S', 'E'), block=3, init='average', source_task=None), DCEPass()]
        >>> parse_pipeline("fuse{tasks=S+E,blok=3}")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ParseError: pipeline position 15 (at 'b'): pass 'fuse' has no option 'blok'; ...
    """
    if not isinstance(text, str):
        raise ParseError(f"a pipeline must be a str, got {type(text).__name__}")
    if len(text) > MAX_PIPELINE_CHARS:
        raise ParseError(f"pipeline is {len(text)} characters, over the limit of {MAX_PIPELINE_CHARS}")
    reader = _Reader(text)
    if not reader.peek():
        raise reader.error("the pipeline is empty; expected a pass name such as 'cse'")
    passes = [_parse_pass(reader)]
    while reader.peek() == ",":
        reader.pos += 1
        passes.append(_parse_pass(reader))
    if reader.peek():
        raise reader.error("expected ',' between passes or the end of the pipeline")
    return passes


def format_pipeline(passes: Iterable[Pass]) -> str:
    """The one-line text of ``passes`` (inverse of :func:`parse_pipeline`).

    Args:
        passes: registered pass objects.

    Returns:
        The pipeline text, every set option written in field order.

    Raises:
        PassError: an element that is not a registered pass, or an option
            value that has no text form.

    Examples:
        >>> from mtgraph.passes import DCEPass, FusePass, HardenPass, format_pipeline, parse_pipeline
        >>> text = format_pipeline([FusePass(("S", "E"), block=3), HardenPass(), DCEPass()])
        >>> text
        'fuse{tasks=S+E,block=3,init=average},harden,dce'
        >>> format_pipeline(parse_pipeline(text)) == text
        True
    """
    texts = []
    for p in passes:
        if not isinstance(p, Pass) or REGISTRY.get(p.name) is not type(p):
            raise PassError(f"{p!r} is not a registered pass; valid passes are {sorted(REGISTRY)}")
        text = format_pass(p)
        try:
            reparsed = parse_pipeline(text)
        except MTGraphError as exc:
            raise PassError(f"pass {p!r} has an option that cannot be written as pipeline text: {exc}") from exc
        if reparsed != [p]:
            raise PassError(f"pass {p!r} does not round-trip through its text {text!r}")
        texts.append(text)
    return ",".join(texts)
