"""MkDocs hook: generate the command-line reference from ``mtgraph.cli.build_parser()`` at build time.

A page containing the marker ``<!-- cli-reference -->`` gets it replaced by
the top-level help followed by one section per subcommand, each with the
exact text ``mtgraph <command> --help`` prints. Nothing is copied by hand, so
the page cannot disagree with the program.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    # A fixed width keeps the page identical on every machine and terminal.
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help().rstrip()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def cli_reference() -> str:
    """The Markdown of the reference: top-level help, then one section per subcommand."""
    from mtgraph.cli import build_parser

    parser = build_parser()
    parts = ["## `mtgraph`", "", "```text", _help(parser), "```", ""]
    for name, sub in _subcommands(parser).items():
        parts += [f"## `mtgraph {name}`", "", "```text", _help(sub), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker with the generated reference (MkDocs event)."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
