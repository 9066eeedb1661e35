"""Property tests: random backbones, task sets, architectures and pass sequences (bounded, hypothesis)."""

from __future__ import annotations

import functools

import torch
from backbones import BasicBlock
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import mtgraph
from mtgraph import Backbone, MTGraph, MTGraphError, ParamStore
from mtgraph.ir import Block, Gate, Skip, check_canonical, from_groups
from mtgraph.passes import (
    CSEPass,
    DCEPass,
    FusePass,
    GatePass,
    HardenPass,
    Lineage,
    Pass,
    PassResult,
    Refusal,
    SkipPass,
    SplitPass,
    run_passes,
)

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = ("A", "B", "C", "D")
PIXELS = 16


class _Chain(nn.Module):
    def __init__(self, spec: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU())
        blocks, cin = [], 4
        for cout, stride in spec:
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


@functools.cache
def _backbone(spec: tuple[tuple[int, int], ...]) -> Backbone:
    torch.manual_seed(len(spec))
    return mtgraph.trace(_Chain(spec), torch.randn(2, 3, PIXELS, PIXELS))


def _store(graph: MTGraph, backbone: Backbone) -> ParamStore:
    torch.manual_seed(7)
    heads = {t: nn.Conv2d(backbone.output_shape[0], 1, 1) for t in graph.tasks}
    return ParamStore.create(graph, backbone, heads)


def _count(params: ParamStore, key: str) -> int:
    return sum(p.numel() for p in params[key].parameters())


def _total(params: ParamStore) -> int:
    return sum(_count(params, k) for k in params.keys())


def _run(graph: MTGraph, params: ParamStore) -> dict[str, torch.Tensor]:
    module = mtgraph.compile(graph, params).eval()
    with torch.no_grad():
        return module(torch.randn(1, 3, PIXELS, PIXELS, generator=torch.Generator().manual_seed(3)))


@st.composite
def architectures(draw: st.DrawFn, branching: bool = False) -> tuple[MTGraph, ParamStore]:
    """A random backbone (stem + 1-3 residual blocks), 1-4 tasks and a random tree over them.

    With ``branching``, at least two tasks and at least one block where the tree branches.
    """
    spec = tuple(draw(st.lists(st.tuples(st.sampled_from([4, 8]), st.sampled_from([1, 2])), min_size=1, max_size=3)))
    backbone = _backbone(spec)
    tasks = NAMES[: draw(st.integers(2 if branching else 1, 4))]
    partitions: list[list[list[str]]] = []
    current = [list(tasks)]
    for _ in range(backbone.num_blocks):
        refined: list[list[str]] = []
        for group in current:
            if len(group) > 1 and draw(st.booleans()):
                cut = draw(st.integers(1, len(group) - 1))
                refined.extend([group[:cut], group[cut:]])
            else:
                refined.append(group)
        partitions.append(refined)
        current = refined
    if branching and len(partitions[-1]) == 1:  # no branch drawn: branch from a drawn block on
        start, cut = draw(st.integers(0, backbone.num_blocks - 1)), draw(st.integers(1, len(tasks) - 1))
        partitions[start:] = [[list(tasks[:cut]), list(tasks[cut:])]] * (backbone.num_blocks - start)
    graph = from_groups(backbone.num_blocks, tasks, partitions)
    return graph, _store(graph, backbone)


def _nodes_at(graph: MTGraph, task: str, block: int) -> list[int]:
    return [i for i in graph.path(task) if isinstance(graph.nodes[i], (Block, Skip)) and graph.nodes[i].block == block]


def _single_block(graph: MTGraph, task: str, block: int) -> int | None:
    ids = _nodes_at(graph, task, block)
    return ids[0] if len(ids) == 1 and isinstance(graph.nodes[ids[0]], Block) else None


def _fuse_candidates(graph: MTGraph, num_blocks: int) -> list[tuple[int, list[int]]]:
    """(block, sibling Block nodes) whose tasks each reach exactly one Block there, all reading one source."""
    found = []
    for b in range(num_blocks):
        by_source: dict[int, set[int]] = {}
        for t in graph.tasks:
            node = _single_block(graph, t, b)
            if node is not None:
                by_source.setdefault(graph.nodes[node].srcs[0], set()).add(node)
        for nodes in by_source.values():
            clean = [n for n in sorted(nodes) if all(_single_block(graph, t, b) == n for t in graph.served[n])]
            if len(clean) >= 2:
                found.append((b, clean))
    return found


def _split_candidates(graph: MTGraph, num_blocks: int) -> list[int]:
    return [
        i for i, n in enumerate(graph.nodes)
        if isinstance(n, Block) and len(graph.served[i]) >= 2 and all(_single_block(graph, t, n.block) == i for t in graph.served[i])
    ]


def _chain_ok(graph: MTGraph, task: str, start: int, end: int) -> bool:
    previous = None
    for k in range(start, end + 1):
        ids = _nodes_at(graph, task, k)
        if len(ids) != 1 or (previous is not None and graph.nodes[ids[0]].srcs[0] != previous):
            return False
        previous = ids[0]
    return True


@st.composite
def a_pass(draw: st.DrawFn, graph: MTGraph, backbone: Backbone) -> Pass:
    """A random pass that is applicable to ``graph`` (refusals are tested separately)."""
    n = backbone.num_blocks
    tasks = graph.tasks
    options: list[str] = ["cse", "dce", "harden"]
    fusable = _fuse_candidates(graph, n)
    splittable = _split_candidates(graph, n)
    skippable = [(t, b) for t in tasks for b in range(n) if backbone.blocks[b].skippable and _single_block(graph, t, b) is not None]
    gateable = [(t, s, e) for t in tasks for s in range(n) for e in range(s, n) if _chain_ok(graph, t, s, e)]
    # Structural passes are drawn three times as often as the canonicalisers.
    options += 3 * (["fuse"] * bool(fusable) + ["split"] * bool(splittable) + ["skip"] * bool(skippable) + ["gate"] * bool(gateable))
    kind = draw(st.sampled_from(options))
    if kind == "fuse":
        block, nodes = draw(st.sampled_from(fusable))
        chosen = draw(st.lists(st.sampled_from(nodes), min_size=2, max_size=len(nodes), unique=True))
        members = tuple(t for t in tasks if any(t in graph.served[i] for i in chosen))
        if draw(st.booleans()):
            return FusePass(members, block, init="copy", source_task=draw(st.sampled_from(members)))
        return FusePass(members, block)
    if kind == "split":
        node = draw(st.sampled_from(splittable))
        served = [t for t in tasks if t in graph.served[node]]
        labels = draw(st.lists(st.integers(0, len(served) - 1), min_size=len(served), max_size=len(served)))
        groups = tuple(tuple(t for t, lab in zip(served, labels) if lab == g) for g in sorted(set(labels)))
        return SplitPass(graph.nodes[node].block, groups)
    if kind == "skip":
        task, block = draw(st.sampled_from(skippable))
        return SkipPass(task, block)
    if kind == "gate":
        task, start, end = draw(st.sampled_from(gateable))
        private = draw(st.sampled_from(["fresh", "copy"]))
        if start == end and backbone.blocks[start].skippable and _single_block(graph, task, start) is not None and draw(st.booleans()):
            private = "skip"
        return GatePass(task, start, end, alpha=draw(st.floats(0.0, 1.0)), mode=draw(st.sampled_from(["softmax", "gumbel_st"])), private=private)
    if kind == "harden":
        return HardenPass(threshold=draw(st.one_of(st.none(), st.floats(0.0, 1.0))))
    return CSEPass() if kind == "cse" else DCEPass()


def _check_lineage_accounting(before: ParamStore, result: PassResult) -> None:
    """Parameter counts change exactly as the lineage says."""
    after = result.params
    lineage = result.lineage
    assert set(after.keys()) == (set(before.keys()) - set(lineage.dropped)) | set(lineage.new_keys)
    expected = _total(before) - sum(_count(before, k) for k in lineage.dropped) + sum(_count(after, k) for k in lineage.new_keys)
    assert _total(after) == expected
    for entry in lineage.entries:
        for source in entry.sources:
            assert _count(after, entry.new_key) == _count(before, source)
    for key in set(after.keys()) - set(lineage.new_keys):
        assert after[key] is before[key]  # unchanged keys keep their module


@PROPERTY_SETTINGS
@given(data=st.data(), arch=architectures())
def test_random_pass_sequences_verify_compile_and_run(data: st.DataObject, arch: tuple[MTGraph, ParamStore]) -> None:
    graph, params = arch
    backbone = params.backbone
    initial, composed = params, Lineage()
    for _ in range(data.draw(st.integers(1, 6), label="length")):
        pass_ = data.draw(a_pass(graph, backbone), label="pass")
        event(pass_.name)
        before_outputs = _run(graph, params)
        result = run_passes(graph, params, [pass_])  # verifies the graph against the store
        check_canonical(result.graph)
        _check_lineage_accounting(params, result)
        out = _run(result.graph, result.params)
        assert list(out) == list(graph.tasks)
        assert all(torch.isfinite(v).all() for v in out.values())
        if isinstance(pass_, (SplitPass, CSEPass, DCEPass)):
            assert all(torch.equal(out[t], before_outputs[t]) for t in graph.tasks), str(pass_)
        graph, params = result.graph, result.params
        composed = composed.then(result.lineage)
    # The composed lineage accounts for the whole sequence, from the first store to the last.
    fresh_names = set(composed.new_keys)
    assert set(params.keys()) == (set(initial.keys()) - set(composed.dropped)) | fresh_names
    assert _total(params) == (
        _total(initial) - sum(_count(initial, k) for k in composed.dropped) + sum(_count(params, k) for k in fresh_names)
    )
    for entry in composed.entries:
        if entry.how != "fresh":
            assert all(s in initial for s in entry.sources)
            assert abs(sum(entry.weights) - 1.0) < 1e-9
    # Canonicalisation is idempotent.
    for p in (CSEPass(), DCEPass()):
        once = p(graph, params)
        twice = p(once.graph, once.params)
        assert twice.graph == once.graph and not twice.changed


@PROPERTY_SETTINGS
@given(data=st.data(), arch=architectures(branching=True))
def test_split_after_fuse_round_trips_the_graph(data: st.DataObject, arch: tuple[MTGraph, ParamStore]) -> None:
    graph, params = arch
    candidates = _fuse_candidates(graph, params.signature.num_blocks)
    assert candidates, f"a tree that branches has sibling Blocks to fuse:\n{graph}"
    block, nodes = data.draw(st.sampled_from(candidates))
    groups = tuple(tuple(t for t in graph.tasks if t in graph.served[i]) for i in nodes)
    members = tuple(t for t in graph.tasks if any(t in g for g in groups))
    fused = FusePass(members, block)(graph, params)
    assert len(fused.graph.nodes) < len(graph.nodes)
    back = SplitPass(block, groups)(fused.graph, fused.params)
    assert str(back.graph) == str(graph)
    assert sorted(back.params.keys()) == sorted(params.keys())
    assert _total(back.params) == _total(params)


@PROPERTY_SETTINGS
@given(arch=architectures())
def test_a_gate_per_task_and_block_hardens_back_to_blocks_or_skips(arch: tuple[MTGraph, ParamStore]) -> None:
    """AdaShare's shape: skip gates everywhere they are legal, random decisions, harden: only Blocks and Skips remain."""
    graph, params = arch
    backbone = params.backbone
    passes: list[Pass] = []
    for t in graph.tasks:
        for b in range(backbone.num_blocks):
            if backbone.blocks[b].skippable:
                passes.append(GatePass(t, b, b, private="skip", alpha=0.5))
    gated = run_passes(graph, params, passes)
    generator = torch.Generator().manual_seed(len(passes))
    with torch.no_grad():
        for node in gated.graph.nodes:
            if isinstance(node, Gate):
                gated.params[node.weights].logits.copy_(torch.randn(2, generator=generator))
    hard = run_passes(gated.graph, gated.params, [HardenPass(), CSEPass(), DCEPass()])
    assert not any(isinstance(n, Gate) for n in hard.graph.nodes)
    assert not any(k.startswith("gate.") for k in hard.params.keys())
    check_canonical(hard.graph)
    assert set(_run(hard.graph, hard.params)) == set(graph.tasks)


# --------------------------------------------------------------------------- check() and __call__ agree


class _NoChoice(nn.Module):
    """A gate module that mixes but cannot say which source it chose (no chosen() / probabilities())."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return inputs[0]


@st.composite
def _task_set(draw: st.DrawFn, tasks: tuple[str, ...], minimum: int) -> tuple[str, ...]:
    """Distinct task names: the graph's own, plus the unknown "Z" when there are too few or now and then."""
    pool = tasks + ("Z",) if len(tasks) < minimum or draw(st.integers(0, 7)) == 0 else tasks
    return tuple(draw(st.lists(st.sampled_from(pool), min_size=minimum, max_size=max(minimum, 3), unique=True)))


@st.composite
def _task(draw: st.DrawFn, tasks: tuple[str, ...]) -> str:
    return draw(_task_set(tasks, 1))[0]


@st.composite
def any_pass(draw: st.DrawFn, graph: MTGraph, num_blocks: int) -> Pass:
    """A pass with random (valid) options: usually naming tasks and blocks of the graph, sometimes not."""
    pool = graph.tasks  # _task_set adds "Z", never a task of the graph, now and then
    block = st.integers(0, num_blocks)  # num_blocks itself is outside the backbone
    kind = draw(st.sampled_from(["fuse", "split", "skip", "gate", "harden", "cse", "dce"]))
    if kind == "fuse":
        b = draw(block)
        siblings = sorted({i for i, n in enumerate(graph.nodes) if isinstance(n, (Block, Skip)) and n.block == b})
        tasks: tuple[str, ...] = ()
        if len(siblings) >= 2 and draw(st.booleans()):  # the tasks of two nodes of the block: often a plausible fusion
            pair = draw(st.lists(st.sampled_from(siblings), min_size=2, max_size=2, unique=True))
            tasks = tuple(t for t in graph.tasks if any(t in graph.served[i] for i in pair))
            if len(tasks) > 2 and draw(st.booleans()):
                tasks = tasks[:-1]  # leave one out: the nodes may serve a task the fusion does not name
        if len(siblings) < 2 or len(tasks) < 2:
            tasks = draw(_task_set(pool, 2))
        if draw(st.booleans()):
            return FusePass(tasks, b, init="copy", source_task=draw(st.sampled_from(tasks)))
        return FusePass(tasks, b)
    if kind == "split":
        tasks = draw(_task_set(pool, 1))
        labels = draw(st.lists(st.integers(0, 2), min_size=len(tasks), max_size=len(tasks)))
        groups = tuple(tuple(t for t, lab in zip(tasks, labels) if lab == g) for g in sorted(set(labels)))
        return SplitPass(draw(block), groups)
    if kind == "skip":
        return SkipPass(draw(_task(pool)), draw(block))
    if kind == "gate":
        start = draw(block)
        end = draw(st.integers(start, num_blocks))
        private = draw(st.sampled_from(["fresh", "copy", "skip"] if start == end else ["fresh", "copy"]))
        return GatePass(draw(_task(pool)), start, end, private=private)
    if kind == "harden":
        return HardenPass(threshold=draw(st.one_of(st.none(), st.floats(0.0, 1.0))))
    return CSEPass() if kind == "cse" else DCEPass()


@settings(PROPERTY_SETTINGS, max_examples=200, derandomize=True)  # the same examples on every run
@given(data=st.data(), arch=architectures())
def test_check_returns_none_iff_calling_the_pass_succeeds(data: st.DataObject, arch: tuple[MTGraph, ParamStore]) -> None:
    """check() and __call__ agree on generated graphs and generated rewrites, refusal text and error type included."""
    graph, params = arch
    backbone = params.backbone
    for _ in range(data.draw(st.integers(0, 3), label="history")):  # grow skips, gates and splits first
        graph, params = (r := run_passes(graph, params, [data.draw(a_pass(graph, backbone))])).graph, r.params
    damage = data.draw(st.sampled_from(["none"] * 6 + ["gate-module", "block-module", "missing-key", "not-a-store"]))
    gates = [n.weights for n in graph.nodes if isinstance(n, Gate)]
    blocks = [n.weights for n in graph.nodes if isinstance(n, Block)]
    store: object = params
    if damage == "gate-module" and gates:
        store = params.updated(add={data.draw(st.sampled_from(gates)): _NoChoice()})
    elif damage == "block-module" and blocks:
        store = params.updated(add={data.draw(st.sampled_from(blocks)): nn.Identity()})
    elif damage == "missing-key":
        store = params.updated(drop=[data.draw(st.sampled_from(blocks))])
    elif damage == "not-a-store":
        store = {}
    pass_ = data.draw(any_pass(graph, backbone.num_blocks), label="pass")
    refusal = pass_.check(graph, store)  # type: ignore[arg-type]
    event(f"{pass_.name}: {'applies' if refusal is None else refusal.failed}")
    try:
        result = pass_(graph, store)  # type: ignore[arg-type]
    except MTGraphError as exc:
        assert isinstance(refusal, Refusal), f"{pass_} raised {exc!r} but check() returned None"
        assert str(exc) == refusal.text
        assert type(exc) is type(refusal.error())
        assert refusal.pass_name == pass_.name and refusal.step == str(pass_)
    else:
        assert refusal is None, f"{pass_} applied but check() refused: {refusal}"
        assert isinstance(result, PassResult)
