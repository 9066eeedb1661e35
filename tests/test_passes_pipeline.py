"""Pipeline strings, the registry and the pass manager."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from passes_support import TASKS, make_store, text

from mtgraph import MTGraph, ParseError, PassError, VerifyError
from mtgraph.ir import Block, one_net, stn
from mtgraph.params import ParamStore
from mtgraph.passes import (
    REGISTRY,
    CSEPass,
    DCEPass,
    FusePass,
    GatePass,
    HardenPass,
    Lineage,
    Pass,
    PassResult,
    SkipPass,
    SplitPass,
    format_pipeline,
    parse_pipeline,
    pass_class,
    run_passes,
)


def test_documented_example_round_trips_exactly() -> None:
    line = "fuse{tasks=seg+edge,block=3,init=average},dce"
    passes = parse_pipeline(line)
    assert passes == [FusePass(("seg", "edge"), 3, init="average"), DCEPass()]
    assert format_pipeline(passes) == line


def test_every_registered_pass_round_trips() -> None:
    passes = [
        FusePass(("S", "E"), 2, init="copy", source_task="E"),
        SplitPass(1, (("S", "E"), ("D",))),
        SkipPass("D", 3),
        GatePass("S", 1, 3, alpha=0.3, mode="gumbel_st", tau=0.5, private="copy"),
        HardenPass(threshold=0.75),
        HardenPass(),
        CSEPass(),
        DCEPass(),
    ]
    assert {type(p) for p in passes} == set(REGISTRY.values())
    line = format_pipeline(passes)
    assert line == (
        "fuse{tasks=S+E,block=2,init=copy,source_task=E},split{block=1,groups=S+E/D},skip{task=D,block=3},"
        "gate{task=S,start=1,end=3,alpha=0.3,mode=gumbel_st,tau=0.5,private=copy},harden{threshold=0.75},harden,cse,dce"
    )
    assert parse_pipeline(line) == passes
    assert format_pipeline(parse_pipeline(line)) == line
    assert str(passes[0]) == "fuse{tasks=S+E,block=2,init=copy,source_task=E}"


def test_parse_accepts_spaces_any_option_order_and_defaults() -> None:
    passes = parse_pipeline(" gate { end = 2 , task = S , start = 1 } , harden{} ,cse ")
    assert passes == [GatePass("S", 1, 2), HardenPass(), CSEPass()]
    assert format_pipeline(passes) == "gate{task=S,start=1,end=2,alpha=0.5,mode=softmax,tau=1.0,private=fresh},harden,cse"


def test_passes_are_hashable_values_with_tuple_options() -> None:
    a = FusePass(["S", "E"], 1)  # type: ignore[arg-type]
    b = FusePass(("S", "E"), 1)
    assert a == b and hash(a) == hash(b) and a.tasks == ("S", "E")
    assert SplitPass(2, [["S"], ["E"]]).groups == (("S",), ("E",))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        a.block = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "position", "message"),
    [
        ("", 0, "the pipeline is empty"),
        ("cse,fusee{tasks=S+E}", 4, "unknown pass 'fusee'; valid passes are ['cse', 'dce', 'fuse', 'gate', 'harden', 'skip', 'split']"),
        ("fuse{tasks=S+E,block=3", 22, "expected '}' or ',' after the value of 'block'"),
        ("fuse{tasks=S+E,,block=3}", 15, "expected an option name of 'fuse'"),
        ("fuse{tasks=S+E,block=x3}", 21, "bad value for option 'block' of 'fuse': expected an integer, got 'x3'"),
        ("fuse{taks=S+E,block=3}", 5, "pass 'fuse' has no option 'taks'; its options are ['tasks', 'block', 'init', 'source_task']"),
        ("fuse{tasks=S+E,block=3,block=4}", 23, "option 'block' of 'fuse' is given twice"),
        ("fuse{tasks=S+E}", 0, "pass 'fuse' is missing options ['block']"),
        ("cse dce", 4, "expected ',' between passes or the end of the pipeline"),
        ("cse,", 4, "expected a pass name"),
        ("split{block=1,groups=S+/D}", 21, "expected groups like 'A+B/C'"),
        ("gate{task=S,start=1,end=2,alpha=1.5}", 0, "alpha = P(public path) must be a number in [0, 1], got 1.5"),
        ("harden{threshold=nan}", 17, "expected a finite number"),
        ("fuse{tasks=S+E,block=}", 21, "expected a value for option 'block'"),
    ],
)
def test_malformed_pipelines_name_the_position(line: str, position: int, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_pipeline(line)
    text_ = str(info.value)
    assert text_.startswith(f"pipeline position {position} ")
    assert message in text_
    caret = text_.splitlines()[-1]
    assert caret == "  " + " " * position + "^"


def test_unknown_pass_name_in_the_registry_lookup() -> None:
    assert pass_class("split") is SplitPass
    with pytest.raises(PassError, match=r"unknown pass 'prune'; valid passes are \['cse', 'dce', 'fuse', 'gate', 'harden', 'skip', 'split'\]"):
        pass_class("prune")


def test_run_passes_accepts_a_string_and_composes() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    result = run_passes(g, params, "split{block=3,groups=S/D+E},skip{task=S,block=1},cse,dce")
    assert result.changed
    assert [str(e) for e in result.lineage.entries] == ["b3.S <- copy(b3.shared)", "b3.D+E <- copy(b3.shared)"]
    assert result.lineage.dropped == ("b3.shared",)
    nothing = run_passes(result.graph, result.params, [CSEPass(), DCEPass()])
    assert not nothing.changed and nothing.graph == result.graph and nothing.lineage == Lineage()


def test_run_passes_wraps_failures_with_context_and_keeps_the_type() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    with pytest.raises(PassError) as info:
        run_passes(g, params, "cse,split{block=2,groups=S+E/D},fuse{tasks=S+D,block=3}")
    assert str(info.value).startswith("while running 'fuse{tasks=S+D,block=3,init=average}' after ['cse', 'split']: fuse tasks S+D at block 3:")
    assert "do not share a source at block 3" in str(info.value)


@dataclass(frozen=True)
class _DropsAWeight(Pass):
    """A deliberately broken pass: removes a key the graph still uses."""

    name = "broken"

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        return PassResult(graph, params.updated(drop=["b1.shared"]), Lineage(dropped=("b1.shared",)), True)


@dataclass(frozen=True)
class _Crashes(Pass):
    name = "crashes"

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        raise RuntimeError("boom")


def test_run_passes_verifies_after_every_pass() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    with pytest.raises(VerifyError, match=r"while running 'broken' after \['cse'\]: .*weight key 'b1.shared' is not in the ParamStore"):
        run_passes(g, params, [CSEPass(), _DropsAWeight()])
    with pytest.raises(PassError, match=r"while running 'crashes' after \[\]: boom"):
        run_passes(g, params, [_Crashes()])
    with pytest.raises(PassError, match="run_passes expects pass objects, got str"):
        run_passes(g, params, ["cse"])  # type: ignore[list-item]


def test_a_pass_refuses_an_invalid_input_graph() -> None:
    g = stn(4, ("S", "E"))
    params = make_store(g)
    broken = MTGraph(tuple(Block(0, "b0.nowhere", 0) if i == 1 else n for i, n in enumerate(g.nodes)))
    with pytest.raises(VerifyError, match=r"the input graph of 'cse' is invalid: .*'b0.nowhere' is not in the ParamStore"):
        CSEPass()(broken, params)
    with pytest.raises(PassError, match="'dce' expects a ParamStore, got dict"):
        DCEPass()(g, {})  # type: ignore[arg-type]
    assert text(CSEPass()(g, params).graph) == text(g)


def test_run_passes_verifies_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtgraph.passes.base as base
    import mtgraph.passes.manager as manager

    calls: list[str] = []
    real = manager.verify

    def counting(where: str):  # type: ignore[no-untyped-def]
        def verify(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(where)
            return real(*args, **kwargs)
        return verify

    monkeypatch.setattr(base, "verify", counting("input"))
    monkeypatch.setattr(manager, "verify", counting("step"))
    g = stn(4, TASKS)
    pipeline = "fuse{tasks=S+D+E,block=0},split{block=0,groups=S/D+E},skip{task=E,block=3},cse,dce"
    result = run_passes(g, make_store(g), pipeline)
    assert result.changed
    assert calls == ["input"] + ["step"] * 5  # the input once, then each step's output once


def test_on_step_sees_every_step_in_order() -> None:
    g = one_net(4, TASKS)
    seen: list[tuple[int, str, bool]] = []
    run_passes(g, make_store(g), "split{block=3,groups=S/D+E},cse", on_step=lambda k, p, r: seen.append((k, p.name, r.changed)))
    assert seen == [(0, "split", True), (1, "cse", False)]


class _NoBackbone:
    """Stands in for ParamStore.backbone: any use of it fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"ParamStore.backbone.{name} was read; passes, verify, cost and compile read params.signature")


def test_passes_verify_cost_and_compile_never_read_the_backbone() -> None:
    import torch
    from passes_support import image

    import mtgraph

    g = one_net(4, TASKS)
    params = make_store(g)
    params.backbone = _NoBackbone()  # type: ignore[assignment]
    pipeline = ("split{block=1,groups=S+E/D},skip{task=E,block=2},gate{task=D,start=1,end=2,private=fresh},"
                "gate{task=S,start=3,end=3,private=skip},harden{threshold=0.6},fuse{tasks=S+E,block=1},cse,dce")
    result = run_passes(g, params, pipeline)
    assert isinstance(result.params.backbone, _NoBackbone)
    mtgraph.verify(result.graph, signature=result.params.signature, weight_keys=set(result.params.keys()))
    report = mtgraph.cost(result.graph, result.params)
    net = mtgraph.compile(result.graph, result.params).eval()
    with torch.no_grad():
        assert set(net(image())) == set(TASKS)
    assert report.total_macs > 0
