"""The encoder-decoder MTSL example runs end to end on a tiny budget and writes its architecture and numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import mtgraph

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "unet_mtsl.py"


@pytest.mark.slow
def test_example_learns_on_ten_locations_with_skip_connections(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("unet_mtsl_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    numbers = module.main(["--out", str(out), "--size", "32", "--width", "4", "--train", "8", "--val", "4",
                           "--epochs", "0.5"])
    # The paper's setting: ten locations, six in the encoder and four in the decoder; decoder levels carry skips.
    names = [name for _, name, _ in numbers["locations"]]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "context", "up1", "up2", "up3", "up4"]
    assert [arity for _, _, arity in numbers["locations"]] == [1, 1, 2, 3, 4, 4, 3, 2, 1, 1]
    assert [row["block"] for row in numbers["tree"]] == list(range(10))
    assert numbers["decoder_decisions"] > 0  # MTSL compared task nodes inside the decoder
    costs = numbers["cost"]
    assert costs["One-Net"]["gmac"] <= costs["MTSL"]["gmac"] <= costs["STN"]["gmac"]
    graph = mtgraph.parse_graph((out / "architecture" / "architecture.mtir").read_text())
    assert graph.tasks == ("seg", "depth", "edges", "normals", "autoencoder")
    assert json.loads((out / "results.json").read_text())["tree"] == numbers["tree"]
    diagram = Path(numbers["diagram"])
    assert diagram.is_file() and diagram.stat().st_size > 0
