"""Bring your own backbone: a model written here, traced, branched, costed, saved and exported.

Run: ``python examples/bring_your_own_backbone.py --out byo-out``. Nothing is
trained: the point is the path from any ``nn.Module`` to a compiled,
costed, exported multi-task network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import mtgraph
from mtgraph.exporters import export_onnx, render
from mtgraph.threads import apply_threads, choose_threads


class Stage(nn.Module):
    """A small residual stage: conv-BN-ReLU twice plus a projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.project = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.project(x))


class MyBackbone(nn.Module):
    """The user's model: a stem and four stages in a Sequential, returning a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.stages = nn.Sequential(Stage(16, 16, 1), Stage(16, 32, 2), Stage(32, 32, 1), Stage(32, 64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(torch.relu(self.stem(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core not busy with other processes, printed; see mtgraph.threads)")
    parser.add_argument("--out", type=Path, default=Path("byo-out"))
    args = parser.parse_args()
    print(apply_threads(choose_threads(args.threads)).describe(), flush=True)
    torch.manual_seed(0)

    backbone = mtgraph.trace(MyBackbone().eval(), torch.randn(2, 3, 32, 32))
    print(backbone.describe())

    channels = backbone.output_shape[0]
    heads = {
        "seg": nn.Sequential(nn.Conv2d(channels, 5, 1), nn.Upsample(scale_factor=4, mode="bilinear")),
        "depth": nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Upsample(scale_factor=4, mode="bilinear")),
        "count": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)),
    }
    # Share the stem and the first two stages; then seg+depth share one branch and count takes its own.
    shared, split = [list(heads)], [["seg", "depth"], ["count"]]
    groups = [[shared[0]]] * 3 + [split] * (backbone.num_blocks - 3)
    graph = mtgraph.from_groups(backbone.num_blocks, list(heads), groups)
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    print(graph)
    print(mtgraph.cost(graph, params))

    net = mtgraph.compile(graph, params).eval()
    with torch.no_grad():
        outputs = net(torch.randn(4, 3, 32, 32))
    print({task: list(value.shape) for task, value in outputs.items()})

    args.out.mkdir(parents=True, exist_ok=True)
    mtgraph.save(graph, params, args.out / "architecture")
    result = export_onnx(graph, params, args.out / "model.onnx")
    print(f"ONNX: {result.path} outputs {result.output_names}, parity {result.worst_diff:.1e}")
    print(f"diagram: {render(graph, params, args.out / 'architecture.svg')}")


if __name__ == "__main__":
    main()
