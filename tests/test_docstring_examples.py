"""Every public function and class has a short example in its docstring, and every example runs.

The API reference (docs/api/) is generated from these docstrings, so this is
what keeps the documented examples true: each module's doctests run here, in
the normal test command.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import mtgraph

# The packages whose __all__ is the documented API (docs/api/*.md).
PUBLIC_MODULES = (
    "mtgraph", "mtgraph.ir", "mtgraph.ir.sites", "mtgraph.passes", "mtgraph.train", "mtgraph.exporters", "mtgraph.data",
    "mtgraph.tasks", "mtgraph.analysis.similarity", "mtgraph.strategies", "mtgraph.strategies.result",
    "mtgraph.strategies.random_trees", "mtgraph.options", "mtgraph.strategies.mtsl",
    "mtgraph.strategies.affinity", "mtgraph.strategies.adashare", "mtgraph.strategies.grouping",
    "mtgraph.strategies.smtl", "mtgraph.zoo", "mtgraph.spec", "mtgraph.persist", "mtgraph.reopen", "mtgraph.card",
    "mtgraph.program",
)

def _all_modules() -> list[str]:
    # Every module imports without optional packages (Ray, timm, ...): they are imported lazily inside functions.
    return sorted(["mtgraph", *(info.name for info in pkgutil.walk_packages(mtgraph.__path__, prefix="mtgraph."))])


def _public_objects() -> list[tuple[str, object]]:
    seen: set[int] = set()
    out: list[tuple[str, object]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = inspect.unwrap(getattr(module, name))
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            if not getattr(obj, "__module__", "").startswith("mtgraph"):
                continue
            seen.add(id(obj))
            out.append((f"{obj.__module__}.{obj.__qualname__}", obj))
    return out


def test_every_public_function_and_class_has_an_example() -> None:
    missing = [name for name, obj in _public_objects() if ">>>" not in (inspect.getdoc(obj) or "")]
    assert not missing, f"{len(missing)} public objects have no '>>>' example in their docstring: {missing}"


@pytest.mark.parametrize("module_name", _all_modules())
def test_docstring_examples_run(module_name: str) -> None:
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{module_name}: {exc}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in finder.find(module, module_name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
