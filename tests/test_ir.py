"""The IR: builders, canonical text (golden and round trips), canonical order, verifier, errors."""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgraph import IRError, ParseError, VerifyError
from mtgraph.ir import (
    Block,
    Gate,
    Head,
    Input,
    MTGraph,
    Skip,
    canonicalize,
    check_canonical,
    from_groups,
    group_key,
    merge_duplicates,
    one_net,
    parse_graph,
    print_graph,
    remove_dead,
    stn,
    verify,
)
from mtgraph.ir.canonical import renumber
from mtgraph.ir.verify import (
    _check_block_count,
    _check_keys_exist,
    check_block_levels,
    check_gates,
    check_heads,
    check_input_first,
    check_sources_are_values,
    check_topological,
    check_weight_keys,
)

TREE_GROUPS = [[["S", "E", "D"]], [["S", "E"], ["D"]], [["S"], ["E"], ["D"]]]

GOLDEN_TREE = """\
%0 = input                                  # S E D   [N,3,32,32]
%1 = block 0 w=b0.shared (%0)               # S E D   [N,8,16,16]
%2 = block 1 w=b1.S+E (%1)                  # S E
%3 = block 1 w=b1.D (%1)                    # D
%4 = block 2 w=b2.S (%2)                    # S
%5 = block 2 w=b2.E (%2)                    # E
%6 = block 2 w=b2.D (%3)                    # D
S = head (%4)
E = head (%5)
D = head (%6)
"""

SKIP_GATE_TEXT = """\
%0 = input                                  # S E D
%1 = block 0 w=b0.shared (%0)               # S E D
%2 = block 1 w=b1.S (%1)                    # S D
%3 = skip 1 w=b1.E (%1)                     # E D
%4 = gate D w=gate.D (%2, %3)               # D
%5 = block 2 w=b2.S (%2)                    # S
%6 = skip 2 (%3)                            # E
%7 = block 2 w=b2.D (%4)                    # D
S = head (%5)
E = head (%6)
D = head (%7)
"""


def tree() -> MTGraph:
    return from_groups(3, ["S", "E", "D"], TREE_GROUPS)


# --------------------------------------------------------------------------- #
# Builders and golden text
# --------------------------------------------------------------------------- #


def test_golden_text_of_a_small_tree() -> None:
    text = print_graph(tree(), shapes={0: (3, 32, 32), 1: (8, 16, 16)})
    assert text == GOLDEN_TREE
    assert parse_graph(text) == tree()


def test_derived_views_of_a_small_tree() -> None:
    g = tree()
    assert g.tasks == ("S", "E", "D")
    assert g.heads == {"S": 7, "E": 8, "D": 9}
    assert g.levels == (0, 1, 2, 2, 3, 3, 3, 3, 3, 3)
    assert g.users[1] == (2, 3) and g.users[2] == (4, 5)
    assert g.served[2] == frozenset({"S", "E"}) and g.served[1] == frozenset({"S", "E", "D"})
    assert g.path("E") == (0, 1, 2, 5, 8)
    assert g.weight_keys() == ("b0.shared", "b1.S+E", "b1.D", "b2.S", "b2.E", "b2.D", "head.S", "head.E", "head.D")


def test_stn_and_one_net() -> None:
    s = stn(2, ["S", "E"])
    assert print_graph(s) == (
        "%0 = input                                  # S E\n"
        "%1 = block 0 w=b0.S (%0)                    # S\n"
        "%2 = block 0 w=b0.E (%0)                    # E\n"
        "%3 = block 1 w=b1.S (%1)                    # S\n"
        "%4 = block 1 w=b1.E (%2)                    # E\n"
        "S = head (%3)\n"
        "E = head (%4)\n"
    )
    o = one_net(3, ["S", "E"])
    assert [n.weights for n in o.nodes if isinstance(n, Block)] == ["b0.shared", "b1.shared", "b2.shared"]
    single = one_net(2, ["S"])  # one task: its key names the task, not "shared"
    assert single.weight_keys() == ("b0.S", "b1.S", "head.S") and single == stn(2, ["S"])


def test_group_key() -> None:
    assert group_key(3, {"E", "S"}, ["S", "E", "D"]) == "b3.S+E"
    assert group_key(0, ["D", "E", "S"], ["S", "E", "D"]) == "b0.shared"


def test_skip_and_gate_text_round_trip() -> None:
    g = parse_graph(SKIP_GATE_TEXT)
    verify(g, num_blocks=3)
    check_canonical(g)
    assert g.nodes[3] == Skip(block=1, src=1, weights="b1.E") and g.nodes[6] == Skip(block=2, src=3)
    assert g.nodes[4] == Gate(task="D", srcs=(2, 3), weights="gate.D")
    assert print_graph(g) == SKIP_GATE_TEXT


def test_parser_accepts_loose_spacing_and_comments() -> None:
    text = "# a comment line\n%0=input\n\n  %1 = block 0  w=b0.S   (% 0)  # trailing\nS=head(%1)\n"
    with pytest.raises(ParseError, match="line 4"):  # "% 0" is not a reference
        parse_graph(text)
    g = parse_graph(text.replace("% 0", "%0"))
    assert g == stn(1, ["S"])


# --------------------------------------------------------------------------- #
# Property tests over random trees
# --------------------------------------------------------------------------- #

TASK_POOL = ["S", "E", "D", "N", "A", "seg_2"]


@st.composite
def group_specs(draw: st.DrawFn) -> tuple[int, list[str], list[list[list[str]]]]:
    """A random task list and a random sequence of refining partitions (a valid from_groups input)."""
    tasks = draw(st.lists(st.sampled_from(TASK_POOL), min_size=1, max_size=5, unique=True))
    num_blocks = draw(st.integers(1, 6))
    current: list[list[str]] = [list(tasks)]
    groups: list[list[list[str]]] = []
    for _ in range(num_blocks):
        refined: list[list[str]] = []
        for group in current:
            labels = draw(st.lists(st.integers(0, 2), min_size=len(group), max_size=len(group)))
            parts: dict[int, list[str]] = {}
            for task, label in zip(group, labels):
                parts.setdefault(label, []).append(task)
            refined.extend(parts.values())
        refined = [list(draw(st.permutations(p))) for p in draw(st.permutations(refined))]
        groups.append(refined)
        current = refined
    return num_blocks, tasks, groups


def _random_topological_order(graph: MTGraph, rnd: random.Random) -> MTGraph:
    """The same graph with nodes renumbered in a random topological order.

    Input stays first and heads stay last in their order (the head order is the task order).
    """
    pending = [len(set(n.srcs)) for n in graph.nodes]
    ready = [(0.0, 0)]
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for u in dict.fromkeys(graph.users[i]):
            pending[u] -= 1
            if pending[u] == 0 and not isinstance(graph.nodes[u], Head):
                heapq.heappush(ready, (rnd.random(), u))
    order += [i for i, n in enumerate(graph.nodes) if isinstance(n, Head)]
    mapping = {old: new for new, old in enumerate(order)}
    return MTGraph(tuple(renumber(graph.nodes[i], mapping) for i in order))


@settings(max_examples=150, deadline=None)
@given(spec=group_specs(), seed=st.integers(0, 2**32 - 1))
def test_random_trees_are_canonical_and_round_trip(spec, seed: int) -> None:
    num_blocks, tasks, groups = spec
    g = from_groups(num_blocks, tasks, groups)
    verify(g, num_blocks=num_blocks)
    check_canonical(g)
    # Printer and parser are inverse.
    text = print_graph(g)
    assert parse_graph(text) == g
    assert print_graph(parse_graph(text)) == text
    # The canonical order does not depend on how the nodes were numbered.
    shuffled = _random_topological_order(g, random.Random(seed))
    verify(shuffled, num_blocks=num_blocks)
    assert canonicalize(shuffled) == g
    # The graph is the tree the groups describe: each task's block b uses its group's key.
    for task in tasks:
        path_keys = [g.nodes[i].weights for i in g.path(task) if isinstance(g.nodes[i], Block)]
        expected = [group_key(b, next(p for p in groups[b] if task in p), tasks) for b in range(num_blocks)]
        assert path_keys == expected
    assert sum(isinstance(n, Block) for n in g.nodes) == sum(len(p) for p in groups)
    # Canonical graphs are fixed points of the canonicalisation mechanisms.
    assert merge_duplicates(g) == g and remove_dead(g) == g


@settings(max_examples=100, deadline=None)
@given(spec=group_specs(), data=st.data())
def test_random_graphs_with_skips_canonicalise_independently_of_numbering(spec, data: st.DataObject) -> None:
    num_blocks, tasks, groups = spec
    tree_graph = from_groups(num_blocks, tasks, groups)
    # Turn some blocks into skips (AdaShare): identity skips, or skips through the block's weights.
    nodes = list(tree_graph.nodes)
    for i, node in enumerate(nodes):
        if isinstance(node, Block) and data.draw(st.booleans(), label=f"skip %{i}"):
            nodes[i] = Skip(node.block, node.src, data.draw(st.sampled_from([None, node.weights])))
    # Two tasks skipping the same value the same way now compute one thing: cse, dce, then order.
    g = canonicalize(remove_dead(merge_duplicates(MTGraph(tuple(nodes)))))
    verify(g, num_blocks=num_blocks)
    check_canonical(g)
    assert canonicalize(g) == g
    assert parse_graph(print_graph(g)) == g
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    assert canonicalize(_random_topological_order(g, random.Random(seed))) == g


@settings(max_examples=50, deadline=None)
@given(spec=group_specs())
def test_group_order_does_not_matter(spec) -> None:
    num_blocks, tasks, groups = spec
    tidy = [sorted(sorted(p) for p in partition) for partition in groups]
    assert from_groups(num_blocks, tasks, groups) == from_groups(num_blocks, tasks, tidy)


# --------------------------------------------------------------------------- #
# Canonicalisation mechanisms
# --------------------------------------------------------------------------- #


def test_merge_duplicates_is_transitive_and_remove_dead_drops_unreachable() -> None:
    nodes = (
        Input(),
        Block(0, "b0.shared", 0),
        Block(0, "b0.shared", 0),  # duplicate of %1
        Block(1, "b1.S", 1),
        Block(1, "b1.S", 2),  # becomes a duplicate of %3 once %2 is merged into %1
        Block(1, "b1.X", 1),  # dead: no head reads it
        Head("S", 3),
        Head("E", 4),
    )
    merged = merge_duplicates(MTGraph(nodes))
    assert merged.nodes == (Input(), Block(0, "b0.shared", 0), Block(1, "b1.S", 1), Block(1, "b1.X", 1),
                            Head("S", 2), Head("E", 2))
    alive = remove_dead(merged)
    assert alive.nodes == (Input(), Block(0, "b0.shared", 0), Block(1, "b1.S", 1), Head("S", 2), Head("E", 2))
    check_canonical(alive)


# --------------------------------------------------------------------------- #
# Verifier: one test per check, each message names the node
# --------------------------------------------------------------------------- #


def _graph(*nodes) -> MTGraph:
    return MTGraph(tuple(nodes))


BASE = (Input(), Block(0, "b0.shared", 0), Block(1, "b1.S", 1), Block(1, "b1.E", 1))


def test_check_input_first() -> None:
    no_input = _graph(Block(0, "b0.S", 0), Head("S", 0))
    with pytest.raises(VerifyError, match=r"node %0 \(%0 = block 0 w=b0.S \(%0\)\) must be the input"):
        check_input_first(no_input)
    second = _graph(*BASE, Input(), Head("S", 2), Head("E", 3))
    with pytest.raises(VerifyError, match=r"node %4 \(%4 = input\) is a second input"):
        verify(second)
    with pytest.raises(VerifyError, match="empty"):
        verify(_graph())


def test_check_topological() -> None:
    g = _graph(Input(), Block(0, "b0.S", 2), Head("S", 1))
    with pytest.raises(VerifyError, match=r"node %1 \(%1 = block 0 w=b0.S \(%2\)\) uses %2, which is not an earlier node"):
        check_topological(g)
    self_loop = _graph(Input(), Block(0, "b0.S", 1), Head("S", 1))
    with pytest.raises(VerifyError, match=r"node %1 .* uses %1"):
        verify(self_loop)


def test_check_sources_are_values() -> None:
    g = _graph(Input(), Block(0, "b0.S", 0), Head("S", 1), Block(1, "b1.E", 2), Head("E", 3))
    with pytest.raises(VerifyError, match=r"node %3 \(%3 = block 1 w=b1.E \(%2\)\) uses head %2"):
        check_sources_are_values(g)


def test_check_heads() -> None:
    with pytest.raises(VerifyError, match="no head"):
        check_heads(_graph(*BASE))
    twice = _graph(*BASE, Head("S", 2), Head("S", 3))
    with pytest.raises(VerifyError, match=r"node %5 \(S = head \(%3\)\): task 'S' has a second head"):
        verify(twice)


def test_check_block_levels() -> None:
    wrong_level = _graph(Input(), Block(0, "b0.S", 0), Block(2, "b2.S", 1), Head("S", 2))
    with pytest.raises(VerifyError, match=r"node %2 \(%2 = block 2 w=b2.S \(%1\)\): block 2 must consume .* %1 is at level 1"):
        check_block_levels(wrong_level)
    skip = _graph(Input(), Skip(1, 0), Head("S", 1))
    with pytest.raises(VerifyError, match=r"node %1 \(%1 = skip 1 \(%0\)\): block 1 must consume"):
        check_block_levels(skip)


@pytest.mark.parametrize(
    "gate, message",
    [
        (Gate("S", (2,), "gate.S"), r"node %4 \(%4 = gate S w=gate.S \(%2\)\) mixes 1 source"),
        (Gate("S", (2, 2), "gate.S"), r"node %4 .* names a source twice"),
        (Gate("S", (1, 2), "gate.S"), r"node %4 .* mixes sources at different backbone levels \[1, 2\]"),
        (Gate("X", (2, 3), "gate.X"), r"node %4 .* is for task 'X', which has no head"),
    ],
)
def test_check_gates(gate: Gate, message: str) -> None:
    g = _graph(*BASE, gate, Head("S", 4), Head("E", 3))
    with pytest.raises(VerifyError, match=message):
        check_gates(g)
    with pytest.raises(VerifyError, match=message):
        verify(g)


@pytest.mark.parametrize(
    "nodes, message",
    [
        (
            (Input(), Block(0, "w", 0), Block(1, "w", 1), Head("S", 2)),
            r"node %2 .*weight key 'w' is already used for block 0",
        ),
        (
            (Input(), Block(0, "b0.S", 0), Block(0, "b0.E", 0), Gate("S", (1, 2), "b0.E"), Head("S", 3)),
            r"node %3 .*weight key 'b0.E' is already used for block 0",
        ),
    ],
)
def test_check_weight_keys(nodes: tuple, message: str) -> None:
    with pytest.raises(VerifyError, match=message):
        check_weight_keys(_graph(*nodes))


def test_check_block_count() -> None:
    g = _graph(*BASE, Head("S", 2), Head("E", 3))
    verify(g, num_blocks=2)
    with pytest.raises(VerifyError, match=r"node %2 \(%2 = block 1 w=b1.S \(%1\)\): block 1 does not exist; the backbone has 1 blocks"):
        _check_block_count(g, 1)
    with pytest.raises(VerifyError, match=r"node %4 \(S = head \(%2\)\): the head of task 'S' consumes a value at level 2.*level 3"):
        verify(g, num_blocks=3)


def test_check_keys_exist() -> None:
    g = _graph(*BASE, Head("S", 2), Head("E", 3))
    keys = {"b0.shared", "b1.S", "head.S", "head.E"}
    with pytest.raises(VerifyError, match=r"node %3 \(%3 = block 1 w=b1.E \(%1\)\): weight key 'b1.E' is not in the ParamStore"):
        _check_keys_exist(g, keys)
    with pytest.raises(VerifyError, match=r"node %5 \(E = head \(%3\)\): weight key 'head.E'"):
        verify(g, weight_keys=(keys | {"b1.E"}) - {"head.E"})


def test_check_canonical() -> None:
    dead = _graph(*BASE, Block(1, "b1.X", 1), Head("S", 2), Head("E", 3))
    with pytest.raises(VerifyError, match=r"node %4 \(%4 = block 1 w=b1.X \(%1\)\) reaches no head \(run 'dce'\)"):
        check_canonical(dead)
    duplicate = _graph(Input(), Block(0, "b0.shared", 0), Block(1, "b1.S", 1), Block(1, "b1.S", 1),
                       Head("S", 2), Head("E", 3))
    with pytest.raises(VerifyError, match=r"node %3 .* duplicates %2 \(run 'cse'\)"):
        check_canonical(duplicate)
    swapped = _graph(Input(), Block(0, "b0.shared", 0), Block(1, "b1.E", 1), Block(1, "b1.S", 1),
                     Head("S", 3), Head("E", 2))
    verify(swapped)
    with pytest.raises(VerifyError, match=r"node %2 \(%2 = block 1 w=b1.E \(%1\)\) is not in canonical order.*b1.S"):
        check_canonical(swapped)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Block(-1, "bm.S", 0), r"Block.block must be a non-negative int, got -1"),
        (lambda: Block(True, "b0.S", 0), r"Block.block must be a non-negative int, got True"),
        (lambda: Block(0, "b0 S", 0), r"Block.weights 'b0 S' is malformed"),
        (lambda: Block(0, "head.S", 0), r"Block.weights 'head.S' is reserved for heads"),
        (lambda: Block(0, None, 0), r"Block.weights None is malformed"),
        (lambda: Block(0, "b0.S", -2), r"Block.src must be a non-negative int, got -2"),
        (lambda: Skip(1, "0"), r"Skip.src must be a non-negative int, got '0'"),
        (lambda: Skip(1, 0, weights=""), r"Skip.weights '' is malformed"),
        (lambda: Gate("S", 2, "gate.S"), r"Gate.srcs must be a sequence of node ids .*got 2"),
        (lambda: Gate("S", "23", "gate.S"), r"Gate.srcs must be a sequence of node ids .*got '23'"),
        (lambda: Gate("S", (2, 3.0), "gate.S"), r"Gate.srcs must be a sequence of node ids .*got \(2, 3.0\)"),
        (lambda: Gate("2nd", (2, 3), "gate.S"), r"Gate.task '2nd' is not an identifier"),
        (lambda: Gate("input", (2, 3), "gate.S"), r"Gate.task 'input' is reserved; reserved task names are 'input'"),
        (lambda: Head("2nd", 3), r"Head.task '2nd' is not an identifier"),
        (lambda: Head("input", 3), r"Head.task 'input' is reserved"),
        (lambda: Head("S", None), r"Head.src must be a non-negative int, got None"),
        (lambda: MTGraph((Input(), "S = head (%0)")), r"MTGraph node 1 is a str, not an IR node"),
        (lambda: MTGraph("%0 = input"), r"MTGraph nodes must be a tuple of IR nodes, got str"),
    ],
)
def test_nodes_validate_their_fields_at_construction(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IRError, match=message):
        make()


def test_a_gate_given_a_list_of_sources_stores_a_tuple_and_round_trips() -> None:
    gate = Gate(task="D", srcs=[2, 3], weights="gate.D")
    assert gate.srcs == (2, 3) and gate == Gate("D", (2, 3), "gate.D") and hash(gate) == hash(Gate("D", (2, 3), "gate.D"))
    g = parse_graph(SKIP_GATE_TEXT)
    with_list = MTGraph(list(g.nodes[:4]) + [Gate(task="D", srcs=[2, 3], weights="gate.D")] + list(g.nodes[5:]))
    assert isinstance(with_list.nodes, tuple)
    verify(with_list, num_blocks=3)
    check_canonical(with_list)
    assert parse_graph(print_graph(with_list)) == with_list == g


def test_parse_refuses_node_fields_naming_the_line() -> None:
    with pytest.raises(ParseError, match=r"line 2: Block.weights 'head.S' is reserved for heads"):
        parse_graph("%0 = input\n%1 = block 0 w=head.S (%0)\nS = head (%1)\n")
    with pytest.raises(ParseError, match=r"line 3: Head.task 'input' is reserved"):
        parse_graph("%0 = input\n%1 = block 0 w=b0.S (%0)\ninput = head (%1)\n")


@pytest.mark.parametrize("builder", [stn, one_net])
def test_builders_refuse_reserved_task_names_and_list_them(builder) -> None:  # type: ignore[no-untyped-def]
    from mtgraph.ir import RESERVED_TASK_NAMES

    with pytest.raises(IRError) as info:
        builder(2, ["seg", "input"])
    assert "task name 'input' is reserved" in str(info.value)
    assert all(repr(name) in str(info.value) for name in RESERVED_TASK_NAMES)
    with pytest.raises(IRError, match="task name 'input' is reserved"):
        from_groups(1, ["input"], [[["input"]]])


def test_replace_returns_a_new_verified_graph() -> None:
    g = tree()
    tied = g.replace(3, Block(1, "b1.S+E", 1))  # D's block 1 reuses S and E's weights: a duplicate call site
    assert g == tree() and tied.nodes[3] == Block(1, "b1.S+E", 1) and tied.nodes[2] == g.nodes[2]
    with pytest.raises(VerifyError, match=r"node %3 \(%3 = block 1 w=b1.D \(%3\)\) uses %3, which is not an earlier node"):
        g.replace(3, Block(1, "b1.D", 3))
    with pytest.raises(VerifyError, match=r"block 2 must consume the output of block 1"):
        g.replace(3, Block(2, "b2.D", 1))
    with pytest.raises(IRError, match=r"cannot replace node 10: the graph has nodes 0..9"):
        g.replace(10, Block(1, "b1.D", 1))
    with pytest.raises(IRError, match="MTGraph node 3 is a str"):
        g.replace(3, "%3 = block 1 w=b1.D (%1)")  # type: ignore[arg-type]


def test_verifier_errors_show_the_failing_node_with_three_lines_around_it() -> None:
    g = tree()
    broken = MTGraph(g.nodes[:5] + (Block(2, "b1.D", 2),) + g.nodes[6:])  # b1.D is a block-1 key used at block 2
    with pytest.raises(VerifyError) as info:
        verify(broken)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "node %5 (%5 = block 2 w=b1.D (%2)): weight key 'b1.D' is already used for block 1; "
        "one key must always name the same block's parameters"
    )
    printed = print_graph(broken).splitlines()
    assert lines[1:] == ["      " + line.rstrip() for line in printed[2:5]] + ["  --> " + printed[5].rstrip()] + [
        "      " + line.rstrip() for line in printed[6:9]
    ]
    first = MTGraph((Block(0, "b0.S", 0), Head("S", 0)))  # the failing node is the first: no lines before it
    with pytest.raises(VerifyError) as info:
        verify(first)
    assert str(info.value).splitlines()[1:] == [f"  --> {'%0 = block 0 w=b0.S (%0)':<43} # S", "      S = head (%0)"]


def test_verify_rejects_non_graphs() -> None:
    with pytest.raises(VerifyError, match="expected an MTGraph"):
        verify("%0 = input")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Builder and parser errors
# --------------------------------------------------------------------------- #


def test_from_groups_rejects_a_partition_sequence_that_is_not_a_tree() -> None:
    groups = [[["S"], ["E", "D"]], [["S", "E"], ["D"]]]  # S and E merge again at block 1
    with pytest.raises(IRError, match=r"groups are not a tree: at block 1 group \['E', 'S'\] takes tasks from different groups of block 0"):
        from_groups(2, ["S", "E", "D"], groups)


@pytest.mark.parametrize(
    "num_blocks, tasks, groups, message",
    [
        (2, ["S", "E"], [[["S", "E"]]], "groups has 1 partitions; the backbone has 2 blocks"),
        (1, ["S", "E"], [[["S"]]], r"block 0: tasks \['E'\] are in no group"),
        (1, ["S", "E"], [[["S", "E", "X"]]], r"block 0: groups name unknown tasks \['X'\]"),
        (1, ["S", "E"], [[["S", "E"], ["E"]]], r"block 0: tasks \['E'\] are in more than one group"),
        (1, ["S", "E"], [[["S", "E"], []]], "block 0: a group is empty"),
        (1, ["S", "S"], [[["S"]]], r"task names must be unique; repeated: \['S'\]"),
        (1, ["S", "my-task"], [[["S", "my-task"]]], "task name 'my-task' is not an identifier"),
        (0, ["S"], [], "num_blocks must be a positive int"),
        (1, [], [[]], "at least one task"),
    ],
)
def test_from_groups_errors(num_blocks: int, tasks: list[str], groups: list, message: str) -> None:
    with pytest.raises(IRError, match=message):
        from_groups(num_blocks, tasks, groups)


@pytest.mark.parametrize(
    "text, message",
    [
        ("%0 = input\n%1 = blok 0 w=b0.S (%0)\nS = head (%1)\n", r"line 2: cannot parse .*near 'blok'"),
        ("%0 = input\n%2 = block 0 w=b0.S (%0)\nS = head (%1)\n", r"line 2: node is numbered %2 but is node 1"),
        ("%0 = input\n%1 = gate S w=g (%0, x)\nS = head (%1)\n", r"line 2: expected a node reference like %3 .*'x'"),
        ("# only a comment\n\n", "IR text has no nodes"),
        ("%0 = input\n%1 = block 0 w=b0.S (%" + "9" * 5000 + ")\nS = head (%1)\n", r"line 2: cannot parse '%1 = block 0 w=b0.S \(%9{55}\.\.\.'"),
        ("%" + "0" * 5000 + " = input\nS = head (%0)\n", "line 1: cannot parse"),
        ("%0 = input\n%1 = gate S w=g (%0, %" + "1" * 20 + ")\nS = head (%1)\n", "line 2: expected a node reference"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(ParseError, match="must be a str"):
        parse_graph(b"%0 = input")  # type: ignore[arg-type]
