"""MkDocs hook: docstrings cite the papers as ``papers/000`` ... ``papers/004``; readers get the paper.

Every rendered page (API pages included) has each such code replaced by the
paper's short citation ("Gurulingan et al., ICML 2023"), linked to its row
on the references page; inside code blocks the citation is plain text.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

#: code -> (anchor on references.md, short citation)
PAPERS = {
    "000": ("mtsl", "Gurulingan et al., ICML 2023"),
    "001": ("affinity", "Vandenhende et al., BMVC 2020"),
    "002": ("adashare", "Sun et al., NeurIPS 2020"),
    "003": ("grouping", "Standley et al., ICML 2020"),
    "004": ("smtl", "Guo et al., 2021"),
}
_CODE = re.compile(r"papers/(00[0-4])")
_BLOCKS = re.compile(r"(<pre\b.*?</pre>|<code\b.*?</code>)", re.DOTALL)


def cite(html: str, page_url: str) -> str:
    """``html`` with every ``papers/00N`` replaced by its citation (a link outside code)."""
    base = page_url if page_url.endswith("/") or not page_url else posixpath.dirname(page_url) + "/"
    target = posixpath.relpath("references/", base or ".")

    def link(match: re.Match[str]) -> str:
        anchor, text = PAPERS[match.group(1)]
        return f'<a href="{target}/#{anchor}">{text}</a>'

    parts = _BLOCKS.split(html)
    for k, part in enumerate(parts):
        if k % 2:  # inside <pre> or <code>: no markup
            parts[k] = _CODE.sub(lambda m: PAPERS[m.group(1)][1], part)
        else:
            parts[k] = _CODE.sub(link, part)
    return "".join(parts)


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Replace the paper codes on every page but the references page itself (MkDocs event)."""
    if page.file.src_uri == "references.md":
        return html
    return cite(html, page.url)
