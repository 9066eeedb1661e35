"""ONNX export: parity with torch, named outputs, shared weights stored once, per-task export, failures."""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.errors import ExportError, IRError
from mtgraph.exporters import INPUT_NAME, export_onnx, initializer_stats, select_tasks
from mtgraph.exporters import onnx as onnx_export
from mtgraph.ir import Block, Gate, Head, Input, MTGraph, from_groups, one_net, parse_graph, stn
from mtgraph.modules import MixGate

TASKS = ("seg", "depth", "cls")


class TinyNet(nn.Module):
    """Three blocks at 32 px: conv-bn-relu stem, a same-shape conv (skippable), a strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))


def make_heads() -> dict[str, nn.Module]:
    return {
        "seg": nn.Conv2d(16, 4, 1),
        "depth": nn.Sequential(nn.Conv2d(16, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1)),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)),
    }


def distinct(params: mtgraph.ParamStore) -> mtgraph.ParamStore:
    """Give every weight key its own values (as after training), BatchNorm statistics included.

    Fresh copies are equal, and the ONNX optimizer merges equal initializers and the compute
    that uses them, which would hide what the tests measure.
    """
    with torch.no_grad():
        for k, (_, module) in enumerate(params.items()):
            torch.manual_seed(100 + k)
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
            for name, b in module.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_(0.0, 0.1)
                elif name.endswith("running_var"):
                    b.uniform_(0.5, 1.5)
    return params


@pytest.fixture(scope="module")
def backbone() -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(TinyNet(), torch.randn(2, 3, 32, 32), cuts="stages")


def build(kind: str, backbone: mtgraph.Backbone) -> tuple[MTGraph, mtgraph.ParamStore]:
    n = backbone.num_blocks
    graphs = {
        "stn": lambda: stn(n, TASKS),
        "one_net": lambda: one_net(n, TASKS),
        "tree": lambda: from_groups(
            n, TASKS, [[list(TASKS)], [["seg", "depth"], ["cls"]], [["seg"], ["depth"], ["cls"]]]
        ),
    }
    graph = graphs[kind]()
    torch.manual_seed(1)
    return graph, distinct(mtgraph.ParamStore.create(graph, backbone, make_heads()))


@pytest.fixture(scope="module")
def exported(backbone, tmp_path_factory):
    """STN, One-Net and a branched tree, each exported once: kind -> (graph, params, result)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in ("stn", "one_net", "tree"):
        graph, params = build(kind, backbone)
        out[kind] = (graph, params, export_onnx(graph, params, folder / f"{kind}.onnx"))
    return out


@pytest.fixture(scope="module")
def exported_plain(backbone, tmp_path_factory):
    """One-Net and STN exported without onnxruntime's optimisation, whose layout rewrite renames the weights:
    their initializers keep the compiled module's names, so the tests can see which weight key each one is."""
    folder = tmp_path_factory.mktemp("onnx_plain")
    out = {}
    for kind in ("stn", "one_net"):
        graph, params = build(kind, backbone)
        out[kind] = (graph, params, export_onnx(graph, params, folder / f"{kind}.onnx", optimize="none"))
    return out


def run_onnx(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: x.numpy()})))


def run_torch(graph, params, x: torch.Tensor) -> dict[str, np.ndarray]:
    module = mtgraph.compile(graph, params).eval()
    with torch.no_grad():
        return {t: v.numpy() for t, v in module(x).items()}


def initializer_names(path) -> list[str]:
    return [i.name for i in onnx.load(str(path)).graph.initializer]


@pytest.mark.parametrize("kind", ["stn", "one_net", "tree"])
@pytest.mark.parametrize("batch", [1, 5])
def test_exported_model_matches_torch_at_any_batch(exported, kind, batch):
    graph, params, result = exported[kind]
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    got, want = run_onnx(result.path, x), run_torch(graph, params, x)
    assert list(got) == list(TASKS)
    for task in TASKS:
        assert got[task].shape == want[task].shape
        np.testing.assert_allclose(got[task], want[task], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["stn", "one_net", "tree"])
def test_export_result_describes_the_file(exported, kind):
    graph, params, result = exported[kind]
    model = onnx.load(str(result.path))
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert [i.name for i in model.graph.input] == [INPUT_NAME] == [result.input_name]
    assert [o.name for o in model.graph.output] == list(TASKS) == list(result.output_names)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert set(result.max_abs_diff) == set(TASKS) and result.worst_diff <= 1e-4
    assert (result.initializer_count, result.initializer_bytes) == initializer_stats(result.path)
    assert result.macs == mtgraph.cost(graph, params).total_macs
    assert result.external_data == ()
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["mtgraph.tasks"] == ",".join(TASKS)
    assert metadata["mtgraph.architecture"] == mtgraph.print_graph(graph)
    # The exporter's debug annotations (stack traces with this machine's paths) are not shipped.
    assert not any(n.metadata_props for n in model.graph.node)
    assert os.sep + "site-packages" not in model.SerializeToString().decode("latin-1")
    leftovers = [name for name in os.listdir(result.path.parent) if not name.endswith(".onnx")]
    assert leftovers == [], "no temporary files may be left beside the model"


def test_shared_block_weights_are_stored_once(exported_plain, exported):
    one, stn_result = exported_plain["one_net"][2], exported_plain["stn"][2]
    one_init = onnx.load(str(one.path)).graph.initializer
    blocks = [t for t in one_init if t.name.startswith(("b0_", "b1_", "b2_"))]
    block_bytes = sum(int(np.prod(t.dims)) * 4 for t in blocks)
    assert blocks and all(t.name.split(".")[0].endswith("_shared") for t in blocks)
    names = [t.name for t in one_init]
    assert len(names) == len(set(names))
    # STN holds one copy of every block per task; One-Net one copy in all.
    duplicated = len(TASKS) - 1
    assert stn_result.initializer_count - one.initializer_count == duplicated * len(blocks)
    assert stn_result.initializer_bytes - one.initializer_bytes == duplicated * block_bytes
    assert one.macs < exported["tree"][2].macs < stn_result.macs
    # onnxruntime's optimised files keep the proportion: STN stores three copies of what One-Net stores once.
    optimised_one, optimised_stn = exported["one_net"][2], exported["stn"][2]
    assert optimised_stn.initializer_bytes - optimised_one.initializer_bytes >= duplicated * block_bytes


def test_per_task_export_has_only_that_task(exported, tmp_path, capfd):
    graph, params, full = exported["tree"]
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        result = export_onnx(graph, params, tmp_path / "depth.onnx", tasks=["depth"], optimize="none")
    assert [str(r.message) for r in records] == []
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", "the exporters' progress lines must not reach the console"
    assert result.output_names == ("depth",)
    assert [o.name for o in onnx.load(str(result.path)).graph.output] == ["depth"]
    assert result.macs < full.macs and result.initializer_bytes < full.initializer_bytes
    assert result.macs == mtgraph.cost(*select_tasks(graph, params, ["depth"])).total_macs
    # Keys off the depth path (b1.cls, b2.seg, b2.cls, the other heads) are not in the file.
    prefixes = {name.split(".")[0] for name in initializer_names(result.path) if "." in name}
    assert prefixes == {"b0_shared", "b1_seg_depth", "b2_depth", "head_depth"}, prefixes
    x = torch.randn(4, 3, 32, 32)
    np.testing.assert_allclose(run_onnx(result.path, x)["depth"], run_torch(graph, params, x)["depth"], atol=1e-4)


def test_select_tasks_keeps_requested_order_and_drops_other_weights(backbone):
    graph, params = build("tree", backbone)
    sub, sub_params = select_tasks(graph, params, ["cls", "seg"])
    assert sub.tasks == ("cls", "seg")
    assert "head.depth" not in sub_params and "b2.depth" not in sub_params
    assert set(sub_params.keys()) == set(sub.weight_keys()) | {"head.cls", "head.seg"}
    with pytest.raises(ExportError, match=r"not in the graph.*\['seg', 'depth', 'cls'\]"):
        select_tasks(graph, params, ["normals"])
    with pytest.raises(ExportError, match="empty"):
        select_tasks(graph, params, [])


ADASHARE_LIKE = """
%0 = input
%1 = block 0 w=b0.shared (%0)
%2 = block 1 w=b1.shared (%1)
%3 = block 1 w=b1.seg (%1)
%4 = skip 1 (%1)
%5 = gate seg w=gate.seg (%2, %3)
%6 = block 2 w=b2.seg (%5)
%7 = block 2 w=b2.shared (%2)
%8 = block 2 w=b2.shared (%4)
seg = head (%6)
depth = head (%7)
cls = head (%8)
"""


def test_weights_called_from_two_sites_and_softmax_gate_export(backbone, tmp_path):
    graph = parse_graph(ADASHARE_LIKE)
    params = distinct(
        mtgraph.ParamStore.create(graph, backbone, make_heads(), gates={"gate.seg": MixGate(2, init_probs=[0.7, 0.3])})
    )
    result = export_onnx(graph, params, tmp_path / "adashare.onnx", optimize="none")
    names = initializer_names(result.path)
    # One weight set for both call sites of b2.shared (different inputs: after block 1, and after its skip).
    assert sorted(n for n in names if n.startswith("b2_shared")) == [
        "b2_shared.layer2.0.bias",
        "b2_shared.layer2.0.weight",
    ]
    x = torch.randn(5, 3, 32, 32)
    got, want = run_onnx(result.path, x), run_torch(graph, params, x)
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], atol=1e-4)


def gated_graph(mode: str, backbone) -> tuple[MTGraph, mtgraph.ParamStore]:
    """A Gate over two Block nodes, built node by node, with a MixGate of ``mode`` added to the store."""
    graph = MTGraph(
        (
            Input(),
            Block(0, "b0.shared", 0),
            Block(1, "b1.shared", 1),
            Block(1, "b1.seg", 1),
            Gate("seg", (2, 3), "gate.seg"),
            Block(2, "b2.seg", 4),
            Block(2, "b2.depth", 2),
            Head("seg", 5),
            Head("depth", 6),
        )
    )
    heads = make_heads()
    base = mtgraph.ParamStore.create(
        graph, backbone, {t: heads[t] for t in ("seg", "depth")}, gates={"gate.seg": MixGate(2)}
    )
    return graph, base.updated(add={"gate.seg": MixGate(2, mode=mode)})


@pytest.mark.parametrize("mode", ["gumbel", "gumbel_st"])
def test_stochastic_gate_is_refused_with_harden_advice(backbone, tmp_path, mode):
    graph, params = gated_graph(mode, backbone)
    with pytest.raises(ExportError, match=r"(?s)gate.seg.*mode '" + mode + r"'.*harden"):
        export_onnx(graph, params, tmp_path / "gated.onnx")
    assert os.listdir(tmp_path) == []
    # Exporting only a task that does not use the gate is fine: the gate is not part of that model.
    sub_graph, _ = select_tasks(graph, params, ["depth"])
    assert not any(isinstance(n, Gate) for n in sub_graph.nodes)


def test_task_named_like_the_input_is_refused_where_tasks_are_named(backbone):
    from mtgraph.ir import RESERVED_TASK_NAMES

    assert INPUT_NAME in RESERVED_TASK_NAMES  # one list: the exporter's input name is reserved in the IR
    with pytest.raises(IRError, match="task name 'input' is reserved"):
        one_net(backbone.num_blocks, ["input", "depth"])


def test_unwritable_or_missing_destination(backbone, tmp_path):
    graph, params = build("one_net", backbone)
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(graph, params, tmp_path / "missing" / "m.onnx")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        export_onnx(graph, params, tmp_path / "afile" / "m.onnx")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ExportError, match="existing folder"):
        export_onnx(graph, params, tmp_path / "adir")
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile"] and os.listdir(tmp_path / "adir") == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_is_refused(backbone, tmp_path):
    graph, params = build("one_net", backbone)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export_onnx(graph, params, locked / "m.onnx")
    finally:
        locked.chmod(0o700)


def test_parity_failure_leaves_the_previous_file_untouched(backbone, tmp_path, monkeypatch):
    graph, params = build("one_net", backbone)

    def corrupting_exporter(module, example, file, **options):
        onnx_export._export_torchscript(module, example, file, **options)
        model = onnx.load(str(file))
        head = next(t for t in model.graph.initializer if t.name == "head_seg.bias")
        head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) + 0.5, head.name))
        onnx.save(model, str(file))

    monkeypatch.setattr(onnx_export, "_EXPORTERS", (("torchscript", corrupting_exporter),))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(ExportError, match=r"tolerance=0\.0001.*seg: 0\.5.*\(over\).*depth: .*cls: ") as info:
        export_onnx(graph, params, target)
    assert "(over)" not in str(info.value).split("depth:")[1].split(",")[0]
    assert os.listdir(tmp_path) == ["model.onnx"] and target.read_bytes() == b"previous model"


def test_legacy_exporter_is_the_fallback_when_dynamo_fails(backbone, tmp_path, monkeypatch):
    graph, params = build("tree", backbone)

    def failing(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(
        onnx_export, "_EXPORTERS", (("dynamo", failing), ("torchscript", onnx_export._export_torchscript))
    )
    result = export_onnx(graph, params, tmp_path / "m.onnx")
    assert result.exporter == "torchscript"
    assert "dynamo cannot trace this" in result.fallback_reason
    x = torch.randn(5, 3, 32, 32)
    got, want = run_onnx(result.path, x), run_torch(graph, params, x)
    assert list(got) == list(TASKS)
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], atol=1e-4)

    monkeypatch.setattr(onnx_export, "_EXPORTERS", (("dynamo", failing), ("torchscript", failing)))
    with pytest.raises(ExportError, match=r"(?s)every exporter.*dynamo exporter: RuntimeError.*torchscript exporter"):
        export_onnx(graph, params, tmp_path / "other.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_static_batch_and_external_data(backbone, tmp_path, monkeypatch):
    """dynamic_batch=False fixes the batch to 1; over the size limit, weights go to <path>.data beside the model."""
    graph, params = build("one_net", backbone)
    monkeypatch.setattr(onnx_export, "_EXTERNAL_DATA_THRESHOLD", 0)  # as if the weights were over 2 GB
    for _, module in params.items():
        module.train()  # export runs in eval mode and gives the modules back as they were
    result = export_onnx(graph, params, tmp_path / "static.onnx", dynamic_batch=False, dynamic_size=False,
                         tasks=["cls"])
    assert all(m.training for _, module in params.items() for m in module.modules())
    dims = onnx.load(str(result.path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32] and not result.dynamic_batch
    assert result.external_data == (tmp_path / "static.onnx.data",)
    assert sorted(os.listdir(tmp_path)) == ["static.onnx", "static.onnx.data"]
    stored = onnx.load(str(result.path), load_external_data=False).graph.initializer
    outside = [t for t in stored if t.data_location == onnx.TensorProto.EXTERNAL]
    assert outside and all(
        e.value == "static.onnx.data" for t in outside for e in t.external_data if e.key == "location"
    )
    x = torch.randn(1, 3, 32, 32)
    np.testing.assert_allclose(run_onnx(result.path, x)["cls"], run_torch(graph, params, x)["cls"], atol=1e-4)


def test_bad_options(backbone, tmp_path):
    graph, params = build("one_net", backbone)
    with pytest.raises(ExportError, match="tolerance"):
        export_onnx(graph, params, tmp_path / "m.onnx", tolerance=-1)
    with pytest.raises(ExportError, match="opset"):
        export_onnx(graph, params, tmp_path / "m.onnx", opset=3)
    with pytest.raises(ExportError, match="ParamStore"):
        export_onnx(graph, {}, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []
