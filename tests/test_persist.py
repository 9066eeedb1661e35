"""save/load: bit-identical reloads, tied weights, and refusal of damaged or hostile weight files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from backbones import make_heads
from safetensors.torch import load_file, save_file

import mtgraph
from mtgraph import CheckpointError, ParamStore, ParseError
from mtgraph.ir import from_groups, parse_graph, print_graph, stn
from mtgraph.persist import ARCH_FILE, WEIGHTS_FILE

SKIP_GATE = """\
%0 = input
%1 = block 0 w=b0.shared (%0)
%2 = block 1 w=b1.shared (%1)
%3 = block 2 w=b2.shared (%2)
%4 = block 3 w=b3.S (%3)
%5 = skip 3 w=b3.E (%3)
%6 = gate D w=gate.D (%4, %5)
%7 = block 4 w=b4.S (%4)
%8 = skip 4 (%5)
%9 = block 4 w=b4.D (%6)
S = head (%7)
E = head (%8)
D = head (%9)
"""


def _eval_outputs(graph: mtgraph.MTGraph, store: ParamStore, x: torch.Tensor) -> dict[str, torch.Tensor]:
    net = mtgraph.compile(graph, store).eval()
    with torch.no_grad():
        return net(x)


def _train_a_little(graph: mtgraph.MTGraph, store: ParamStore, x: torch.Tensor, steps: int = 2) -> None:
    """A few SGD steps in train mode: weights, BatchNorm statistics and num_batches_tracked all change."""
    net = mtgraph.compile(graph, store).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        sum(v.square().mean() for v in net(x).values()).backward()
        optimizer.step()


def _states_equal(a: ParamStore, b: ParamStore) -> bool:
    if a.keys() != b.keys() and sorted(a.keys()) != sorted(b.keys()):
        return False
    for key, module in a.items():
        other = b[key].state_dict()
        for name, tensor in module.state_dict().items():
            if tensor.dtype != other[name].dtype or not torch.equal(tensor, other[name]):
                return False
    return True


@pytest.fixture()
def saved(tmp_path: Path, traced, tasks):
    """A trained Skip/Gate architecture on resnet_basic, saved into tmp_path / "arch"."""
    _, x, backbone = traced("resnet_basic")
    graph = parse_graph(SKIP_GATE)
    heads = make_heads(backbone.output_shape, tasks)
    store = ParamStore.create(graph, backbone, heads, gates={"gate.D": mtgraph.MixGate(2, init_probs=[0.3, 0.7])})
    _train_a_little(graph, store, x)
    folder = mtgraph.save(graph, store, tmp_path / "arch")
    return folder, graph, store, backbone, heads, x


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #


def test_reloaded_network_is_bit_identical(saved) -> None:
    folder, graph, store, backbone, heads, x = saved
    # The IR, the weights, the model card and the program that reopens it without these modules (mtgraph.open).
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", ARCH_FILE, "program", WEIGHTS_FILE]
    assert (folder / ARCH_FILE).read_text() == print_graph(graph)
    bn = store["b0.shared"].get_submodule("bn1")
    assert bn.num_batches_tracked.item() == 2
    graph2, store2 = mtgraph.load(folder, backbone, heads)
    assert graph2 == graph
    assert _states_equal(store, store2)  # num_batches_tracked, running statistics and gate logits included
    assert store2["b0.shared"].get_submodule("bn1").num_batches_tracked.item() == 2
    expected, got = _eval_outputs(graph, store, x), _eval_outputs(graph2, store2, x)
    for task in graph.tasks:
        assert torch.equal(got[task], expected[task]), task
    gate = store2["gate.D"]
    assert isinstance(gate, mtgraph.MixGate) and gate.mode == "softmax"
    assert torch.equal(gate.logits, store["gate.D"].logits)
    reopened = mtgraph.open(folder)   # from the program: skips and gates included
    assert reopened.source == "program" and reopened.graph == graph
    with torch.no_grad():
        got = reopened.network(x)
    for task in graph.tasks:
        assert torch.equal(got[task], expected[task]), task


@pytest.mark.parametrize("name", ["tied", "twice_called"])
def test_tied_weights_stay_tied_and_are_stored_once(name: str, tmp_path: Path, traced, tasks) -> None:
    _, x, backbone = traced(name)
    graph = stn(backbone.num_blocks, tasks)
    heads = make_heads(backbone.output_shape, tasks)
    store = ParamStore.create(graph, backbone, heads)
    first, second = (b.index for b in backbone.blocks if b.name.split("#")[0] in ("shared", "block"))
    tied_keys = (f"b{first}.S", f"b{second}.S")
    _train_a_little(graph, store, x, steps=1)
    mtgraph.save(graph, store, tmp_path)
    stored = load_file(str(tmp_path / WEIGHTS_FILE))
    assert not any(k.startswith(tied_keys[1] + "/") for k in stored)  # the second call's tensors are aliases
    graph2, store2 = mtgraph.load(tmp_path, backbone, heads)
    a, b = (dict(store2[k].named_parameters()) for k in tied_keys)
    assert a.keys() == b.keys() and all(a[n] is b[n] for n in a)  # still one tensor after loading
    expected, got = _eval_outputs(graph, store, x), _eval_outputs(graph2, store2, x)
    assert all(torch.equal(got[t], expected[t]) for t in tasks)


def test_tree_round_trip_keeps_train_mode_results(tmp_path: Path, traced, tasks) -> None:
    _, x, backbone = traced("mobilenet_v2")
    graph = from_groups(7, tasks, [[list(tasks)]] * 4 + [[["S", "E"], ["D"]]] * 2 + [[[t] for t in tasks]])
    heads = make_heads(backbone.output_shape, tasks)
    store = ParamStore.create(graph, backbone, heads)
    _train_a_little(graph, store, x)
    mtgraph.save(graph, store, tmp_path)
    graph2, store2 = mtgraph.load(tmp_path, backbone, heads)
    nets = [mtgraph.compile(g, s).train() for g, s in ((graph, store), (graph2, store2))]
    outs = [net(x) for net in nets]  # train mode: batch statistics, and running stats updated alike
    assert all(torch.equal(outs[0][t], outs[1][t]) for t in tasks)
    assert _states_equal(store, store2)


# --------------------------------------------------------------------------- #
# Damaged and hostile files
# --------------------------------------------------------------------------- #


def test_wrong_tensor_shape_is_a_checkpoint_error(saved) -> None:
    folder, _, _, backbone, heads, _ = saved
    path = folder / WEIGHTS_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors["b1.shared/layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"tensor 'b1.shared/layer1\.0\.conv1\.weight' has shape \[8, 8, 1, 1\] but the model expects \[8, 8, 3, 3\]"):
        mtgraph.load(folder, backbone, heads)


def test_missing_and_extra_tensors_are_checkpoint_errors(saved) -> None:
    folder, _, _, backbone, heads, _ = saved
    path = folder / WEIGHTS_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    extra = {**tensors, "b9.S/w": torch.zeros(1)}
    save_file(extra, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"tensors \['b9.S/w'\] do not belong to this architecture"):
        mtgraph.load(folder, backbone, heads)
    del tensors["head.E/0.weight"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"tensor 'head.E/0.weight' is missing"):
        mtgraph.load(folder, backbone, heads)


def test_truncated_file_is_a_checkpoint_error(saved) -> None:
    folder, _, _, backbone, heads, _ = saved
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    for size in (len(data) // 2, 100, 4):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            mtgraph.load(folder, backbone, heads)


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_renamed_to_weights_is_refused_without_running_it(saved, tmp_path: Path) -> None:
    folder, _, _, backbone, heads, _ = saved
    marker = tmp_path / "pickle-was-executed"
    payload = pickle.dumps({"b0.shared/layer1.0.conv1.weight": _Payload(marker)})
    # The payload is live: unpickling it elsewhere does create the marker.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    (folder / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(CheckpointError):
        mtgraph.load(folder, backbone, heads)
    assert not marker.exists()
    # A torch.save zip archive (pickle inside) is refused as well.
    torch.save({"weights": _Payload(marker)}, folder / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        mtgraph.load(folder, backbone, heads)
    assert not marker.exists()


def test_foreign_safetensors_file_is_refused(saved) -> None:
    folder, _, _, backbone, heads, _ = saved
    save_file({"weight": torch.zeros(2)}, str(folder / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="is not an mtgraph weight file"):
        mtgraph.load(folder, backbone, heads)


def test_missing_files_and_bad_text(saved) -> None:
    folder, _, _, backbone, heads, _ = saved
    (folder / ARCH_FILE).write_text("%0 = input\n%1 = blocc 0 w=b0.S (%0)\n")
    with pytest.raises(ParseError, match="line 2"):
        mtgraph.load(folder, backbone, heads)
    (folder / ARCH_FILE).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        mtgraph.load(folder, backbone, heads)
    (folder / ARCH_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{ARCH_FILE}' does not exist"):
        mtgraph.load(folder, backbone, heads)
    with pytest.raises(CheckpointError, match="does not exist"):
        mtgraph.load(folder / "nowhere", backbone, heads)


def test_saved_files_get_the_umask_permissions_not_mkstemps(saved) -> None:
    import os
    import stat

    folder = saved[0]
    old = os.umask(0o027)
    try:
        mtgraph.save(saved[1], saved[2], folder)
    finally:
        os.umask(old)
    for name in (ARCH_FILE, WEIGHTS_FILE):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o640, name


def test_an_oversized_architecture_file_is_refused_before_it_is_read(saved, monkeypatch) -> None:
    import mtgraph.persist as persist

    folder = saved[0]
    monkeypatch.setattr(persist, "MAX_TEXT_CHARS", 10)
    read = []
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self) or "")
    with pytest.raises(CheckpointError, match="over the IR text limit"):
        mtgraph.load(folder, saved[2].backbone, {})
    assert read == []
