"""The documentation site: its code examples run, its generated parts are current, and it builds strictly.

Every fenced ```python block of ``docs/**/*.md`` is executed, page by page
(the blocks of one page share a namespace, in order, in a temporary working
directory), so an example that stops working fails the test run instead of
rotting. A block preceded by ``<!-- no-test -->`` is skipped; use it sparingly
(a handful of blocks at most, checked below).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
MAX_SKIPPED = 3

# ```python ... ``` with the optional marker (and only whitespace) right before it.
_BLOCK = re.compile(r"(?P<marker><!-- no-test -->[ \t]*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)

# Pages whose examples export to ONNX (torch.export + an onnxruntime parity check) or train: tens of seconds.
SLOW_PAGES = {"deployment.md", "own-data.md"}


def python_blocks(markdown: str) -> list[tuple[int, str, bool]]:
    """``(line, code, skipped)`` for every ```python block of a Markdown text, in order."""
    blocks = []
    for match in _BLOCK.finditer(markdown):
        line = markdown.count("\n", 0, match.start("code")) + 1
        blocks.append((line, match.group("code"), match.group("marker") is not None))
    return blocks


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if any(not s for _, _, s in python_blocks(p.read_text("utf-8"))))


def _page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- #
# The extractor itself
# --------------------------------------------------------------------------- #


def test_extractor_finds_python_blocks_and_honours_the_marker() -> None:
    text = "\n".join([
        "# Page", "", "```python", "a = 1", "```", "", "```bash", "echo no", "```", "",
        NO_TEST, "```python", "raise SystemExit", "```", "", "```python", "b = a + 1", "```", "",
    ])
    blocks = python_blocks(text)
    assert [(code, skipped) for _, code, skipped in blocks] == [("a = 1\n", False), ("raise SystemExit\n", True),
                                                                  ("b = a + 1\n", False)]
    assert [line for line, _, _ in blocks] == [4, 13, 17]   # line numbers of the code in the page


def test_skipped_blocks_are_rare() -> None:
    skipped = [(_page_id(p), line) for p in DOCS.rglob("*.md") for line, _, s in python_blocks(p.read_text("utf-8")) if s]
    assert len(skipped) <= MAX_SKIPPED, f"too many {NO_TEST} blocks (at most {MAX_SKIPPED}): {skipped}"


# --------------------------------------------------------------------------- #
# Every example runs
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, id=_page_id(p), marks=[pytest.mark.slow] if _page_id(p) in SLOW_PAGES else []) for p in _pages()],
)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code, skipped in python_blocks(page.read_text("utf-8")):
        if skipped:
            continue
        # Pad with newlines so a traceback points at the right line of the .md file.
        source = "\n" * (line - 1) + code
        exec(compile(source, str(page), "exec"), namespace)  # noqa: S102 - running our own documentation


# --------------------------------------------------------------------------- #
# Generated parts are current
# --------------------------------------------------------------------------- #


def test_committed_ir_text_and_diagram_match_gen_figures() -> None:
    figures = _load(DOCS / "gen_figures.py", "docs_gen_figures")
    committed = (DOCS / "img" / "learned_tree.mtir").read_text("utf-8")
    assert committed == figures.ir_text(), "docs/img is stale: run `python docs/gen_figures.py`"
    svg = ET.parse(DOCS / "img" / "learned_tree.svg").getroot()
    assert svg.tag.endswith("svg")
    text = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
    for task in figures.TASKS:
        assert task in text


def test_cli_reference_has_every_subcommand_help_verbatim() -> None:
    from mtgraph.cli import build_parser

    hook = _load(DOCS / "hooks" / "cli_reference.py", "docs_cli_reference")
    page = hook.cli_reference()
    subcommands = hook._subcommands(build_parser())
    assert set(subcommands) >= {"demo", "inspect", "learn", "cost", "export", "render", "run", "bench"}
    for name, parser in subcommands.items():
        assert f"## `mtgraph {name}`" in page
        assert hook._help(parser) in page
    marked = (DOCS / "cli.md").read_text("utf-8")
    assert hook.MARKER in marked
    assert hook.on_page_markdown(marked, page=None) == marked.replace(hook.MARKER, page)


def test_api_reference_covers_the_public_packages() -> None:
    import mtgraph

    directives = {m.group(1) for p in (DOCS / "api").glob("*.md")
                  for m in re.finditer(r"^::: ([\w.]+)", p.read_text("utf-8"), re.M)}
    required = {"mtgraph.ir", "mtgraph.passes", "mtgraph.train", "mtgraph.exporters", "mtgraph.data",
                "mtgraph.tasks", "mtgraph.analysis.similarity", "mtgraph.strategies", "mtgraph.strategies.mtsl",
                "mtgraph.strategies.affinity", "mtgraph.strategies.adashare", "mtgraph.strategies.grouping",
                "mtgraph.strategies.smtl"}
    assert required <= directives, f"missing ::: blocks for {sorted(required - directives)}"
    # Names shadowed by a submodule of the same name need their own block (see api/mtgraph.md).
    assert {"mtgraph.compile.compile", "mtgraph.ir.verify.verify", "mtgraph.train.evaluate.evaluate",
            "mtgraph.strategies.adashare.soft_graph.soft_graph", "mtgraph.strategies.smtl.safety.safety"} <= directives
    assert all(hasattr(mtgraph, name) for name in mtgraph.__all__)
    # The mtgraph page documents every public name in the order of use: trace, compile, cost, open, ...; errors last.
    page = (DOCS / "api" / "mtgraph.md").read_text("utf-8")
    order = [m.group(1) for m in re.finditer(r"^::: ([\w.]+)", page, re.M)]
    # compile and verify share their names with their modules: compile is here by its full path, verify on ir.md.
    expected = {"mtgraph.compile.compile" if name == "compile" else f"mtgraph.{name}" for name in mtgraph.__all__
                if name != "verify"}
    assert expected <= set(order), f"mtgraph.md lacks {sorted(expected - set(order))}"
    first = [order.index(n) for n in ("mtgraph.trace", "mtgraph.compile.compile", "mtgraph.cost", "mtgraph.open")]
    errors = [order.index(f"mtgraph.{n}") for n in mtgraph.__all__ if n.endswith("Error")]
    assert first == sorted(first) and min(errors) > max(i for i, n in enumerate(order) if not n.endswith("Error"))


# --------------------------------------------------------------------------- #
# The site builds with warnings as errors
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -r docs/requirements.txt")
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                            "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    cli = (site / "cli" / "index.html").read_text("utf-8")
    assert "mtgraph demo" in cli and "cli-reference" not in cli   # the marker was replaced
    api = (site / "api" / "mtgraph" / "index.html").read_text("utf-8")
    assert 'id="mtgraph.trace"' in api and 'id="mtgraph.compile.compile"' in api
    assert (site / "img" / "learned_tree.svg").is_file()


def test_rst_roles_show_as_inline_code_on_the_site() -> None:
    pytest.importorskip("griffe", reason="griffe comes with mkdocstrings[python]: pip install -r docs/requirements.txt")
    roles = _load(DOCS / "hooks" / "griffe_rst_roles.py", "docs_griffe_rst_roles")
    text = "See :func:`~mtgraph.trace`, :class:`mtgraph.MTGraph` and :meth:`the call <mtgraph.Backbone.__call__>`."
    assert roles.plain_roles(text) == "See `trace`, `mtgraph.MTGraph` and `the call`."
    assert roles.plain_roles("``code`` stays") == "``code`` stays"
