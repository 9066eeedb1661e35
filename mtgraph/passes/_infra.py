"""The pass contract, in one place: results, lineage, option codecs, the pass manager and rewrite helpers.

A pass is a frozen dataclass whose fields are its options, with a class-level
``name``. Calling it, ``pass_(graph, params)``, returns a :class:`PassResult`:
the new graph, the new :class:`~mtgraph.params.ParamStore` (sharing every
unchanged module with the old one), the :class:`Lineage` of every new weight
key, and whether anything changed. Passes never mutate their inputs.

Conventions every pass follows (so strategies can rely on them):

* **Canonical output.** The structural passes (fuse, split, skip, gate,
  harden) rebuild the graph task by task with hash-consing (see
  :func:`rewrite_paths`), so their result has no duplicate and no dead node
  and is in canonical node order: its printed text is stable.
* **New keys are new names.** A pass never reuses a key that the input graph
  or store holds; it allocates a fresh one from the ``group_key`` convention
  (``b3.S+E``) with a ``-2``, ``-3`` ... suffix when that name is taken. So a
  key present before and after a pass with no lineage entry names the *same*
  weights.
* **A pass drops what it made unused.** Keys the input graph used and the
  output graph no longer uses leave the store (they are listed in
  ``Lineage.dropped``); ``dce`` additionally drops every unused key.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from mtgraph.errors import MTGraphError, PassError, VerifyError
from mtgraph.ir.canonical import canonicalize, remove_dead, renumber
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Head, Input, Node, Skip
from mtgraph.ir.text import TASK_NAME, format_node
from mtgraph.ir.verify import verify
from mtgraph.params import ParamStore

__all__ = [
    "HOWS",
    "LineageEntry",
    "Lineage",
    "PassResult",
    "Pass",
    "run_passes",
    "format_pass",
    "encode_option",
    "decode_option",
    "option_types",
    "PathRewriter",
    "rewrite_paths",
    "KeyAllocator",
    "average_modules",
    "make_result",
    "unchanged",
    "describe_node",
    "check_task",
    "check_task_names",
    "check_index",
    "check_block",
    "task_nodes_at",
]

#: How a new weight key was made from old ones.
HOWS = ("copy", "average", "fresh")


# --------------------------------------------------------------------------- lineage


@dataclass(frozen=True)
class LineageEntry:
    """Where new weight key ``new_key`` came from.

    ``how`` is ``"copy"`` (a deep copy of one old key), ``"average"`` (the
    weighted mean of several old keys) or ``"fresh"`` (new weights, no old
    source). ``weights`` holds one mixing coefficient per source; they sum to
    1. They are filled in when omitted: ``(1.0,)`` for a copy, uniform for an
    average, ``()`` for fresh weights.

    Raises:
        PassError: ``how`` is not one of :data:`HOWS`, the sources do not fit
            ``how`` (a copy has one, an average at least one, fresh none), or
            the number of weights differs from the number of sources.

    Examples:
        >>> from mtgraph.passes import LineageEntry
        >>> entry = LineageEntry("b2.S+E", ("b2.S", "b2.E"), "average")
        >>> print(entry)
        b2.S+E <- average(b2.S, b2.E)
        >>> entry.weights  # filled in: uniform
        (0.5, 0.5)
        >>> LineageEntry("b2.S", ("b2.S+E", "b2.D"), "copy")
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: lineage of 'b2.S': a copy has exactly one source, got ['b2.S+E', 'b2.D']
    """

    new_key: str
    sources: tuple[str, ...]
    how: str
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.how not in HOWS:
            raise PassError(f"lineage of {self.new_key!r}: how must be one of {list(HOWS)}, got {self.how!r}")
        if self.how == "fresh" and self.sources:
            raise PassError(f"lineage of {self.new_key!r}: fresh weights have no sources, got {list(self.sources)}")
        if self.how == "copy" and len(self.sources) != 1:
            raise PassError(f"lineage of {self.new_key!r}: a copy has exactly one source, got {list(self.sources)}")
        if self.how == "average" and not self.sources:
            raise PassError(f"lineage of {self.new_key!r}: an average needs at least one source")
        weights = tuple(float(w) for w in self.weights)
        if not weights and self.sources:
            weights = tuple(1.0 / len(self.sources) for _ in self.sources)
        if len(weights) != len(self.sources):
            raise PassError(f"lineage of {self.new_key!r}: {len(weights)} weights for {len(self.sources)} sources")
        object.__setattr__(self, "weights", weights)

    def __str__(self) -> str:
        if self.how == "fresh":
            return f"{self.new_key} <- fresh"
        uniform = all(abs(w - 1.0 / len(self.weights)) < 1e-12 for w in self.weights)
        parts = self.sources if uniform else tuple(f"{w:g}*{s}" for s, w in zip(self.sources, self.weights))
        return f"{self.new_key} <- {self.how}({', '.join(parts)})"


@dataclass(frozen=True)
class Lineage:
    """What a rewrite did to the weights: every new key's sources, and every old key that is gone.

    Keys that are neither new (``entries``) nor ``dropped`` carried over
    unchanged, under the same name, with the same module. A single pass never
    reuses a name, but a composed lineage (:meth:`then`) can list a key as
    both dropped and new: the old weights under that name are gone and new
    ones were made from the listed sources (split, then fuse back).

    Examples:
        >>> from mtgraph.passes import Lineage, LineageEntry
        >>> fuse = Lineage((LineageEntry("b1.S+D", ("b1.S", "b1.D"), "average"),), dropped=("b1.S", "b1.D"))
        >>> copy = Lineage((LineageEntry("b1.S+D-2", ("b1.S+D",), "copy"),))
        >>> print(fuse.then(copy))  # sources in terms of the first rewrite's inputs
        b1.S+D <- average(b1.S, b1.D)
        b1.S+D-2 <- average(b1.S, b1.D)
        b1.S <- dropped
        b1.D <- dropped
        >>> fuse.new_keys, "b1.S" in fuse
        (('b1.S+D',), False)
    """

    entries: tuple[LineageEntry, ...] = ()
    dropped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "dropped", tuple(self.dropped))

    def __getitem__(self, new_key: str) -> LineageEntry:
        for entry in self.entries:
            if entry.new_key == new_key:
                return entry
        raise KeyError(f"{new_key!r} is not a new key of this lineage; new keys: {[e.new_key for e in self.entries]}")

    def __contains__(self, new_key: object) -> bool:
        return any(e.new_key == new_key for e in self.entries)

    @property
    def new_keys(self) -> tuple[str, ...]:
        """The keys this rewrite created, in creation order."""
        return tuple(e.new_key for e in self.entries)

    def then(self, later: Lineage) -> Lineage:
        """The lineage of applying this rewrite and then ``later`` (sources expressed in this one's inputs).

        A source that was itself new is replaced by its own sources, with the
        mixing coefficients multiplied; fresh sources contribute nothing.
        """
        mine = {e.new_key: e for e in self.entries}
        entries: dict[str, LineageEntry] = {}
        for key, entry in mine.items():
            if key not in later.dropped and key not in later:
                entries[key] = entry
        for entry in later.entries:
            mix: dict[str, float] = {}
            for source, weight in zip(entry.sources, entry.weights):
                if source in mine:
                    for s, w in zip(mine[source].sources, mine[source].weights):
                        mix[s] = mix.get(s, 0.0) + weight * w
                else:
                    mix[source] = mix.get(source, 0.0) + weight
            if not mix:
                entries[entry.new_key] = LineageEntry(entry.new_key, (), "fresh")
                continue
            total = sum(mix.values())
            sources = tuple(mix)
            how = "copy" if len(sources) == 1 else "average"
            entries[entry.new_key] = LineageEntry(entry.new_key, sources, how, tuple(mix[s] / total for s in sources))
        dropped = list(self.dropped) + [k for k in later.dropped if k not in mine and k not in self.dropped]
        return Lineage(entries=tuple(entries.values()), dropped=tuple(dropped))

    def __str__(self) -> str:
        lines = [str(e) for e in self.entries] + [f"{k} <- dropped" for k in self.dropped]
        return "\n".join(lines) if lines else "(no weight changes)"


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new graph and store, the lineage of new weights, and whether anything changed.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import FusePass
        >>> result = FusePass(("S", "D"), block=0)(graph, params)
        >>> result.changed, result.params.keys()
        (True, ['b1.S', 'b1.D', 'head.S', 'head.D', 'b0.shared'])
        >>> print(result.lineage)
        b0.shared <- average(b0.S, b0.D)
        b0.S <- dropped
        b0.D <- dropped
    """

    graph: MTGraph
    params: ParamStore
    lineage: Lineage
    changed: bool


# --------------------------------------------------------------------------- options and their text form


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


# --------------------------------------------------------------------------- the pass base class and manager


class Pass:
    """Base class of every pass: subclasses are frozen dataclasses that set ``name`` and implement :meth:`apply`.

    Calling a pass checks its inputs (types, and that the graph verifies
    against the store's backbone and keys), then runs :meth:`apply`.

    Calling a pass raises PassError for inputs of the wrong type and
    VerifyError for a graph that does not verify against the store; each
    pass adds its own checks (see its class).

    Examples:
        >>> from mtgraph.passes import DCEPass, FusePass, Pass
        >>> isinstance(DCEPass(), Pass), str(FusePass(("S", "E"), block=3))  # str: its pipeline text
        (True, 'fuse{tasks=S+E,block=3,init=average}')
        >>> DCEPass()("not a graph", None)
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: 'dce' expects an MTGraph, got str
    """

    name: ClassVar[str] = ""

    def __call__(self, graph: MTGraph, params: ParamStore) -> PassResult:
        if not isinstance(graph, MTGraph):
            raise PassError(f"'{self}' expects an MTGraph, got {type(graph).__name__}")
        if not isinstance(params, ParamStore):
            raise PassError(f"'{self}' expects a ParamStore, got {type(params).__name__}")
        try:
            verify(graph, num_blocks=params.backbone.num_blocks, weight_keys=set(params.keys()))
        except VerifyError as exc:
            raise VerifyError(f"the input graph of '{self}' is invalid: {exc}") from exc
        return self.apply(graph, params)

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Rewrite a verified ``graph`` and its ``params``; subclasses implement this."""
        raise NotImplementedError

    def __str__(self) -> str:
        return format_pass(self)


def _with_context(exc: Exception, message: str) -> Exception:
    if isinstance(exc, MTGraphError):
        try:
            return type(exc)(message)
        except TypeError:  # a subclass with a different constructor
            return PassError(message)
    return PassError(message)


def run_passes(graph: MTGraph, params: ParamStore, passes: Iterable[Pass] | str) -> PassResult:
    """Run ``passes`` in order, verifying the graph against the store after each one.

    ``passes`` is a sequence of pass objects or a pipeline string (see
    :func:`mtgraph.passes.parse_pipeline`). Any failure is re-raised with its
    type kept and the context prepended: ``while running 'fuse{...}' after
    ['cse']: ...``. The result's lineage is the composition of every pass's
    lineage (sources are keys of the input ``params``); ``changed`` is true if
    any pass changed something.

    Args:
        graph: the input graph.
        params: its store.
        passes: pass objects, or a pipeline string such as ``"fuse{tasks=S+D,block=0},dce"``.

    Returns:
        The last pass's graph and store, the composed lineage, and whether anything changed.

    Raises:
        ParseError: a pipeline string that does not parse.
        PassError: an element of ``passes`` that is not a pass, or a pass
            that refuses the graph (other errors keep their type).
        VerifyError: the input graph, or one produced by a pass, does not verify.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import run_passes
        >>> result = run_passes(graph, params, "fuse{tasks=S+D,block=0},fuse{tasks=S+D,block=1}")
        >>> print(result.graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        S = head (%2)
        D = head (%2)
        >>> result.lineage.new_keys
        ('b0.shared', 'b1.shared')
    """
    if isinstance(passes, str):
        from mtgraph.passes.pipeline import parse_pipeline

        passes = parse_pipeline(passes)
    passes = list(passes)
    for p in passes:
        if not isinstance(p, Pass):
            raise PassError(f"run_passes expects pass objects, got {type(p).__name__} ({p!r})")
    lineage = Lineage()
    changed = False
    done: list[str] = []
    for p in passes:
        try:
            result = p(graph, params)
            if not isinstance(result, PassResult):
                raise PassError(f"pass returned {type(result).__name__}, not a PassResult")
            verify(result.graph, num_blocks=result.params.backbone.num_blocks, weight_keys=set(result.params.keys()))
        except Exception as exc:
            raise _with_context(exc, f"while running '{p}' after {done}: {exc}") from exc
        graph, params = result.graph, result.params
        lineage = lineage.then(result.lineage)
        changed = changed or result.changed
        done.append(p.name)
    return PassResult(graph=graph, params=params, lineage=lineage, changed=changed)


# --------------------------------------------------------------------------- checks shared by passes


def describe_node(graph: MTGraph, i: int) -> str:
    """``'%3 = block 2 w=b2.S+E (%1)'``: a node as error messages name it (its IR line, quoted)."""
    return f"'{format_node(graph.nodes[i], i)}'"


def check_task(graph: MTGraph, task: str, what: str) -> None:
    """Raise PassError unless ``task`` is one of the graph's tasks."""
    if task not in graph.tasks:
        raise PassError(f"{what}: task {task!r} does not exist; the graph's tasks are {list(graph.tasks)}")


def check_block(params: ParamStore, block: int, what: str) -> None:
    """Raise PassError unless ``block`` indexes a block of the store's backbone."""
    n = params.backbone.num_blocks
    if not 0 <= block < n:
        raise PassError(f"{what}: block {block} is outside the backbone, which has blocks 0..{n - 1}")


def task_nodes_at(graph: MTGraph, task: str, block: int) -> list[int]:
    """Ids of the Block/Skip nodes of block ``block`` on task ``task``'s path (several when it is gated there)."""
    found = []
    for i in graph.path(task):
        node = graph.nodes[i]
        if isinstance(node, (Block, Skip)) and node.block == block:
            found.append(i)
    return found


def check_task_names(value: object, option: str, what: str, minimum: int = 1) -> tuple[str, ...]:
    """Validate a tasks option: a sequence (not a str) of at least ``minimum`` distinct task names."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise PassError(f"{what}: {option} must be a sequence of task names such as ('S', 'E'), got {value!r}")
    tasks = tuple(value)  # type: ignore[arg-type]
    for t in tasks:
        if not isinstance(t, str) or not re.fullmatch(TASK_NAME, t):
            raise PassError(f"{what}: {option} contains {t!r}, which is not a task name (an identifier)")
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise PassError(f"{what}: {option} names {repeated} more than once")
    if len(tasks) < minimum:
        raise PassError(f"{what}: {option} needs at least {minimum} task(s), got {list(tasks)}")
    return tasks


def check_index(value: object, option: str, what: str) -> int:
    """Validate a non-negative int option (a block index)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PassError(f"{what}: {option} must be a non-negative int, got {value!r}")
    return value


# --------------------------------------------------------------------------- rewriting


class PathRewriter:
    """Builds a graph node by node with hash-consing: adding a node equal to one already added returns its id.

    Sources of added nodes are ids in the graph being built. Because equal
    nodes get one id, a rebuilt graph has no duplicates (cse is implied).
    """

    def __init__(self) -> None:
        self.nodes: list[Node] = [Input()]
        self._ids: dict[Node, int] = {Input(): 0}

    def add(self, node: Node) -> int:
        """Add ``node`` (or find its equal) and return its id."""
        if isinstance(node, (Input, Head)):
            raise PassError(f"internal error: {type(node).__name__} nodes are added by the rewriter itself")
        existing = self._ids.get(node)
        if existing is not None:
            return existing
        self.nodes.append(node)
        self._ids[node] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def finish(self, heads: Mapping[str, int], tasks: Sequence[str]) -> MTGraph:
        """The built graph with one head per task (in ``tasks`` order), dead nodes removed, canonical order."""
        graph = MTGraph(tuple(self.nodes) + tuple(Head(task=t, src=heads[t]) for t in tasks))
        return canonicalize(remove_dead(graph))


#: ``visit(task, old_id, node, rewriter)`` gets an old node with its sources already
#: translated for ``task`` and returns the node to add, or the id of a built node to use instead.
Visitor = Callable[[str, int, Node, PathRewriter], "Node | int"]


def rewrite_paths(graph: MTGraph, visit: Visitor, rewriter: PathRewriter | None = None) -> MTGraph:
    """Rebuild ``graph`` one task path at a time, letting ``visit`` replace nodes per task.

    Each task's path is translated in topological order: every node's
    sources are mapped to their rebuilt ids *for that task*, then ``visit``
    decides what the task uses in its place. Nodes that come out equal for
    several tasks are built once, so tasks keep sharing exactly as long as
    their rebuilt paths agree: a task whose node was replaced diverges from
    that point on (its later call sites keep their weight keys but get new
    inputs), while other tasks keep the original nodes. The result is
    canonical (no duplicates, no dead nodes, canonical order).
    """
    rewriter = rewriter or PathRewriter()
    heads: dict[str, int] = {}
    for task in graph.tasks:
        mapping: dict[int, int] = {}
        for i in graph.path(task):
            node = graph.nodes[i]
            if isinstance(node, Input):
                mapping[i] = 0
            elif isinstance(node, Head):
                heads[task] = mapping[node.src]
            else:
                out = visit(task, i, renumber(node, mapping), rewriter)
                mapping[i] = out if isinstance(out, int) else rewriter.add(out)
    return rewriter.finish(heads, graph.tasks)


class KeyAllocator:
    """Allocates new weight keys that clash with no key of the input graph or store (``b3.S``, then ``b3.S-2`` ...)."""

    def __init__(self, graph: MTGraph, params: ParamStore) -> None:
        self._taken = set(graph.weight_keys()) | set(params.keys())

    def new(self, base: str) -> str:
        """A key equal to ``base`` if free, else ``base-2``, ``base-3`` ..."""
        key, k = base, 2
        while key in self._taken:
            key = f"{base}-{k}"
            k += 1
        self._taken.add(key)
        return key


def average_modules(modules: Sequence[nn.Module], weights: Sequence[float], keys: Sequence[str]) -> nn.Module:
    """A new module whose floating-point parameters and buffers are the weighted mean of ``modules``'.

    The mean is computed as ``m0 + sum_i w_i (m_i - m0)``, so averaging
    identical modules returns bit-identical weights. Integer buffers (such as
    BatchNorm's ``num_batches_tracked``) take the maximum. The modules must
    have the same structure (copies of one backbone block); ``keys`` names
    them in the error otherwise.
    """
    if abs(sum(weights) - 1.0) > 1e-9:
        raise PassError(f"average weights must sum to 1, got {list(weights)}")
    states = [m.state_dict() for m in modules]
    reference = states[0]
    for key, state in zip(keys[1:], states[1:]):
        if list(state) != list(reference) or any(state[n].shape != reference[n].shape for n in reference):
            raise PassError(
                f"cannot average weights {keys[0]!r} and {key!r}: their modules differ in structure "
                f"(parameters {sorted(reference)} vs {sorted(state)})"
            )
    result = copy.deepcopy(modules[0])
    with torch.no_grad():
        for name, target in result.state_dict(keep_vars=True).items():
            tensors = [s[name] for s in states]
            if target.is_floating_point() or target.is_complex():
                base = tensors[0]
                value = base.clone()
                for w, t in zip(weights[1:], tensors[1:]):
                    value += w * (t - base)
                target.copy_(value)
            else:
                target.copy_(torch.stack(tensors).max(dim=0).values)
    return result


def make_result(
    old_graph: MTGraph,
    old_params: ParamStore,
    new_graph: MTGraph,
    added: Mapping[str, nn.Module] | None = None,
    entries: Sequence[LineageEntry] = (),
) -> PassResult:
    """Assemble a PassResult: add the new modules, drop keys the rewrite made unused, record the lineage.

    Only keys the old graph used and the new graph does not are dropped
    (unused keys the caller already had are ``dce``'s business). New
    modules the new graph does not use are discarded.
    """
    new_used = set(new_graph.weight_keys())
    old_used = set(old_graph.weight_keys())
    drop = tuple(k for k in old_params.keys() if k in old_used and k not in new_used)
    kept_entries = tuple(e for e in entries if e.new_key in new_used)
    modules = dict(added or {})
    add = {e.new_key: modules[e.new_key] for e in kept_entries}
    params = old_params.updated(add=add, drop=drop) if (add or drop) else old_params
    changed = new_graph != old_graph or bool(drop) or bool(add)
    return PassResult(graph=new_graph, params=params, lineage=Lineage(entries=kept_entries, dropped=drop), changed=changed)


def unchanged(graph: MTGraph, params: ParamStore) -> PassResult:
    """The result of a pass that had nothing to do."""
    return PassResult(graph=graph, params=params, lineage=Lineage(), changed=False)
