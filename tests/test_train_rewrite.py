"""Rewriting the graph mid-training: recompile, keep training, carry optimizer state through the lineage."""

from __future__ import annotations

import pytest
import torch
import train_run as run  # noqa: E402 - tests/scripts is put on sys.path by conftest.py

from mtgraph.errors import TrainError
from mtgraph.ir import one_net
from mtgraph.passes import FusePass, Lineage, LineageEntry
from mtgraph.train import Hook, OptimizerGroup, Rewrite, TrainState, adam, as_lineage, fit, sgd


@pytest.fixture(scope="module")
def tasks():
    return run.build_tasks()


class Snapshot(Hook):
    """At every epoch end, copies each parameter's optimizer state by name, and the Parameter objects."""

    def __init__(self, label: str):
        self.label = label
        self.states: list[dict[str, dict[str, torch.Tensor]]] = []
        self.params: list[dict[str, torch.nn.Parameter]] = []

    @property
    def name(self):
        return f"Snapshot_{self.label}"

    def on_epoch_end(self, state: TrainState):
        named = {f"{k}/{n}": p for k, m in state.params.restricted(state.graph).items() for n, p in m.named_parameters()}
        optimizer = state.optimizers["main"]
        self.states.append({name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in named.items() if p in optimizer.state})
        self.params.append(named)
        return None


def test_split_at_epoch_end_recompiles_keeps_training_and_carries_optimizer_state(tasks):
    graph, params = run.build_model(tasks, seed=0)
    before, after = Snapshot("before"), Snapshot("after")
    result = fit(graph, params, tasks, run.build_data(24, seed=1), epochs=3, batch_size=8, optimizer=adam(2e-3),
                 hooks=[before, run.SplitHook(epoch=0), after], seed=0, device="cpu")
    old, new = before.states[0], after.states[0]
    # Unchanged weights keep their Parameter objects and exactly their Adam moments.
    unchanged = [n for n in old if n.startswith(("b0.shared/", "head."))]
    assert len(unchanged) == len([n for n in new if n.startswith(("b0.shared/", "head."))]) > 0
    for name in unchanged:
        assert before.params[0][name] is after.params[0][name]
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(new[name][k], old[name][k]), (name, k)
    # Each copy of a split block starts from its source's state (its own tensors).
    for b in (1, 2):
        pnames = [n.split("/", 1)[1] for n in old if n.startswith(f"b{b}.shared/")]
        assert len(pnames) == 4  # conv weight and bias, BatchNorm weight and bias
        for part in ("seg", "depth+normals"):
            for pname in pnames:
                copied, source = new[f"b{b}.{part}/{pname}"], old[f"b{b}.shared/{pname}"]
                for k in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(copied[k], source[k]), (b, part, pname, k)
    first = "blocks.1.0.weight"
    seg_p, rest_p = after.params[0][f"b1.seg/{first}"], after.params[0][f"b1.depth+normals/{first}"]
    assert seg_p is not rest_p
    assert not any(n.startswith(("b1.shared", "b2.shared")) for n in new)
    # Training went on with the split graph: the copies moved apart.
    assert "b1.seg" in result.graph.weight_keys() and "b1.shared" not in result.graph.weight_keys()
    w_seg = dict(result.params["b1.seg"].named_parameters())["blocks.1.0.weight"]
    w_rest = dict(result.params["b1.depth+normals"].named_parameters())["blocks.1.0.weight"]
    assert not torch.equal(w_seg, w_rest)
    assert result.step == 9 and len(result.history.total) == 9
    assert result.history.epochs[0]["rewrites"] == ["split block 1"] and result.history.epochs[1]["rewrites"] == []
    # The compiled module's outputs right after the split equal the One-Net's (copies are exact):
    # the loss curve has no jump beyond normal step-to-step noise.
    assert abs(result.history.total[3] - result.history.total[2]) < 0.5 * result.history.total[2]


class Recompile(Hook):
    """Returns the same graph and a new store holding the same modules, every epoch (a rewrite that keeps keys)."""

    def on_epoch_end(self, state):
        return Rewrite(state.graph, state.params.updated(), {}, note="recompile")


def test_a_rewrite_that_keeps_keys_changes_nothing(tasks):
    data = run.build_data(24, seed=1)
    finals = []
    for hooks in ([], [Recompile()]):
        graph, params = run.build_model(tasks, seed=0, dropout=0.2)
        sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # noqa: E731
        result = fit(graph, params, tasks, data, epochs=3, batch_size=8, optimizer=adam(2e-3), scheduler=sched,
                     hooks=hooks, seed=0, device="cpu")
        finals.append(({k: v.clone() for k, m in result.params.items() for k, v in m.state_dict().items()}, result.history.total))
    (a, la), (b, lb) = finals
    assert la == lb
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_plain_mapping_lineage_averages_fused_state(tasks):
    graph, params = run.build_model(tasks, seed=0)
    rewrite = run.split_rewrite(graph, params, 1, ("seg",))
    lineage = as_lineage(rewrite.lineage, params, rewrite.params)
    assert lineage["b1.seg"].sources == ("b1.shared",) and lineage["b1.seg"].how == "copy"
    assert set(lineage.dropped) == {"b1.shared", "b2.shared"}
    merged = as_lineage({"b1.shared": ["b1.seg", "b1.depth+normals"]}, rewrite.params, params)
    assert merged["b1.shared"].how == "average" and merged["b1.shared"].weights == (0.5, 0.5)
    passthrough = Lineage((LineageEntry("x", (), "fresh"),))
    assert as_lineage(passthrough, params, params) is passthrough
    with pytest.raises(TrainError, match="lineage must be"):
        as_lineage(42, params, params)


class FuseBack(Hook):
    """Splits at the end of epoch 0 (hand-written, dict lineage), fuses back with the fuse pass at the end of epoch 1."""

    def __init__(self):
        self.seen: dict[str, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, state):
        if state.epoch == 0:
            return run.split_rewrite(state.graph, state.params, 2, ("seg",))
        if state.epoch == 1:
            opt = state.optimizers["main"]
            for part in ("seg", "depth+normals"):
                p = dict(state.params[f"b2.{part}"].named_parameters())["blocks.2.0.weight"]
                self.seen[part] = {k: v.clone() for k, v in opt.state[p].items()}
            result = FusePass(tasks=tuple(state.graph.tasks), block=2, init="average")(state.graph, state.params)
            return Rewrite.from_pass(result, note="fuse b2")
        return None


def test_fusing_averages_the_adam_moments_of_the_fused_weights(tasks):
    graph, params = run.build_model(tasks, seed=0)
    hook, after = FuseBack(), Snapshot("after")
    result = fit(graph, params, tasks, run.build_data(16, seed=1), epochs=2, batch_size=8, hooks=[hook, after], device="cpu")
    fused_keys = [k for k in result.graph.weight_keys() if k.startswith("b2.")]
    assert len(fused_keys) == 1
    state = after.states[-1][f"{fused_keys[0]}/blocks.2.0.weight"]
    expected = (hook.seen["seg"]["exp_avg"] + hook.seen["depth+normals"]["exp_avg"]) / 2
    assert torch.allclose(state["exp_avg"], expected, atol=1e-7)
    assert [e["rewrites"] for e in result.history.epochs] == [["split blocks 2.. into ['seg'] / ['depth', 'normals']"], ["fuse b2"]]


class Gates(Hook):
    """Adds a fresh weight at epoch end: the new key must join the optimizer group whose select takes it."""

    def on_epoch_end(self, state):
        if state.epoch != 0:
            return None
        import copy

        graph = one_net(state.params.backbone.num_blocks, state.graph.tasks)
        fresh = copy.deepcopy(state.params["head.seg"])
        for p in fresh.parameters():
            torch.nn.init.zeros_(p)
        params = state.params.updated(add={"head.seg": fresh})
        return Rewrite(graph, params, {"head.seg": []}, note="fresh seg head")


class Membership(Hook):
    """Records which optimizer group holds each parameter of ``head.seg`` after each epoch end."""

    def __init__(self):
        self.owners: list[set[str]] = []

    def on_epoch_end(self, state):
        ids = {id(p) for p in state.params["head.seg"].parameters()}
        self.owners.append({name for name, opt in state.optimizers.items()
                            if opt and any(id(p) in ids for g in opt.param_groups for p in g["params"])})


def test_fresh_weights_join_the_group_that_selects_them(tasks):
    graph, params = run.build_model(tasks, seed=0)
    old_head = params["head.seg"]
    groups = [OptimizerGroup("trunk", lambda k, m: not k.startswith("head."), adam(1e-3)),
              OptimizerGroup("heads", None, sgd(0.01))]
    membership = Membership()
    result = fit(graph, params, tasks, run.build_data(16, seed=1), epochs=2, batch_size=8, groups=groups,
                 hooks=[Gates(), membership], device="cpu")
    head = result.params["head.seg"]
    assert head is not old_head
    assert membership.owners == [{"heads"}, {"heads"}]
    assert any(p.abs().sum() > 0 for p in head.parameters())  # trained after starting at zero
