"""torch.fx tracing that records, for every node, the module calls enclosing it.

This module (with ``partition`` and ``residual``) is the only place in mtgraph
that knows torch.fx internals.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from mtgraph.errors import TraceError

__all__ = ["Scope", "trace_module", "SCOPE_KEY", "optional_arguments"]

#: ``node.meta`` key holding the node's enclosing module calls, outermost first.
SCOPE_KEY = "mtgraph_scope"

#: One enclosing module call: (qualified name, how many times that module was called before, its type name).
Scope = tuple[tuple[str, int, str], ...]


class _InPlaceProxy(fx.Proxy):
    """A Proxy that records ``a += b`` (and ``-=``, ``*=``, ``/=``) as the in-place operator.

    fx's own Proxy has no in-place methods, so Python rewrites ``a += b`` as
    ``a = a + b``: another name for the same tensor then keeps the old value
    (a wrong result), and the new tensor can get other strides than the
    original's, which changes kernel choice and speed. ``operator.iadd`` on a
    tensor is the in-place add, exactly what eager PyTorch runs.
    """

    def __iadd__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


class _ScopedTracer(fx.Tracer):
    """An fx Tracer that tags nodes with their module-call scope and honours user leaf modules."""

    def __init__(self, leaf_names: frozenset[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self._leaf_names = leaf_names
        self._leaf_types = leaf_types
        self._stack: list[tuple[str, int, str]] = []
        self._calls: dict[str, int] = {}
        # The innermost module whose forward raised: the stack is unwound by the time the error surfaces.
        self._failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaf_names:
            return True
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = self.path_of_module(m)
        count = self._calls.get(name, 0)
        self._calls[name] = count + 1
        self._stack.append((name, count, type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self._failed_in is None:
                self._failed_in = (name, type(m).__name__)
            raise
        finally:
            self._stack.pop()

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InPlaceProxy(node, self)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE_KEY] = tuple(self._stack)
        return node

    @property
    def current_module(self) -> tuple[str, str] | None:
        """(qualified name, type name) of the innermost module being traced (or whose tracing failed), if any."""
        if self._failed_in is not None:
            return self._failed_in
        if not self._stack:
            return None
        name, _, type_name = self._stack[-1]
        return name, type_name


def _split_leaves(leaf_modules: Iterable[str | type]) -> tuple[frozenset[str], tuple[type, ...]]:
    names: set[str] = set()
    types: list[type] = []
    for item in leaf_modules:
        if isinstance(item, str):
            names.add(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        else:
            raise TraceError(
                f"leaf_modules entries must be qualified module names (str) or nn.Module subclasses, got {item!r}"
            )
    return frozenset(names), tuple(types)


def optional_arguments(module: nn.Module) -> dict[str, Any]:
    """The parameters of ``module.forward`` after the first that have defaults, with their defaults.

    They are traced as constants (their defaults), so ``forward(x, attn_mask=None, is_causal=False)``
    traces like ``forward(x)``. Parameters without a default are left out:
    they stay inputs, and :func:`mtgraph.trace` refuses the extra input.

    Examples:
        >>> from torch import nn
        >>> from mtgraph.frontend.tracer import optional_arguments
        >>> class Net(nn.Module):
        ...     def forward(self, x, mask=None, causal=False): return x
        >>> optional_arguments(Net())
        {'mask': None, 'causal': False}
    """
    try:
        parameters = list(inspect.signature(type(module).forward).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):  # a forward without a Python signature (a C extension)
        return {}
    return {
        p.name: p.default for p in parameters[1:]
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _drop_fixed_inputs(graph: fx.Graph, fixed: Iterable[str]) -> None:
    """Remove the placeholders of arguments traced as constants, and the value checks fx adds for them.

    fx keeps a placeholder per concrete argument, with assertions that the
    caller passes the traced value; the block chain has one input, so both go.
    The variadic placeholders of ``*args`` / ``**kwargs`` go too when nothing reads them.
    """
    names = set(fixed)
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1]
    for position, placeholder in enumerate(placeholders):
        if position == 0:
            continue
        target = str(placeholder.target)
        variadic = target.startswith("*")
        # fx renames a concrete argument's placeholder (``mask`` -> ``mask_1``) to free the name for the constant.
        if not variadic and target not in names and re.sub(r"_\d+$", "", target) not in names:
            continue
        dependants: list[fx.Node] = []
        todo, seen = [placeholder], {placeholder}
        while todo:
            for user in todo.pop().users:
                if user not in seen:
                    seen.add(user)
                    dependants.append(user)
                    todo.append(user)
        if output in seen or (variadic and dependants):
            continue  # the value is really used: leave it for the caller's error
        order = {n: i for i, n in enumerate(graph.nodes)}
        for node in sorted(dependants, key=order.__getitem__, reverse=True):
            graph.erase_node(node)
        graph.erase_node(placeholder)


def torch_message(exc: BaseException) -> str:
    """``"ExcType: first line"`` of an exception raised inside torch, without torch.fx's appended context.

    fx adds "While executing %node ...", "Original traceback: None" and a
    tlparse link to errors raised while it runs a graph; a TraceError states
    where it failed in its own words, so only torch's own first line is kept.
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def trace_module(module: nn.Module, leaf_modules: Iterable[str | type] = ()) -> fx.GraphModule:
    """Symbolically trace ``module`` into a GraphModule whose nodes carry their module scope.

    Forward parameters after the first that have defaults are traced with
    their defaults (:func:`optional_arguments`) and do not become inputs.

    Raises :class:`TraceError` naming the innermost module that could not be
    traced (typically data-dependent control flow) and suggesting to list it
    in ``leaf_modules`` so that it is treated as a black box.
    """
    if not isinstance(module, nn.Module):
        raise TraceError(f"the backbone must be a torch.nn.Module, got {type(module).__name__}")
    leaf_names, leaf_types = _split_leaves(leaf_modules)
    known = {name for name, _ in module.named_modules()}
    unknown = sorted(leaf_names - known)
    if unknown:
        raise TraceError(f"leaf_modules names {unknown} are not submodules of the backbone; valid names include "
                         f"{sorted(n for n in known if n)[:20]}")
    tracer = _ScopedTracer(leaf_names, leaf_types)
    fixed = optional_arguments(module)
    try:
        graph = tracer.trace(module, concrete_args=fixed or None)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... for untraceable code
        where = tracer.current_module
        if where is None:
            location = f"the backbone's own forward ({type(module).__name__})"
            hint = "move the data-dependent part into a submodule and list it in leaf_modules"
        else:
            location = f"module '{where[0]}' ({where[1]})"
            hint = f"pass leaf_modules=['{where[0]}'] to treat it as a black box"
        raise TraceError(
            f"cannot trace {location}: {torch_message(exc)}. "
            f"This usually means data-dependent control flow; {hint}."
        ) from exc
    _drop_fixed_inputs(graph, fixed)
    graph.lint()
    return fx.GraphModule(module, graph, class_name=type(module).__name__)
