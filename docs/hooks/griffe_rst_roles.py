"""Griffe extension: show the Sphinx roles of mtgraph's docstrings as inline code on the site.

The docstrings cross-reference with reST roles (``:func:`~mtgraph.trace```),
which Markdown would print literally. This rewrites each role to inline code
of the name (the last dotted part with ``~``, as Sphinx shows it). It only
changes how the site displays docstrings, never the source.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|term):`(~?)([^`<]+?)(?:\s*<([^>]+)>)?`")


def plain_roles(text: str) -> str:
    """``:func:`~a.b.c``` -> ```c```, ``:class:`a.B``` -> ```a.B```, ``:meth:`title <a.b>``` -> ```title```."""

    def replace(match: re.Match[str]) -> str:
        tilde, name, target = match.group(1), match.group(2).strip(), match.group(3)
        if target is None and tilde:
            name = name.rsplit(".", 1)[-1]
        return f"`{name}`"

    return _ROLE.sub(replace, text)


class RstRoles(griffe.Extension):
    """Rewrite reST roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for each loaded object."""
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
