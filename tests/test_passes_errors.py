"""Rejections explain themselves: which tasks, which block, which condition failed."""

from __future__ import annotations

import pytest
import torch
from passes_support import TASKS, graph, make_store, pointwise_heads, tiny_backbone
from torch import nn

from mtgraph import MixGate, MTGraph, ParamStore, PassError, VerifyError
from mtgraph.ir import from_groups, one_net, stn
from mtgraph.passes import (
    REFUSAL_KINDS,
    CSEPass,
    DCEPass,
    FusePass,
    GatePass,
    HardenPass,
    Refusal,
    SkipPass,
    SplitPass,
    run_passes,
)


def _refused(pass_, g, match: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(PassError) as info:
        pass_(g, make_store(g))
    assert match in str(info.value), str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- fuse


def test_fuse_refuses_tasks_that_do_not_share_a_source() -> None:
    message = _refused(FusePass(("S", "E"), 2), stn(4, TASKS), "fuse tasks S+E at block 2: the tasks do not share a source at block 2")
    assert "S reads '%4 = block 1 w=b1.S (%1)'" in message
    assert "E reads '%6 = block 1 w=b1.E (%3)'" in message
    assert "fuse the earlier blocks first" in message


def test_fuse_refuses_nodes_serving_other_tasks() -> None:
    g = from_groups(4, TASKS, [[TASKS], [["S", "D"], ["E"]], [["S", "D"], ["E"]], [["S"], ["D"], ["E"]]])
    _refused(FusePass(("S", "E"), 1), g, "node '%2 = block 1 w=b1.S+D (%1)' also serves ['D'], which are not among the tasks ['S', 'E']")


def test_fuse_of_tasks_already_sharing_is_a_no_op() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    result = FusePass(("S", "E"), 2)(g, params)
    assert not result.changed and result.graph is g and result.params is params


def test_fuse_refuses_skipped_and_gated_tasks() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    skipped = SkipPass("E", 1)(g, params)
    with pytest.raises(PassError, match=r"fuse tasks S\+E at block 1: task 'E' skips block 1 \('%3 = skip 1 \(%1\)'\); only Block nodes can be fused"):
        FusePass(("S", "E"), 1)(skipped.graph, skipped.params)
    gated = GatePass("E", 2, 2)(g, params)
    with pytest.raises(PassError, match=r"task 'E' has 2 nodes of block 2 on its path .*harden the gate first"):
        FusePass(("S", "E"), 2)(gated.graph, gated.params)


def test_fuse_refuses_unknown_tasks_and_blocks() -> None:
    _refused(FusePass(("S", "X"), 1), stn(4, TASKS), "fuse tasks S+X at block 1: task 'X' does not exist; the graph's tasks are ['S', 'D', 'E']")
    _refused(FusePass(("S", "E"), 9), stn(4, TASKS), "fuse tasks S+E at block 9: block 9 is outside the backbone, which has blocks 0..3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": "S+E", "block": 1}, "fuse: tasks must be a sequence of task names such as ('S', 'E'), got 'S+E'"),
        ({"tasks": ("S",), "block": 1}, "fuse: tasks needs at least 2 task(s), got ['S']"),
        ({"tasks": ("S", "S"), "block": 1}, "fuse: tasks names ['S'] more than once"),
        ({"tasks": ("S", "E"), "block": -1}, "fuse: block must be a non-negative int, got -1"),
        ({"tasks": ("S", "E"), "block": 1, "init": "median"}, "fuse: init must be one of ['average', 'copy'], got 'median'"),
        ({"tasks": ("S", "E"), "block": 1, "init": "copy"}, "source_task, which must be one of tasks ['S', 'E']; got source_task=None"),
        ({"tasks": ("S", "E"), "block": 1, "source_task": "S"}, "source_task='S' is only meaningful with init='copy'"),
    ],
)
def test_fuse_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(PassError) as info:
        FusePass(**kwargs)
    assert message in str(info.value)


# ----------------------------------------------------------------------------- split


def test_split_refuses_groups_that_do_not_cover_the_node() -> None:
    _refused(
        SplitPass(2, (("S",), ("D",))),
        one_net(4, TASKS),
        "split block 2 into S/D: the groups must cover exactly the tasks node '%3 = block 2 w=b2.shared (%2)' serves, "
        "['S', 'D', 'E']; missing ['E']",
    )


def test_split_refuses_tasks_on_different_nodes() -> None:
    message = _refused(SplitPass(2, (("S",), ("E",))), stn(4, TASKS), "split block 2 into S/E: the tasks do not share one node at block 2")
    assert "S: '%7 = block 2 w=b2.S (%4)'" in message


def test_split_option_errors() -> None:
    with pytest.raises(PassError, match=r"split: tasks \['S'\] are in more than one group; the groups must be disjoint"):
        SplitPass(1, (("S", "E"), ("S",)))
    with pytest.raises(PassError, match="split: groups is empty"):
        SplitPass(1, ())
    with pytest.raises(PassError, match="split: groups must be a sequence of task groups"):
        SplitPass(1, "S+E/D")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- skip


def test_skip_refuses_a_block_without_shortcut_with_its_name_and_shapes() -> None:
    _refused(
        SkipPass("S", 0),
        one_net(4, TASKS),
        "skip block 0 for task 'S': block 0 (stem) cannot be skipped: its input shape [3, 32, 32] and output shape "
        "[8, 32, 32] differ and it has no shortcut",
    )


def test_skip_refuses_unknown_task() -> None:
    _refused(SkipPass("Q", 1), one_net(4, TASKS), "skip block 1 for task 'Q': task 'Q' does not exist")


# ----------------------------------------------------------------------------- gate


def test_gate_refuses_a_task_that_does_not_exist() -> None:
    _refused(GatePass("depth", 1, 2), one_net(4, TASKS), "gate task 'depth' over blocks 1..2: task 'depth' does not exist; the graph's tasks are ['S', 'D', 'E']")


def test_gate_refuses_a_range_outside_the_backbone() -> None:
    _refused(GatePass("S", 2, 7), one_net(4, TASKS), "gate task 'S' over blocks 2..7: the range 2..7 is outside the backbone, which has blocks 0..3")


def test_gate_refuses_an_illegal_skip_alternative() -> None:
    _refused(GatePass("S", 0, 0, private="skip"), one_net(4, TASKS), "block 0 (stem) cannot be skipped")


def test_gate_refuses_a_range_that_is_already_gated() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    gated = GatePass("S", 2, 3)(g, params)
    with pytest.raises(PassError, match="gate task 'S' over block 3: the task has 2 nodes of block 3"):
        GatePass("S", 3, 3)(gated.graph, gated.params)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, "gate: alpha = P(public path) must be a number in [0, 1], got 1.5"),
        ({"alpha": -0.1}, "gate: alpha = P(public path) must be a number in [0, 1], got -0.1"),
        ({"start": 3, "end": 1}, "gate: the block range start=3..end=1 is empty"),
        ({"mode": "hard"}, "gate: mode must be one of ['softmax', 'gumbel', 'gumbel_st'], got 'hard'"),
        ({"tau": 0.0}, "gate: tau must be a positive number, got 0.0"),
        ({"private": "skip"}, "private='skip' gates one block between running it and skipping it; got the range 1..2"),
        ({"private": "random"}, "gate: private must be one of ['fresh', 'copy', 'skip'], got 'random'"),
        ({"task": "1st"}, "gate: task contains '1st', which is not a task name"),
    ],
)
def test_gate_option_errors(kwargs: dict, message: str) -> None:
    options = {"task": "S", "start": 1, "end": 2, **kwargs}
    with pytest.raises(PassError) as info:
        GatePass(**options)
    assert message in str(info.value)


# ----------------------------------------------------------------------------- harden


def test_harden_threshold_needs_two_input_gates() -> None:
    g = graph("""
        %0 = input
        %1 = block 0 w=b0.shared (%0)
        %2 = block 1 w=b1.shared (%1)
        %3 = block 2 w=b2.shared (%2)
        %4 = block 3 w=b3.shared (%3)
        %5 = block 3 w=b3.S (%3)
        %6 = skip 3 (%3)
        %7 = gate S w=gate.S (%4, %5, %6)
        S = head (%7)
        D = head (%4)
    """)
    gate = MixGate(3, init_probs=(0.2, 0.3, 0.5))
    params = ParamStore.create(g, tiny_backbone(), pointwise_heads(("S", "D")), gates={"gate.S": gate})
    with pytest.raises(PassError, match=r"harden: gate '%7 = gate S w=gate.S \(%4, %5, %6\)' of task 'S': threshold applies to 2-input gates, this one mixes 3"):
        HardenPass(threshold=0.5)(g, params)
    hard = HardenPass()(g, params)  # argmax: the skip
    assert "S = head (%4)" in str(hard.graph) and "%4 = skip 3 (%3)" in str(hard.graph)
    assert hard.lineage.dropped == ("b3.S", "gate.S")
    with pytest.raises(PassError, match=r"harden: threshold must be a probability in \[0, 1\] or None, got 2"):
        HardenPass(threshold=2)


# ----------------------------------------------------------------------------- refusals as values


class _NoChoice(nn.Module):
    """A gate module that cannot say which source it chose."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return inputs[0]


def _gated_without_choice() -> tuple[MTGraph, ParamStore]:
    g = one_net(4, TASKS)
    gated = GatePass("S", 2, 2)(g, make_store(g))
    return gated.graph, gated.params.updated(add={"gate.S.b2": _NoChoice()})


def _stn_with_foreign_block() -> tuple[MTGraph, ParamStore]:
    g = stn(4, TASKS)
    return g, make_store(g).updated(add={"b0.E": nn.Identity()})


def _after(pipeline: str, start: MTGraph) -> tuple[MTGraph, ParamStore]:
    result = run_passes(start, make_store(start), pipeline)
    return result.graph, result.params


def _store(g: MTGraph) -> tuple[MTGraph, ParamStore]:
    return g, make_store(g)


# (failed, graph and store, pass, tasks, block, words of the text)
REFUSALS = [
    ("input-type", lambda: (one_net(4, TASKS), {}), DCEPass(), (), None, "'dce' expects a ParamStore, got dict"),
    ("invalid-graph", lambda: (stn(4, TASKS), make_store(one_net(4, TASKS))), CSEPass(), (), None,
     "the input graph of 'cse' is invalid"),
    ("unknown-task", lambda: _store(stn(4, TASKS)), FusePass(("S", "X"), 1), ("X",), None, "task 'X' does not exist"),
    ("block-out-of-range", lambda: _store(one_net(4, TASKS)), SkipPass("S", 9), (), 9, "block 9 is outside the backbone"),
    ("gated", lambda: _after("gate{task=E,start=2,end=2}", one_net(4, TASKS)), FusePass(("S", "E"), 2), ("E",), 2,
     "task 'E' has 2 nodes of block 2"),
    ("skipped", lambda: _after("skip{task=E,block=1}", one_net(4, TASKS)), FusePass(("S", "E"), 1), ("E",), 1,
     "task 'E' skips block 1"),
    ("no-common-source", lambda: _store(stn(4, TASKS)), FusePass(("S", "E"), 2), ("S", "E"), 2,
     "the tasks do not share a source at block 2"),
    ("serves-other-tasks", lambda: _store(from_groups(4, TASKS, [[TASKS], [["S", "D"], ["E"]], [["S", "D"], ["E"]],
                                                                [["S"], ["D"], ["E"]]])),
     FusePass(("S", "E"), 1), ("D",), 1, "also serves ['D']"),
    ("not-shared", lambda: _store(stn(4, TASKS)), SplitPass(2, (("S",), ("E",))), ("S", "E"), 2,
     "the tasks do not share one node at block 2"),
    ("groups-incomplete", lambda: _store(one_net(4, TASKS)), SplitPass(2, (("S",), ("D",))), ("E",), 2, "missing ['E']"),
    ("not-skippable", lambda: _store(one_net(4, TASKS)), SkipPass("S", 0), ("S",), 0, "block 0 (stem) cannot be skipped"),
    ("structure-mismatch", _stn_with_foreign_block, FusePass(("S", "E"), 0), ("S", "E"), 0,
     "cannot average weights 'b0.S' and 'b0.E': their modules differ in structure"),
    ("no-choice", _gated_without_choice, HardenPass(), ("S",), None, "has no chosen() method"),
]


@pytest.mark.parametrize(("failed", "make", "pass_", "tasks", "block", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_check_returns_the_refusal_that_calling_raises(failed, make, pass_, tasks, block, words) -> None:  # type: ignore[no-untyped-def]
    graph_, params = make()
    refusal = pass_.check(graph_, params)
    assert isinstance(refusal, Refusal)
    assert (refusal.failed, refusal.tasks, refusal.block) == (failed, tasks, block)
    assert (refusal.pass_name, refusal.step) == (pass_.name, str(pass_))
    assert words in refusal.text and str(refusal) == refusal.text
    error = VerifyError if failed == "invalid-graph" else PassError
    with pytest.raises(error) as info:
        pass_(graph_, params)
    assert str(info.value) == refusal.text


def test_every_kind_of_refusal_has_a_case() -> None:
    assert sorted(r[0] for r in REFUSALS) == sorted(REFUSAL_KINDS)


def test_check_of_an_applicable_pass_is_none_and_changes_nothing() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    keys = params.keys()
    assert FusePass(("S", "E"), 0).check(g, params) is None
    assert params.keys() == keys and g == stn(4, TASKS)
    with pytest.raises(PassError, match="failed must be one of"):
        Refusal("fuse", "fuse", "no-such-kind", "text")
