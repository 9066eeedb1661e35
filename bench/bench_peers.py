"""mtgraph's compiled networks against LibMTL's, training step by training step, with a plain-PyTorch control.

LibMTL (MIT licence) is **not** a project dependency: install it in a separate
environment for this benchmark only (``make bench-peers`` does it; see
``bench/README.md``). Its ``LibMTL.model.resnet`` imports
``torchvision.models.utils``, which torchvision removed; this script puts a
stub with ``load_state_dict_from_url`` (from ``torch.hub``) in its place. Its
``Trainer`` hard-codes ``cuda:0``, so the script assembles LibMTL's model the
way the Trainer does (``class MTLmodel(architecture, weighting)``) and
drives it directly, with the Trainer's own step: losses stacked into one
tensor, ``model.backward(losses)`` (the weighting), ``optimizer.step()``.

Comparisons, each on one backbone (torchvision resnet18, random weights),
three task heads (3x3 conv, ReLU, 1x1 conv to 13, 1 and 3 channels), MSE
losses against fixed random targets, Adam, the same batch:

1. **HPS**: LibMTL's hard parameter sharing with equal weighting (EW)
   against mtgraph's compiled One-Net and against a plain module (backbone,
   then a dict of heads). Before timing, one step of each from identical
   weights must give the same outputs and the same gradients (checked
   bitwise; any difference is printed). Target: One-Net / LibMTL <= 1.0.
2. **Cross-stitch**: LibMTL's ``Cross_stitch`` (one ResNet per task; after
   stages 1-3 every task's next stage reads ``sum_j a_j x_j`` of all tasks'
   stage outputs, one weight vector ``a`` per stage) against mtgraph's
   counterpart: single-task networks (STN) with a ``Gate`` per task after
   stages 1-3 mixing every task's stage output (softmax weights; LibMTL's
   weights are set to the same values, so both compute the same function,
   checked). The weights' parametrisations differ (LibMTL: raw weights,
   mtgraph: softmax of logits), so only the backbone's gradients are compared.

LibMTL's other architectures (MMoE, CGC, PLE, DSelect-k: gated mixtures of
experts; MTAN: attention modules) have no mtgraph counterpart.

Every timing is a median of steps run round-robin (one step of each model
per repeat) after warm-up, in one process; the load average is printed.

Usage (from the repository root; PYTHON is an environment with LibMTL)::

    make bench-peers                                   # installs LibMTL in build/libmtl-venv, runs this
    build/libmtl-venv/bin/python bench/bench_peers.py --size 64 --batch 8 --repeats 30
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping

import _timing
import torch
from torch import nn

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.ir import Block, Gate, Head, Input, MTGraph  # noqa: E402

TASKS = ("seg", "depth", "normal")
CHANNELS = {"seg": 13, "depth": 1, "normal": 3}
STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def import_libmtl() -> types.ModuleType:
    """LibMTL, with the torchvision module it still imports stubbed."""
    if "torchvision.models.utils" not in sys.modules:
        stub = types.ModuleType("torchvision.models.utils")
        stub.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = stub
    import LibMTL

    return LibMTL


def resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def features(resnet: nn.Module) -> nn.Sequential:
    """The resnet's feature extractor (no pooling, no classifier), children named as in the resnet."""
    return nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in STAGES))


def make_heads(channels: int) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    return {t: nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, CHANNELS[t], 1))
            for t in TASKS}


def losses_of(out: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    return [nn.functional.mse_loss(out[t], targets[t]) for t in TASKS]


class Plain(nn.Module):
    """The control: the backbone, then every head on its output."""

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        return {t: self.heads[t](f) for t in TASKS}


def plain_step(model: nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(losses_of(model(x), targets))
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        return loss
    return run


def libmtl_model(libmtl: types.ModuleType, architecture: type, encoder_class: Callable[[], nn.Module],
                 heads: Mapping[str, nn.Module]) -> nn.Module:
    """LibMTL's model as ``Trainer._prepare_model`` builds it, on the CPU, with equal weighting."""
    from LibMTL.weighting import EW

    class MTLmodel(architecture, EW):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(list(TASKS), encoder_class, nn.ModuleDict(heads), False, False, torch.device("cpu"))
            self.init_param()

    model = MTLmodel()
    model.task_num = len(TASKS)
    return model


def libmtl_step(model: nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    """LibMTL's Trainer.train step without its metric bookkeeping: stacked losses, weighting's backward, step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run() -> object:
        preds = model(x)
        train_losses = torch.zeros(len(TASKS))
        for tn, loss in enumerate(losses_of(preds, targets)):
            train_losses[tn] = loss
        optimizer.zero_grad()
        model.backward(train_losses)  # type: ignore[operator]
        optimizer.step()
        return train_losses
    return run


def compare(label: str, models: Mapping[str, nn.Module], params: Mapping[str, list[nn.Parameter]], x: torch.Tensor,
            targets: Mapping[str, torch.Tensor], backward: Mapping[str, Callable[[Mapping[str, torch.Tensor]], None]]) -> bool:
    """One forward and backward of each model from its current weights: are outputs and gradients bitwise equal?"""
    outputs = {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        out = model(x)
        backward[name](out)
        outputs[name] = out
    names = list(models)
    outputs = {name: {t: v.detach() for t, v in out.items()} for name, out in outputs.items()}
    same = True
    for other in names[1:]:
        worst_out = max(float((outputs[names[0]][t] - outputs[other][t]).abs().max()) for t in TASKS)
        grads = [(a.grad, b.grad) for a, b in zip(params[names[0]], params[other], strict=True)]
        worst_grad = max(float((ga - gb).abs().max()) for ga, gb in grads if ga is not None and gb is not None)
        bitwise = worst_out == 0.0 and worst_grad == 0.0 and all(
            (ga is None) == (gb is None) for ga, gb in grads)
        same &= bitwise
        print(f"  {label}: {other} vs {names[0]}: max |output diff| {worst_out:.3g}, max |gradient diff| "
              f"{worst_grad:.3g} over {len(grads)} parameters -> {'bitwise equal' if bitwise else 'DIFFERENT'}")
    for model in models.values():
        model.zero_grad(set_to_none=True)
    return same


def hps(libmtl: types.ModuleType, args: argparse.Namespace, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
    from LibMTL.architecture import HPS

    torch.manual_seed(0)
    backbone = features(resnet18())
    heads = make_heads(512)
    plain = Plain(copy.deepcopy(backbone), copy.deepcopy(heads))
    lib = libmtl_model(libmtl, HPS, lambda: copy.deepcopy(backbone), copy.deepcopy(heads))
    traced = mtgraph.trace(copy.deepcopy(backbone), x[:2])
    graph = mtgraph.one_net(traced.num_blocks, TASKS)
    store = mtgraph.ParamStore.create(graph, traced, copy.deepcopy(heads))
    onenet = mtgraph.compile(graph, store)
    for m in (plain, lib, onenet):
        m.train()

    def summed(out: Mapping[str, torch.Tensor]) -> None:
        sum(losses_of(out, targets)).backward()  # type: ignore[union-attr]

    def weighted(out: Mapping[str, torch.Tensor]) -> None:
        stacked = torch.zeros(len(TASKS))
        for tn, loss in enumerate(losses_of(out, targets)):
            stacked[tn] = loss
        lib.backward(stacked)  # type: ignore[operator]

    print(f"\n## HPS: LibMTL {getattr(libmtl, '__version__', '1.1.5')} HPS+EW vs mtgraph One-Net vs plain module "
          f"(resnet18, 3 tasks, batch {args.batch}, {args.size} px, Adam)")
    # Parameters in the order of the plain module: backbone then heads (mtgraph orders them the same way).
    params = {"LibMTL HPS": list(lib.encoder.parameters()) + [p for t in TASKS for p in lib.decoders[t].parameters()],
              "mtgraph One-Net": list(onenet.parameters()),
              "plain": list(plain.parameters())}
    same = compare("one step from identical weights", {"LibMTL HPS": lib, "mtgraph One-Net": onenet, "plain": plain},
                   params, x, targets, {"LibMTL HPS": weighted, "mtgraph One-Net": summed, "plain": summed})
    if not same:
        print("  (not identical: timing anyway, but the comparison is between different computations)")
    steps = {"LibMTL HPS": libmtl_step(lib, x, targets), "mtgraph One-Net": plain_step(onenet, x, targets),
             "plain": plain_step(plain, x, targets)}
    timed("HPS", steps, ("mtgraph One-Net", "LibMTL HPS", "<= 1.0"), ("plain", "LibMTL HPS", ""), args)


def cross_stitch(libmtl: types.ModuleType, args: argparse.Namespace, x: torch.Tensor,
                 targets: dict[str, torch.Tensor]) -> None:
    from LibMTL.architecture import Cross_stitch

    torch.manual_seed(0)
    resnet = resnet18()
    heads = make_heads(512)
    lib = libmtl_model(libmtl, Cross_stitch, lambda: copy.deepcopy(resnet), copy.deepcopy(heads))
    traced = mtgraph.trace(features(copy.deepcopy(resnet)), x[:2], cuts=["maxpool", "layer1", "layer2", "layer3"])
    # STN over [stem, layer1, layer2, layer3, layer4] with a gate per task after layer1..layer3 mixing every task.
    nodes: list = [Input()]
    current = {t: 0 for t in TASKS}
    gates = {}
    for b in range(traced.num_blocks):
        outs = {}
        for t in TASKS:
            nodes.append(Block(b, f"b{b}.{t}", current[t]))
            outs[t] = len(nodes) - 1
        current = outs
        if 1 <= b <= 3:
            mixed = {}
            for t in TASKS:
                key = f"gate.{t}.{b}"
                gates[key] = mtgraph.MixGate(len(TASKS))
                nodes.append(Gate(t, tuple(outs[s] for s in TASKS), key))
                mixed[t] = len(nodes) - 1
            current = mixed
    nodes += [Head(t, current[t]) for t in TASKS]
    graph = MTGraph(tuple(nodes))
    store = mtgraph.ParamStore.create(graph, traced, copy.deepcopy(heads), gates=gates)
    net = mtgraph.compile(graph, store)
    with torch.no_grad():  # LibMTL's stitch weights := the gates' softmax weights (the same for every task)
        probabilities = gates[f"gate.{TASKS[0]}.1"].probabilities()
        lib.encoder.cross_unit.copy_(probabilities.expand_as(lib.encoder.cross_unit))
    lib.train()
    net.train()

    def summed(out: Mapping[str, torch.Tensor]) -> None:
        sum(losses_of(out, targets)).backward()  # type: ignore[union-attr]

    def weighted(out: Mapping[str, torch.Tensor]) -> None:
        stacked = torch.zeros(len(TASKS))
        for tn, loss in enumerate(losses_of(out, targets)):
            stacked[tn] = loss
        lib.backward(stacked)  # type: ignore[operator]

    print(f"\n## Cross-stitch: LibMTL Cross_stitch+EW vs mtgraph STN with a gate per task after stages 1-3 "
          f"(resnet18 x 3 tasks, batch {args.batch}, {args.size} px, Adam)")
    backbone_of = {
        # LibMTL: per stage, the tasks' modules; mtgraph: per block, the tasks' keys (same stage order).
        "LibMTL Cross_stitch": [p for t in TASKS for p in lib.encoder.resnet_conv[t].parameters()]
        + [p for i in range(4) for tn in range(len(TASKS)) for p in lib.encoder.resnet_layer[str(i)][tn].parameters()],
        "mtgraph gated STN": [p for t in TASKS for p in store[f"b0.{t}"].parameters()]
        + [p for b in range(1, 5) for t in TASKS for p in store[f"b{b}.{t}"].parameters()],
    }
    compare("one step, same stitch weights", {"LibMTL Cross_stitch": lib, "mtgraph gated STN": net}, backbone_of, x,
            targets, {"LibMTL Cross_stitch": weighted, "mtgraph gated STN": summed})
    steps = {"LibMTL Cross_stitch": libmtl_step(lib, x, targets), "mtgraph gated STN": plain_step(net, x, targets)}
    timed("Cross-stitch", steps, ("mtgraph gated STN", "LibMTL Cross_stitch", "<= 1.0"), None, args)


def timed(title: str, steps: Mapping[str, Callable[[], object]], main: tuple[str, str, str],
          extra: tuple[str, str, str] | None, args: argparse.Namespace) -> None:
    rows = []
    for n in _timing.thread_counts(args.threads):
        with _timing.threads(n):
            med = _timing.medians(steps, args.warmup, args.repeats)
        for a, b, target in (main, extra) if extra else (main,):
            rows.append((f"{a} / {b}", n, med[a], med[b], med[a] / med[b], target))
    _timing.header(f"{title}: one training step (forward, losses, backward, Adam)", args.repeats, args.warmup)
    print(_timing.table(["comparison (a / b)", "threads", "a ms", "b ms", "a/b", "target"], rows))
    print(f"(load average after the runs {_timing.load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--only", choices=("hps", "cross-stitch"), nargs="+", default=("hps", "cross-stitch"))
    _timing.common_arguments(parser, repeats=30, quick_repeats=5)
    args = parser.parse_args()
    args.repeats, args.warmup = _timing.resolve(args, 30, 5)
    try:
        libmtl = import_libmtl()
    except ImportError as exc:
        print(f"skipped: LibMTL is not installed in this environment ({exc}); see bench/README.md (make bench-peers)")
        return
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    side = args.size // 32
    targets = {t: torch.randn(args.batch, CHANNELS[t], side, side) for t in TASKS}
    print(f"load average {_timing.load()}; {_timing.all_threads()} cores; torch {torch.__version__}")
    if "hps" in args.only:
        hps(libmtl, args, x, targets)
    if "cross-stitch" in args.only:
        cross_stitch(libmtl, args, x, targets)


if __name__ == "__main__":
    main()
