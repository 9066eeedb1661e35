"""MTSL on an encoder-decoder with skip connections: ten branching locations, six in the encoder, four in the decoder.

This is the shape of MTSL's main setting (papers/000 §4.1 and Tables 2, 4-6:
"an encoder-decoder architecture with a total of ten locations, six in the
encoder and four in the decoder ... The encoder is based on ResNet18 and the
decoder has ResNet blocks"), small enough for a CPU, on generated scenes with
the paper's five dense tasks (S, D, E, N, A).

Run from the repository root::

    python examples/unet_mtsl.py --out unet_mtsl_out

The network is written as ordinary PyTorch (:class:`EncoderDecoder`): a
ResNet-18-style encoder (stem, four stages of two basic blocks, a context
stage) and a decoder of four stages, each upsampling, concatenating the
encoder feature of its resolution and running a basic block. ``mtgraph.trace``
(``cuts="stages"``) cuts it into its ten stages: the cuts carry the skip
features still to be read next to the current feature map (up to four tensors
per boundary), so every stage is a location where tasks can share or branch.

The script prints the traced blocks (``+k``: how many skip features a
boundary carries), trains MTSL through the front door
(``registry()["mtsl"].learn``) with the paper's schedule scaled to
``--epochs`` (learning rate 1e-3 rather than the paper's 1e-4: a tiny network
from scratch, not ImageNet weights fine-tuned for 80 epochs), and prints the
learned tree block by block (the form of the paper's Table 5), its metrics
and its cost next to the single-task networks and One-Net (the # and GMac
columns of Table 2). Into ``--out`` it writes the architecture (IR text and
weights, ``mtgraph.save``), the diagram with its skip connections drawn
(``tree.svg``, or ``tree.dot`` without Graphviz) and every number
(``results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mtgraph
from mtgraph.data import SceneDataset
from mtgraph.errors import ExportError
from mtgraph.exporters import render
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies import registry
from mtgraph.strategies.mtsl import tree_rows
from mtgraph.tasks import dense_tasks
from mtgraph.threads import apply_threads, choose_threads
from mtgraph.train import evaluate
from mtgraph.zoo import BasicBlock

#: Blocks of the traced network that belong to the decoder (the last four of the ten).
DECODER_BLOCKS = (6, 7, 8, 9)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Two ResNet basic blocks, the first one changing resolution and width."""
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout))


class UpStage(nn.Module):
    """Decoder stage: upsample x2, concatenate the encoder's feature of that resolution (if any), a basic block."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.block = BasicBlock(cin + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(x if skip is None else torch.cat([x, skip], dim=1))


class EncoderDecoder(nn.Module):
    """A ResNet-18-style encoder (6 stages) and a decoder of 4 ResNet stages with skip connections.

    Resolutions for an ``S`` px input: stem S/2, layer1 S/2, layer2 S/4,
    layer3 S/8, layer4 S/16, context S/16; the decoder goes back up to S,
    reading layer3's, layer2's and layer1's outputs on the way (as a U-Net).

    Args:
        width: channels of the stem and layer1 (doubled in layer2..layer4).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = _stage(w, w, 1)
        self.layer2 = _stage(w, 2 * w, 2)
        self.layer3 = _stage(2 * w, 4 * w, 2)
        self.layer4 = _stage(4 * w, 8 * w, 2)
        self.context = _stage(8 * w, 8 * w, 1)
        self.up1 = UpStage(8 * w, 4 * w, 4 * w)
        self.up2 = UpStage(4 * w, 2 * w, 2 * w)
        self.up3 = UpStage(2 * w, w, w)
        self.up4 = UpStage(w, 0, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        x = self.context(self.layer4(f3))
        x = self.up1(x, f3)
        x = self.up2(x, f2)
        x = self.up3(x, f1)
        return self.up4(x)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core not busy with other processes, printed; see mtgraph.threads)")
    parser.add_argument("--out", type=Path, default=Path("unet_mtsl_out"), help="output folder")
    parser.add_argument("--size", type=int, default=48, help="image size in pixels (a multiple of 16)")
    parser.add_argument("--width", type=int, default=8, help="channels of the first stages")
    parser.add_argument("--train", type=int, default=256, help="training scenes")
    parser.add_argument("--val", type=int, default=128, help="validation scenes")
    parser.add_argument("--epochs", type=float, default=8.0, help="MTSL's budget E (its schedule scaled to it)")
    parser.add_argument("--gamma", type=float, default=0.8, help="MTSL's grouping threshold γ (the paper's 0.8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(apply_threads(choose_threads(args.threads)).describe(), flush=True)
    return args


def _draw(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, out: Path, title: str) -> Path:
    """The diagram as SVG, or as DOT source when Graphviz's ``dot`` is not installed."""
    try:
        return render(graph, params, out / "tree.svg", title=title)
    except ExportError:
        return render(graph, params, out / "tree.dot", format="dot", title=title)


def main(argv: list[str] | None = None) -> dict:
    """Trace, learn, report; return every number (also written to ``results.json``)."""
    args = _arguments(argv)
    if args.size % 16:
        raise SystemExit(f"--size must be a multiple of 16 (four halvings), got {args.size}")
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    data = SceneDataset(args.train, size=args.size, seed=args.seed)
    val = SceneDataset(args.val, size=args.size, seed=args.seed + 1000)
    tasks = dense_tasks(data.config.seg_classes)
    # One block per stage, as in the paper's ten locations ("auto" would cut between residual blocks too).
    backbone = mtgraph.trace(EncoderDecoder(args.width), data[0][0].unsqueeze(0), cuts="stages")
    print(backbone.describe())
    locations = [(b.index, b.name, len(b.signature.outputs)) for b in backbone]
    problem = mtgraph.Problem.create(backbone, tasks, data, val_data=val, seed=args.seed)

    strategy = registry()["mtsl"]
    config = strategy.config_for(problem, args.epochs)
    config = type(config)(**{**config.__dict__, "gamma": args.gamma})
    print(f"learning MTSL on {backbone.num_blocks} locations ...", file=sys.stderr, flush=True)
    result = strategy.learn(problem, config)
    metrics = evaluate(result.graph, result.params, problem.tasks, val)
    costs = problem.reference_costs
    report = mtgraph.cost(result.graph, result.params)

    args.out.mkdir(parents=True, exist_ok=True)
    mtgraph.save(result.graph, result.params, args.out / "architecture")
    diagram = _draw(result.graph, result.params, args.out, f"MTSL on an encoder-decoder, γ = {args.gamma:g}")
    rows = tree_rows(result.graph)
    decoder_decisions = [d for d in result.decisions if isinstance(d.data, dict) and d.data.get("block") in DECODER_BLOCKS]
    summary = {
        "locations": locations,
        "tree": rows,
        "metrics": {task: dict(values) for task, values in metrics.items()},
        "cost": {
            "STN": {"params": costs.stn_params, "gmac": costs.stn_gmac},
            "One-Net": {"params": costs.one_net_params, "gmac": costs.one_net_gmac},
            "MTSL": {"params": report.total_params, "gmac": report.gmac},
        },
        "decoder_decisions": len(decoder_decisions),
        "pipeline": result.pipeline,
        "diagram": str(diagram),
        "seconds": time.perf_counter() - started,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    atomic_write_bytes(args.out / "results.json", json.dumps(summary, indent=2, default=str).encode())

    print("\nlearned tree (tasks sharing each block's node):")
    for row in rows:
        part = "decoder" if row["block"] in DECODER_BLOCKS else "encoder"
        print(f"  {row['block']:>2} {backbone.blocks[row['block']].name:<8} {part}  {row['text']}")
    print(f"\n{len(decoder_decisions)} grouping decisions inside the decoder")
    print("\nmetrics: " + ", ".join(f"{t} {tasks[t].primary} {metrics[t][tasks[t].primary]:.4f}" for t in tasks))
    print("\nnetwork   params (M)     GMac")
    for label, numbers in summary["cost"].items():
        print(f"{label:<8} {numbers['params'] / 1e6:>11.4f} {numbers['gmac']:>8.4f}")
    print(f"\nwrote {args.out / 'architecture'}, {diagram} and {args.out / 'results.json'} "
          f"in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
