"""Zoo backbones on the command line are cut as in Python, keep their module names, and load local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtgraph
from mtgraph.cli import main
from mtgraph.errors import ConfigError
from mtgraph.zoo import resolve_model

X = torch.zeros(1, 3, 32, 32)


def _rows(backbone: mtgraph.Backbone) -> list[tuple[str, object]]:
    return [(block.name, block.signature.outputs) for block in backbone.blocks]


def test_cli_and_python_cut_resnet18_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    torchvision = pytest.importorskip("torchvision")
    whole = mtgraph.trace(torchvision.models.resnet18(), X)
    features = mtgraph.trace(resolve_model("torchvision:resnet18"), X)   # what `mtgraph inspect` traces
    # The same blocks, under the same names, with the same shapes; the classifier is the one block dropped.
    assert _rows(features) == _rows(whole)[:-1] and whole.blocks[-1].name == "avgpool..fc"
    assert [b.name for b in features.blocks] == ["conv1..maxpool"] + [f"layer{s}.{k}" for s in (1, 2, 3, 4) for k in (0, 1)]
    assert main(["inspect", "torchvision:resnet18", "--input-size", "3,32,32"]) == 0
    out = capsys.readouterr().out
    for block in features.blocks:
        assert f" {block.name} " in out
    assert "avgpool" not in out


def test_timm_feature_extractors_keep_their_module_names() -> None:
    timm = pytest.importorskip("timm")
    model = resolve_model("timm:resnet18")
    reference = timm.create_model("resnet18", pretrained=False)
    assert not any(name.startswith("inner.") for name in model.state_dict())
    assert set(model.state_dict()) == set(reference.state_dict()) - {"fc.weight", "fc.bias"}
    reference.load_state_dict(model.state_dict(), strict=False)
    reference.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(X), reference.forward_features(X))
    assert [b.name for b in mtgraph.trace(model, X).blocks][:2] == ["conv1..maxpool", "layer1.0"]


def test_weights_from_a_classifier_state_dict_and_from_safetensors(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")                  # the whole classifier's weights
    model = resolve_model("torchvision:resnet18", weights=tmp_path / "resnet18.pth")
    assert torch.equal(model.state_dict()["layer4.1.bn2.running_var"], source.state_dict()["layer4.1.bn2.running_var"])
    features = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(features, str(tmp_path / "features.safetensors"))                   # the feature extractor's weights
    again = resolve_model("torchvision:resnet18", weights=tmp_path / "features.safetensors")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in features.items())


def test_weight_files_that_do_not_fit_or_run_code_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(resolve_model("resnet_tiny_w4").state_dict(), tmp_path / "w4.pt")
    with pytest.raises(ConfigError, match="does not fit the model"):
        resolve_model("resnet_tiny_w8", weights=tmp_path / "w4.pt")
    torch.save({"weights": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "pickled_module.pt")   # a whole module: pickled code
    with pytest.raises(ConfigError, match="weights_only=True"):
        resolve_model("resnet_tiny_w4", weights=tmp_path / "pickled_module.pt")
    assert main(["inspect", "resnet_tiny_w8", "--weights", str(tmp_path / "w4.pt")]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert main(["inspect", "resnet_tiny_w4", "--input-size", "3,32,32", "--weights", str(tmp_path / "w4.pt")]) == 0



def test_learn_takes_pretrained_backbone_weights(tmp_path: Path) -> None:
    from mtgraph import workflow
    from mtgraph.cli import build_parser
    from mtgraph.spec import ModelSpec, TaskSpec

    pretrained = resolve_model("resnet_tiny_w4")
    with torch.no_grad():
        for tensor in pretrained.parameters():
            tensor.fill_(0.01)   # unlike any seeded initialisation
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    args = build_parser().parse_args(["learn", "--model", "resnet_tiny_w4", "--weights", str(tmp_path / "pretrained.pt")])
    options = workflow.LearnOptions.from_args(args)
    assert options.weights == tmp_path / "pretrained.pt"
    assert workflow._run_options(options)["weights"] == str(tmp_path / "pretrained.pt")   # a resume must match it
    assert "weights" not in workflow._run_options(workflow.LearnOptions())   # runs recorded before still resume
    spec = ModelSpec("resnet_tiny_w4", (3, 16, 16), (TaskSpec("depth", "depth"),))
    backbone = spec.build_backbone(weights=options.weights)   # what learn builds
    assert all(torch.all(p == 0.01) for block in backbone.blocks for p in block.module.parameters())
    assert not all(torch.all(p == 0.01) for p in spec.build_backbone().blocks[0].module.parameters())
