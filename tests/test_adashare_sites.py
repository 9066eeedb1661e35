"""BatchNorm statistics per call site for weights called from several IR nodes (AdaShare after divergence).

They live in the ParamStore as site modules; compile, save/load, checkpoints and ONNX export carry them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.exporters import export_onnx
from mtgraph.ir.canonical import canonicalize, renumber
from mtgraph.ir.sites import call_site_ids
from mtgraph.strategies.adashare import gated_blocks, harden_policy, recalibrate, shared_bn_sites
from mtgraph.zoo import resnet_tiny

TASKS = ("seg", "normals", "depth")


@pytest.fixture(scope="module")
def hardened() -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(4), torch.randn(2, 3, 32, 32))
    gated, _ = gated_blocks(backbone)
    u = torch.ones(3, len(gated), dtype=torch.bool)
    u[0, gated.index(1)] = False  # seg diverges at block 1 ...
    u[1, gated.index(3)] = False  # ... normals at block 3 (a projection: its shortcut BN is shared too)
    heads = {t: nn.Conv2d(backbone.output_shape[0], 2, 1) for t in TASKS}
    graph, params, _ = harden_policy(backbone, heads, TASKS, gated, u)
    return graph, params


def _bns(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _reordered(graph: mtgraph.MTGraph) -> mtgraph.MTGraph:
    """The same graph in another valid order: a topological sort taking the newest ready node first (heads last, in task order)."""
    users: dict[int, list[int]] = {i: [] for i in range(len(graph.nodes))}
    pending = {i: len(node.srcs) if hasattr(node, "srcs") else 0 for i, node in enumerate(graph.nodes)}
    for i, node in enumerate(graph.nodes):
        for src in getattr(node, "srcs", ()):
            users[src].append(i)
    ready, order = [i for i, n in pending.items() if n == 0], []
    while ready:
        i = max(ready, key=lambda k: (1, k) if not isinstance(graph.nodes[k], mtgraph.ir.Head) else (0, -k))
        ready.remove(i)
        order.append(i)
        for user in users[i]:
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    mapping = {old: new for new, old in enumerate(order)}
    return mtgraph.MTGraph(tuple(renumber(graph.nodes[i], mapping) for i in order))


def _sited(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, seed: int = 1) -> mtgraph.ParamStore:
    """A store with per-site statistics recalibrated on random images (the store given is not touched)."""
    store = params.with_site_statistics(graph, every_site=True)
    torch.manual_seed(seed)
    recalibrate(mtgraph.compile(graph, store), [torch.randn(16, 3, 32, 32) * 2 + 0.5])
    return store


def _outputs(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return mtgraph.compile(graph, params).eval()(x)


def test_each_call_site_gets_its_own_buffers_and_shares_parameters(hardened) -> None:
    graph, params = hardened
    store = params.with_site_statistics(graph)
    module = mtgraph.compile(graph, store)
    calls = [n for n in module.graph.nodes if n.op == "call_module"]
    seen_buffers: set[int] = set()
    for node in calls:
        for bn in _bns(module.get_submodule(str(node.target))):
            assert id(bn.running_mean) not in seen_buffers, node.name
            seen_buffers.add(id(bn.running_mean))
    # Parameters are the store's own tensors: nothing is copied, 1x backbone.
    store_params = {id(p) for _, m in params.items() for p in m.parameters()}
    assert {id(p) for p in module.parameters()} <= store_params
    assert sum(p.numel() for p in module.parameters()) == mtgraph.cost(graph, store).total_params
    # Every block call site (a Block, or a projection Skip) beyond the first of its key reuses buffers.
    sites = [n for n in graph.nodes if isinstance(n, mtgraph.ir.Block) or (isinstance(n, mtgraph.ir.Skip) and n.weights)]
    assert shared_bn_sites(graph, params) == len(sites) - len({n.weights for n in sites}) == 13
    # Only keys with several call sites got site modules; the old store has none.
    multi = {n.weights for n in sites if sum(m.weights == n.weights for m in sites) > 1}
    assert {key for (key, _), _ in store.site_items()} == multi
    assert params.site_items() == []


def test_site_ids_do_not_depend_on_node_order(hardened) -> None:
    graph, _ = hardened
    canonical = _reordered(graph)
    assert canonical.nodes != graph.nodes and canonicalize(canonical).nodes == graph.nodes
    ids, canonical_ids = call_site_ids(graph), call_site_ids(canonical)
    assert sorted(ids) == sorted(canonical_ids)
    assert len(set(ids)) == len(ids)  # cse-merged graph: every node computes something different
    parsed = mtgraph.parse_graph(mtgraph.print_graph(graph))
    assert call_site_ids(parsed) == ids


def test_recalibrated_sites_match_batch_statistics(hardened) -> None:
    graph, params = hardened
    torch.manual_seed(1)
    x = torch.randn(64, 3, 32, 32) * 2 + 0.5
    plain = mtgraph.compile(graph, params)
    with torch.no_grad():
        reference = plain.train()(x)  # batch statistics everywhere (running stats are not used)
    store = params.with_site_statistics(graph, every_site=True)
    module = mtgraph.compile(graph, store)
    assert recalibrate(module, [x]) == 1
    with torch.no_grad():
        out = module.eval()(x)

    def error(outputs: dict[str, torch.Tensor]) -> float:
        return max(float((outputs[t] - reference[t]).abs().max() / reference[t].abs().max()) for t in TASKS)

    # Not exact: running variances are unbiased, batch normalisation uses the biased one.
    assert error(out) < 0.01
    # The statistics live in the store: a fresh compile of it computes the same thing.
    fresh = _outputs(graph, store, x)
    assert all(torch.equal(fresh[t], out[t]) for t in TASKS)
    # One set of statistics shared by every site cannot do this.
    recalibrate(plain, [x])
    with torch.no_grad():
        mixed = plain.eval()(x)
    assert error(mixed) > 0.1


def test_every_site_leaves_the_original_store_untouched(hardened) -> None:
    graph, params = hardened
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in params.items()}
    store = params.with_site_statistics(graph, every_site=True)
    recalibrate(mtgraph.compile(graph, store), [torch.randn(4, 3, 32, 32) + 3])
    for key, module_ in params.items():
        for name, tensor in module_.state_dict().items():
            assert torch.equal(tensor, before[key][name]), (key, name)
    # ... and no module of the original store is called by the new one, so eval() cannot reach it.
    for _, m in params.items():
        m.train()
    mtgraph.compile(graph, store).eval()
    assert all(bn.training for _, m in params.items() for bn in _bns(m))


def test_save_and_load_keep_every_sites_statistics(hardened, tmp_path) -> None:
    graph, params = hardened
    store = _sited(graph, params)
    x = torch.randn(4, 3, 32, 32)
    expected = _outputs(graph, store, x)
    folder = mtgraph.save(graph, store, tmp_path / "arch")
    heads = {t: params[mtgraph.ir.head_weights(t)] for t in TASKS}
    loaded_graph, loaded = mtgraph.load(folder, params.backbone, heads)
    assert len(loaded.site_items()) == len(store.site_items())
    got = _outputs(loaded_graph, loaded, x)
    assert all(torch.equal(got[t], expected[t]) for t in TASKS)
    # Without the site statistics the network is a different one: the test above can fail.
    plain = _outputs(graph, params, x)
    assert any(not torch.allclose(plain[t], expected[t]) for t in TASKS)


def test_site_statistics_survive_canonical_reordering(hardened) -> None:
    graph, params = hardened
    store = _sited(graph, params)
    x = torch.randn(4, 3, 32, 32)
    a, b = _outputs(graph, store, x), _outputs(_reordered(graph), store, x)
    assert all(torch.equal(a[t], b[t]) for t in TASKS)


def test_a_rewrite_upstream_drops_the_sites_it_invalidates(hardened) -> None:
    graph, params = hardened
    store = _sited(graph, params)
    other = mtgraph.one_net(params.backbone.num_blocks, TASKS)
    restricted = store.restricted(other)
    # The prefix before the first skip computes the same thing in both graphs and keeps its
    # statistics; every site after the divergence is another computation in One-Net and is dropped.
    common = set(call_site_ids(other)) & set(call_site_ids(graph))
    kept = {site for (_, site), _ in restricted.site_items()}
    assert kept == {site for (_, site), _ in store.site_items() if site in common}
    assert 0 < len(kept) < len(store.site_items())
    dropped = store.updated(add={"b1.shared": params["b1.shared"]})
    assert all(key != "b1.shared" for (key, _), _ in dropped.site_items())


def test_onnx_export_uses_the_sites_statistics(hardened, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    graph, params = hardened
    store = _sited(graph, params)
    x = torch.randn(2, 3, 32, 32)
    expected = _outputs(graph, store, x)
    result = export_onnx(graph, store, tmp_path / "m.onnx")  # checks parity against compile(graph, store)
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))
    for t in TASKS:
        assert torch.allclose(torch.from_numpy(outputs[t]), expected[t], atol=1e-4)


def test_checkpoint_round_trip_keeps_sites(hardened, tmp_path) -> None:
    from mtgraph.persist import load_state_tensors, state_tensors

    graph, params = hardened
    store = _sited(graph, params)
    tensors, aliases = state_tensors(store.restricted(graph))
    assert any("@" in name for name in tensors)
    fresh = mtgraph.ParamStore.create(graph, params.backbone, {t: params[mtgraph.ir.head_weights(t)] for t in TASKS})
    load_state_tensors(fresh, tensors, aliases, origin="memory")
    x = torch.randn(2, 3, 32, 32)
    a, b = _outputs(graph, store, x), _outputs(graph, fresh, x)
    assert all(torch.equal(a[t], b[t]) for t in TASKS)
    # A site of a key the architecture does not have is refused, naming it.
    bad = dict(tensors)
    bad["nope@0123456789ab/bn1.running_mean"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match="nope@0123456789ab"):
        load_state_tensors(mtgraph.ParamStore.create(graph, params.backbone, {t: params[mtgraph.ir.head_weights(t)] for t in TASKS}),
                           bad, aliases, origin="memory")


def test_recalibration_needs_data(hardened) -> None:
    graph, params = hardened
    with pytest.raises(ConfigError, match="at least one batch"):
        recalibrate(mtgraph.compile(graph, params.with_site_statistics(graph, every_site=True)), [])
