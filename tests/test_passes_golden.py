"""Golden IR text before and after each pass, on the tiny backbone (tests/passes_support.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from passes_support import TASKS, dedent, graph, make_store, text

from mtgraph.ir import from_groups, one_net
from mtgraph.passes import CSEPass, DCEPass, FusePass, GatePass, HardenPass, SkipPass, SplitPass

ONE_NET = """
%0 = input                                  # S D E
%1 = block 0 w=b0.shared (%0)               # S D E
%2 = block 1 w=b1.shared (%1)               # S D E
%3 = block 2 w=b2.shared (%2)               # S D E
%4 = block 3 w=b3.shared (%3)               # S D E
S = head (%4)
D = head (%4)
E = head (%4)
"""


def test_one_net_golden_input() -> None:
    assert text(one_net(4, TASKS)) == dedent(ONE_NET)


def test_fuse_golden() -> None:
    before = from_groups(4, TASKS, [[TASKS]] * 2 + [[["S"], ["D"], ["E"]]] * 2)
    assert text(before) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.S (%2)                    # S
        %4 = block 2 w=b2.D (%2)                    # D
        %5 = block 2 w=b2.E (%2)                    # E
        %6 = block 3 w=b3.S (%3)                    # S
        %7 = block 3 w=b3.D (%4)                    # D
        %8 = block 3 w=b3.E (%5)                    # E
        S = head (%6)
        D = head (%7)
        E = head (%8)
    """)
    result = FusePass(("S", "E"), 2)(before, make_store(before))
    assert text(result.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.S+E (%2)                  # S E
        %4 = block 2 w=b2.D (%2)                    # D
        %5 = block 3 w=b3.S (%3)                    # S
        %6 = block 3 w=b3.D (%4)                    # D
        %7 = block 3 w=b3.E (%3)                    # E
        S = head (%5)
        D = head (%6)
        E = head (%7)
    """)
    assert str(result.lineage) == "b2.S+E <- average(b2.S, b2.E)\nb2.S <- dropped\nb2.E <- dropped"
    assert result.changed


def test_new_keys_are_suffixed_when_the_group_key_is_taken() -> None:
    before = from_groups(4, TASKS, [[TASKS]] * 2 + [[["S"], ["D"], ["E"]]] * 2)
    params = make_store(before)
    params = params.updated(add={"b2.S+E": params["b2.D"]})  # an unused key holding the natural name
    result = FusePass(("S", "E"), 2)(before, params)
    assert "%3 = block 2 w=b2.S+E-2 (%2)                # S E" in text(result.graph)
    assert result.lineage.new_keys == ("b2.S+E-2",)
    assert "b2.S+E" in result.params  # a pass only drops keys it made unused; dce drops the rest


def test_split_golden() -> None:
    before = one_net(4, TASKS)
    result = SplitPass(2, (("S", "E"), ("D",)))(before, make_store(before))
    assert text(result.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.S+E (%2)                  # S E
        %4 = block 2 w=b2.D (%2)                    # D
        %5 = block 3 w=b3.S+E (%3)                  # S E
        %6 = block 3 w=b3.D (%4)                    # D
        S = head (%5)
        D = head (%6)
        E = head (%5)
    """)
    assert str(result.lineage) == (
        "b2.S+E <- copy(b2.shared)\nb2.D <- copy(b2.shared)\nb3.S+E <- copy(b3.shared)\nb3.D <- copy(b3.shared)\n"
        "b2.shared <- dropped\nb3.shared <- dropped"
    )


def test_skip_golden_identity_projection_and_merge() -> None:
    before = one_net(4, TASKS)
    params = make_store(before)
    first = SkipPass("D", 1)(before, params)
    # D diverges from block 1 on: its later call sites keep the shared keys.
    assert text(first.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S E
        %3 = skip 1 (%1)                            # D
        %4 = block 2 w=b2.shared (%2)               # S E
        %5 = block 2 w=b2.shared (%3)               # D
        %6 = block 3 w=b3.shared (%4)               # S E
        %7 = block 3 w=b3.shared (%5)               # D
        S = head (%6)
        D = head (%7)
        E = head (%6)
    """)
    assert first.lineage.entries == () and first.lineage.dropped == ()
    # Block 2 downsamples: the skip runs its projection shortcut, with the Block's key.
    second = SkipPass("D", 2)(first.graph, first.params)
    assert "%5 = skip 2 w=b2.shared (%3)                # D" in text(second.graph)
    # E skipping block 1 too makes D and E share the skip node.
    third = SkipPass("E", 1)(second.graph, second.params)
    assert text(third.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S
        %3 = skip 1 (%1)                            # D E
        %4 = block 2 w=b2.shared (%2)               # S
        %5 = skip 2 w=b2.shared (%3)                # D
        %6 = block 2 w=b2.shared (%3)               # E
        %7 = block 3 w=b3.shared (%4)               # S
        %8 = block 3 w=b3.shared (%5)               # D
        %9 = block 3 w=b3.shared (%6)               # E
        S = head (%7)
        D = head (%8)
        E = head (%9)
    """)


def test_gate_and_harden_golden() -> None:
    before = one_net(4, TASKS)
    gated = GatePass("E", 2, 3, alpha=0.25)(before, make_store(before))
    assert text(gated.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.shared (%2)               # S D E
        %4 = block 2 w=b2.E (%2)                    # E
        %5 = block 3 w=b3.shared (%3)               # S D E
        %6 = block 3 w=b3.E (%4)                    # E
        %7 = gate E w=gate.E.b2-3 (%5, %6)          # E
        S = head (%5)
        D = head (%5)
        E = head (%7)
    """)
    assert str(gated.lineage) == "gate.E.b2-3 <- fresh\nb2.E <- fresh\nb3.E <- fresh"
    # alpha = P(public) = 0.25: the argmax keeps the private path.
    hard = HardenPass()(gated.graph, gated.params)
    assert text(hard.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.shared (%2)               # S D
        %4 = block 2 w=b2.E (%2)                    # E
        %5 = block 3 w=b3.shared (%3)               # S D
        %6 = block 3 w=b3.E (%4)                    # E
        S = head (%5)
        D = head (%5)
        E = head (%6)
    """)
    assert str(hard.lineage) == "gate.E.b2-3 <- dropped"
    # With a threshold of 0.2 on P(public), 0.25 keeps the public path: back to One-Net.
    public = HardenPass(threshold=0.2)(gated.graph, gated.params)
    assert text(public.graph) == dedent(ONE_NET)
    assert public.lineage.dropped == ("gate.E.b2-3", "b2.E", "b3.E")


def test_skip_gates_harden_to_block_or_skip_golden() -> None:
    before = one_net(4, TASKS)
    step = GatePass("D", 3, 3, private="skip")(before, make_store(before))
    step = GatePass("S", 3, 3, private="skip")(step.graph, step.params)
    assert text(step.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.shared (%2)               # S D E
        %4 = skip 3 (%3)                            # S D
        %5 = block 3 w=b3.shared (%3)               # S D E
        %6 = gate S w=gate.S.b3 (%5, %4)            # S
        %7 = gate D w=gate.D.b3 (%5, %4)            # D
        S = head (%6)
        D = head (%7)
        E = head (%5)
    """)
    with torch.no_grad():
        step.params["gate.D.b3"].logits.copy_(torch.tensor([0.0, 1.0]))  # D prefers skipping; S is tied -> execute
    hard = HardenPass()(step.graph, step.params)
    assert text(hard.graph) == dedent("""
        %0 = input                                  # S D E
        %1 = block 0 w=b0.shared (%0)               # S D E
        %2 = block 1 w=b1.shared (%1)               # S D E
        %3 = block 2 w=b2.shared (%2)               # S D E
        %4 = block 3 w=b3.shared (%3)               # S E
        %5 = skip 3 (%3)                            # D
        S = head (%4)
        D = head (%5)
        E = head (%4)
    """)


def test_cse_golden_tasks_with_identical_nodes_share() -> None:
    before = graph("""
        %0 = input
        %1 = block 0 w=b0.shared (%0)
        %2 = block 0 w=b0.shared (%0)
        %3 = block 1 w=b1.shared (%1)
        %4 = block 1 w=b1.shared (%2)
        %5 = block 2 w=b2.S (%3)
        %6 = block 2 w=b2.D (%4)
        %7 = block 3 w=b3.shared (%5)
        %8 = block 3 w=b3.shared (%6)
        S = head (%7)
        D = head (%8)
    """)
    result = CSEPass()(before, make_store(before))
    assert text(result.graph) == dedent("""
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        %3 = block 2 w=b2.S (%2)                    # S
        %4 = block 2 w=b2.D (%2)                    # D
        %5 = block 3 w=b3.shared (%3)               # S
        %6 = block 3 w=b3.shared (%4)               # D
        S = head (%5)
        D = head (%6)
    """)
    assert result.changed and result.lineage.entries == () and result.lineage.dropped == ()


def test_dce_golden_drops_nodes_and_weights() -> None:
    before = graph("""
        %0 = input
        %1 = block 0 w=b0.shared (%0)
        %2 = block 1 w=b1.shared (%1)
        %3 = block 1 w=b1.X (%1)
        %4 = block 2 w=b2.shared (%2)
        %5 = block 3 w=b3.shared (%4)
        %6 = block 3 w=b3.Y (%4)
        S = head (%5)
        D = head (%5)
    """)
    params = make_store(before)
    result = DCEPass()(before, params)
    assert text(result.graph) == dedent("""
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        %3 = block 2 w=b2.shared (%2)               # S D
        %4 = block 3 w=b3.shared (%3)               # S D
        S = head (%4)
        D = head (%4)
    """)
    assert result.lineage.dropped == ("b1.X", "b3.Y")
    assert result.params.keys() == ["b0.shared", "b1.shared", "b2.shared", "b3.shared", "head.S", "head.D"]


_STABILITY_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from passes_support import TASKS, make_store, text
from mtgraph.ir import one_net
from mtgraph.passes import run_passes
g = one_net(4, TASKS)
r = run_passes(g, make_store(g), "split{block=1,groups=S+E/D},skip{task=E,block=3},gate{task=D,start=2,end=3},"
               "harden{threshold=0.9},fuse{tasks=S+E,block=1},cse,dce")
print(text(r.graph))
print(r.lineage)
"""


def test_printed_text_is_stable_within_a_run() -> None:
    """Rebuilding the same pipeline from scratch prints the same text and lineage."""
    from mtgraph.passes import run_passes

    runs = []
    for _ in range(2):
        g = one_net(4, TASKS)
        r = run_passes(g, make_store(g), "split{block=1,groups=S+E/D},skip{task=E,block=3},gate{task=D,start=2,end=3},harden")
        runs.append((text(r.graph), str(r.lineage)))
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_printed_text_is_stable_across_runs() -> None:
    """Same pipeline, two interpreters with different hash seeds: identical text and lineage."""
    here = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parent.parent)
    runs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        runs.append(subprocess.Popen([sys.executable, "-c", _STABILITY_SCRIPT, here], stdout=subprocess.PIPE, text=True, env=env))
    texts = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert texts[0] == texts[1]
    assert "%8 = skip 3 (%4)                            # E" in texts[0]
    assert "b2.D-2 <- fresh" in texts[0]  # the private key's group_key name b2.D was taken: suffixed
