"""`mtgraph.open`: a saved folder reopens without the caller's modules, from its factory (model.json) or from its
self-contained program (torch.export), bit for bit; and every saved folder has a model card."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mtgraph
from mtgraph.card import CARD_FILE
from mtgraph.errors import CheckpointError
from mtgraph.spec import SPEC_FILE, ModelSpec, TaskSpec

ROOT = Path(__file__).resolve().parents[1]

#: A user's own code: a torchvision ResNet-18 wrapped in the user's class, and the user's head class.
USER_CODE = textwrap.dedent('''
    import torch
    from torch import nn
    from torchvision.models import resnet18


    class MyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            net = resnet18()
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

        def forward(self, x):
            return self.layer3(self.layer2(self.layer1(self.stem(x))))


    class MyHead(nn.Module):
        def __init__(self, channels, outputs):
            super().__init__()
            self.conv = nn.Conv2d(channels, 16, 3, padding=1)
            self.norm = nn.BatchNorm2d(16)
            self.out = nn.Conv2d(16, outputs, 1)

        def forward(self, x):
            return self.out(torch.relu(self.norm(self.conv(x))))
''')

#: Run in a fresh interpreter: reopen the folder, run it, write the outputs. The user's module is not importable.
CHILD = textwrap.dedent('''
    import sys
    import torch
    import mtgraph
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    folder, images, out = sys.argv[1:4]
    opened = mtgraph.open(folder)
    with torch.no_grad():
        outputs = opened.network(load_file(images)["x"])
    save_file({task: value.contiguous() for task, value in outputs.items()}, out)
    assert "user_model" not in sys.modules, "the user's code was imported"
    print(opened.source)
''')


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A torchvision-based model of the user's own classes, trained a step, saved from Python without a factory.

    Returns the folder, the input file and the outputs of the saved network (eval mode).
    """
    pytest.importorskip("torchvision")
    base = tmp_path_factory.mktemp("user")
    (base / "code").mkdir()
    (base / "code" / "user_model.py").write_text(USER_CODE)
    sys.path.insert(0, str(base / "code"))
    try:
        import user_model  # the user's code: imported here, in the saving process only
    finally:
        sys.path.remove(str(base / "code"))
    # The child process computes on one thread; so does this one (a convolution's reduction order, hence its
    # last bits, depends on the thread count).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = mtgraph.trace(user_model.MyEncoder(), torch.zeros(1, 3, 32, 32))
    heads = {"seg": user_model.MyHead(256, 3), "depth": user_model.MyHead(256, 1)}
    groups = [[["seg", "depth"]]] * (backbone.num_blocks - 2) + [[["seg"], ["depth"]]] * 2
    graph = mtgraph.from_groups(backbone.num_blocks, ["seg", "depth"], groups)
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    network = mtgraph.compile(graph, params)
    # One training step so running statistics and weights are not the initial ones.
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    outputs = network(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    (outputs["seg"].mean() + outputs["depth"].mean()).backward()
    optimizer.step()
    folder = mtgraph.save(graph, params, base / "arch")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, str(base / "images.safetensors"))
    network.eval()
    with torch.no_grad():
        expected = {task: value.clone() for task, value in network(x).items()}
    return folder, base / "images.safetensors", expected


def test_a_model_of_user_code_reopens_bit_identical_in_a_fresh_process(user_folder, tmp_path: Path) -> None:
    folder, images, expected = user_folder
    assert (folder / "program" / "program.json").is_file() and not (folder / SPEC_FILE).exists()
    out = tmp_path / "outputs.safetensors"
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(images), str(out)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                                       "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "program"
    got = load_file(str(out))
    assert set(got) == set(expected)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task   # bit for bit: the same ATen ops on the same weights


def test_the_program_holds_no_weights_and_no_pickles(user_folder) -> None:
    folder, _, _ = user_folder
    index = json.loads((folder / "program" / "program.json").read_text())
    archives = [folder / "program" / block["file"] for block in index["blocks"]]
    archives += [folder / "program" / head["file"] for head in index["heads"].values()]
    weights = (folder / "weights.safetensors").stat().st_size
    assert sum(path.stat().st_size for path in archives) < weights / 4   # structure only; the values are in weights
    for path in archives:
        with zipfile.ZipFile(path) as archive:
            sample = [i for i in archive.infolist() if i.filename.endswith("sample_inputs/model.pt")]
            assert all(info.file_size == 0 for info in sample)


def test_a_tampered_archive_is_refused_before_torch_reads_it(user_folder, tmp_path: Path) -> None:
    import shutil

    folder, _, _ = user_folder
    copy = tmp_path / "arch"
    shutil.copytree(folder, copy)
    archive = copy / "program" / "block_00.pt2"
    with zipfile.ZipFile(archive) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(archive, "w") as target:
        for info, data in entries:
            payload = b"pickled payload" if info.filename.endswith("sample_inputs/model.pt") else data
            target.writestr(info, payload)
    with pytest.raises(CheckpointError, match="pickled sample inputs"):
        mtgraph.open(copy)


def test_a_factory_built_backbone_records_its_spec_and_reopens_from_it(tmp_path: Path) -> None:
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32), (TaskSpec("seg", "segmentation", {"num_classes": 3}),
                                                      TaskSpec("depth", "depth")))
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    graph = mtgraph.from_groups(backbone.num_blocks, list(tasks), [[["seg", "depth"]]] * 6 + [[["seg"], ["depth"]]] * 3)
    params = mtgraph.ParamStore.create(graph, backbone, spec.build_heads(backbone, tasks))
    with torch.no_grad():
        for tensor in params["b8.seg"].parameters():
            tensor.add_(0.5)   # weights that differ from the factory's fresh ones
    folder = mtgraph.save(graph, params, tmp_path / "arch")
    assert ModelSpec.load(folder) == spec and not (folder / "program").exists()
    graph2, params2, network = opened = mtgraph.open(folder)
    assert opened.source == "factory" and graph2 == graph
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = mtgraph.compile(graph, params).eval()(x)
        got = network(x)
    assert all(torch.equal(got[t], expected[t]) for t in expected)


def test_the_model_card_says_what_the_network_is(user_folder) -> None:
    folder, _, expected = user_folder
    card = (folder / CARD_FILE).read_text()
    assert "# Multi-task network: seg, depth" in card
    assert "`[N, 3, 32, 32]`, float32" in card and "normalisation: not recorded" in card
    assert f"| seg | [{', '.join(map(str, expected['seg'].shape[1:]))}] |" in card
    assert f"| depth | [{', '.join(map(str, expected['depth'].shape[1:]))}] |" in card
    assert "mtgraph.open(" in card and "`program/`" in card and "depth = head (" in card


def test_a_readme_of_the_users_is_never_replaced(tmp_path: Path) -> None:
    problem = mtgraph.toy_problem()
    graph = mtgraph.one_net(problem.backbone.num_blocks, list(problem.task_names))
    params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
    (tmp_path / CARD_FILE).write_text("# my experiment notes\n")
    mtgraph.save(graph, params, tmp_path, program=False)
    assert (tmp_path / CARD_FILE).read_text() == "# my experiment notes\n"


def test_open_refuses_folders_it_cannot_rebuild_and_points_at_the_architecture(tmp_path: Path) -> None:
    problem = mtgraph.toy_problem()
    graph = mtgraph.one_net(problem.backbone.num_blocks, list(problem.task_names))
    params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
    mtgraph.save(graph, params, tmp_path / "run" / "architecture", program=False)
    with pytest.raises(CheckpointError, match="neither model.json nor program/"):
        mtgraph.open(tmp_path / "run" / "architecture")
    with pytest.raises(CheckpointError, match="did you mean '.*architecture'"):
        mtgraph.open(tmp_path / "run")


def test_the_command_line_works_on_a_folder_saved_without_a_factory(user_folder, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from mtgraph.cli import main

    folder, _, _ = user_folder
    assert main(["cost", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("cost per image of input [3, 32, 32]")
    assert main(["inspect", str(folder)]) == 0
    assert "MyEncoder (from the folder's program): input [N,3,32,32]" in capsys.readouterr().out
    assert main(["export", str(folder), "-o", str(tmp_path / "m.onnx"), "--optimize", "basic"]) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert main(["export", str(folder), "--quantize", "int8", "-o", str(tmp_path / "q.onnx")]) == 2
    assert "records no task kinds" in capsys.readouterr().err


def test_saving_does_not_move_the_random_number_generator(tmp_path: Path) -> None:
    spec = ModelSpec("resnet_tiny_w4", (3, 16, 16), (TaskSpec("depth", "depth"),))
    backbone = spec.build_backbone()
    graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
    params = mtgraph.ParamStore.create(graph, backbone, spec.build_heads(backbone, spec.build_tasks()))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mtgraph.save(graph, params, tmp_path / "arch")   # checks the spec's heads fit, which seeds torch inside
    assert torch.equal(torch.rand(3), expected)
    problem = mtgraph.toy_problem()   # no factory: the program path
    graph = mtgraph.one_net(problem.backbone.num_blocks, list(problem.task_names))
    params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
    torch.manual_seed(123)
    mtgraph.save(graph, params, tmp_path / "toy")
    assert (tmp_path / "toy" / "program").is_dir() and torch.equal(torch.rand(3), expected)
