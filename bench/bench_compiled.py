"""Overhead of compiled multi-task networks against the plain modules they replace.

Four comparisons on the demo backbone ``mtgraph.zoo.resnet_tiny`` with three
tasks, forward (inference mode) and forward+backward (training mode), with 1
thread and with all threads, medians of interleaved runs after warm-up:

1. compiled One-Net vs the plain backbone then its heads (target <= 1.02x);
2. a compiled branched tree vs a hand-written ``nn.Module`` running the same
   store modules along the same tree;
3. the branched tree vs the sum of its unique blocks (every IR node) each run
   alone on its real input, forward only (target <= 1.03x);
4. compiled single-task networks (STN) vs T separate plain models.

Usage::

    python bench/bench_compiled.py               # 64 px, batch 8, 30 repeats
    python bench/bench_compiled.py --quick       # 32 px, batch 4, 8 repeats
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable, Sequence

import _timing
import torch
from torch import nn

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.ir import MTGraph, from_groups, group_key, one_net, stn  # noqa: E402
from mtgraph.zoo import resnet_tiny  # noqa: E402

TASKS = ("seg", "depth", "cls")


def make_heads(channels: int) -> dict[str, nn.Module]:
    """Two dense heads and one classification head."""
    torch.manual_seed(1)
    return {
        "seg": nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 13, 1)),
        "depth": nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1)),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)),
    }


def tree_groups(num_blocks: int) -> list[list[list[str]]]:
    """First half shared, then {seg, depth} | {cls}, last quarter one branch per task."""
    groups: list[list[list[str]]] = []
    for b in range(num_blocks):
        if b < num_blocks // 2:
            groups.append([list(TASKS)])
        elif b < (3 * num_blocks) // 4:
            groups.append([["seg", "depth"], ["cls"]])
        else:
            groups.append([[t] for t in TASKS])
    return groups


class HandBranched(nn.Module):
    """The branched tree written out by hand: each group's blocks applied in a Python loop, heads at the leaves."""

    def __init__(self, params: mtgraph.ParamStore, groups: Sequence[Sequence[Sequence[str]]]) -> None:
        super().__init__()
        # segments[g] = (parent segment index or -1, tasks, blocks) along the tree, built once here.
        self.tasks = list(TASKS)
        self.blocks = nn.ModuleDict()
        self.heads = nn.ModuleDict({t: params[f"head.{t}"] for t in TASKS})
        self.plan: list[tuple[str, str, str]] = []  # (output name, input name, weight key)
        current = {t: "x" for t in TASKS}
        for b, partition in enumerate(groups):
            for group in partition:
                key = group_key(b, group, TASKS)
                name = key.replace(".", "_").replace("+", "_")
                self.blocks[name] = params[key]
                self.plan.append((name, current[group[0]], name))
                for t in group:
                    current[t] = name
        self.leaf = current

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {"x": x}
        for out, src, name in self.plan:
            values[out] = self.blocks[name](values[src])
        return {t: self.heads[t](values[self.leaf[t]]) for t in self.tasks}


class Separate(nn.Module):
    """T separate single-task models (own backbone copy + head), run one after the other."""

    def __init__(self, model: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleDict({t: nn.Sequential(copy.deepcopy(model), copy.deepcopy(h)) for t, h in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: m(x) for t, m in self.models.items()}


class Plain(nn.Module):
    """The plain backbone, then every head on its output (what One-Net compiles to)."""

    def __init__(self, model: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model(x)
        return {t: h(features) for t, h in self.heads.items()}


def forward_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One inference-mode forward pass."""
    def run() -> object:
        with torch.inference_mode():
            return module(x)
    return run


def train_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One training-mode forward and backward pass (gradients cleared first)."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> object:
        for p in params:
            p.grad = None
        out = module(x)
        loss = sum(v.float().mean() for v in out.values())
        loss.backward()  # type: ignore[union-attr]
        return loss
    return run


def call_sites(module: torch.fx.GraphModule, x: torch.Tensor) -> list[Callable[[], object]]:
    """One closure per call site of a compiled module, running that module alone on its recorded input."""
    values: dict[str, torch.Tensor] = {}
    calls: list[Callable[[], object]] = []
    with torch.inference_mode():
        for node in module.graph.nodes:
            if node.op == "placeholder":
                values[node.name] = x
            elif node.op == "call_module":
                sub = module.get_submodule(str(node.target))
                inputs = [values[a.name] for a in node.args if isinstance(a, torch.fx.Node)]
                values[node.name] = sub(*inputs)
                calls.append(lambda sub=sub, inputs=inputs: forward_fn(sub, *inputs)())
            elif node.op == "call_function":
                raise SystemExit(f"unexpected call_function {node.target} in the compiled module")
    return calls


def build(size: int, batch: int, width: int) -> dict[str, object]:
    """Trace the backbone and build every compared network (same weights where they are compared)."""
    torch.manual_seed(0)
    model = resnet_tiny(width=width).eval()
    x = torch.randn(batch, 3, size, size)
    backbone = mtgraph.trace(model, x[:2])
    heads = make_heads(backbone.output_shape[0])
    n = backbone.num_blocks
    graphs: dict[str, MTGraph] = {
        "one_net": one_net(n, TASKS), "branched": from_groups(n, TASKS, tree_groups(n)), "stn": stn(n, TASKS),
    }
    stores = {name: mtgraph.ParamStore.create(g, backbone, heads) for name, g in graphs.items()}
    compiled = {name: mtgraph.compile(graphs[name], stores[name]) for name in graphs}
    with torch.no_grad():  # the compiled network must compute what it replaces
        plain = Plain(model, heads)
        ref, got = plain(x[:2]), compiled["one_net"](x[:2])
        hand = HandBranched(stores["branched"], tree_groups(n))
        ref_b, got_b = hand(x[:2]), compiled["branched"](x[:2])
    for t in TASKS:
        if not (torch.allclose(ref[t], got[t], atol=1e-5) and torch.equal(ref_b[t], got_b[t])):
            raise SystemExit(f"compiled output of task {t} differs from the plain module: a bug")
    return {"x": x, "model": model, "heads": heads, "plain": plain, "hand": hand, "compiled": compiled,
            "separate": Separate(model, heads), "blocks": n, "macs": backbone.macs}


def set_mode(modules: Sequence[nn.Module], train: bool) -> None:
    for m in modules:
        m.train(train)


def run_cpu(nets: dict[str, object], thread_list: list[int], warmup: int, repeats: int) -> list[list[object]]:
    """Every comparison on the CPU; returns table rows."""
    x: torch.Tensor = nets["x"]  # type: ignore[assignment]
    compiled: dict[str, nn.Module] = nets["compiled"]  # type: ignore[assignment]
    pairs = [
        ("compiled One-Net / plain backbone+heads", compiled["one_net"], nets["plain"], "<= 1.02"),
        ("compiled branched / hand-written tree", compiled["branched"], nets["hand"], "~1.00"),
        ("compiled STN / T separate models", compiled["stn"], nets["separate"], "~1.00"),
    ]
    rows: list[list[object]] = []
    all_modules = [m for _, a, b, _ in pairs for m in (a, b)]
    for threads in thread_list:
        with _timing.threads(threads):
            for mode in ("forward", "fwd+bwd"):
                set_mode(all_modules, mode == "fwd+bwd")
                make = forward_fn if mode == "forward" else train_fn
                fns = {}
                for k, (_, a, b, _) in enumerate(pairs):
                    fns[f"{k}a"], fns[f"{k}b"] = make(a, x), make(b, x)
                med = _timing.medians(fns, warmup, repeats)
                for k, (label, _, _, target) in enumerate(pairs):
                    rows.append([label, mode, threads, med[f"{k}a"], med[f"{k}b"], med[f"{k}a"] / med[f"{k}b"], target])
            set_mode(all_modules, False)
            # Branched tree vs the sum of its unique blocks alone (forward only).
            sites = call_sites(compiled["branched"], x)
            fns = {"full": forward_fn(compiled["branched"], x), **{f"s{k}": f for k, f in enumerate(sites)}}
            samples = _timing.interleaved(fns, warmup, repeats)
            full = statistics.median(samples["full"])
            total = sum(statistics.median(s) for k, s in samples.items() if k != "full")
            rows.append(["branched / sum of its unique blocks alone", "forward", threads, full, total, full / total,
                         "<= 1.03"])
            full_min = min(samples["full"])
            total_min = sum(min(s) for k, s in samples.items() if k != "full")
            rows.append(["  same, minima instead of medians", "forward", threads, full_min, total_min,
                         full_min / total_min, "<= 1.03"])
    return rows


def run_gpu(nets: dict[str, object], warmup: int, repeats: int) -> None:
    """The forward comparisons on the GPU (CUDA events), when one is present."""
    if not _timing.has_gpu():
        print("\n## GPU\nskipped: no GPU")
        return
    dev = torch.device("cuda")
    x = nets["x"].to(dev)  # type: ignore[attr-defined]
    compiled = {k: v.to(dev).eval() for k, v in nets["compiled"].items()}  # type: ignore[attr-defined]
    plain, hand, sep = (nets[k].to(dev).eval() for k in ("plain", "hand", "separate"))  # type: ignore[attr-defined]
    fns = {"one_net": forward_fn(compiled["one_net"], x), "plain": forward_fn(plain, x),
           "branched": forward_fn(compiled["branched"], x), "hand": forward_fn(hand, x),
           "stn": forward_fn(compiled["stn"], x), "separate": forward_fn(sep, x)}
    med = _timing.cuda_medians(fns, warmup, repeats)
    print(f"\n## GPU ({torch.cuda.get_device_name()}), forward, CUDA events")
    print(_timing.table(["comparison", "a ms", "b ms", "a/b"], [
        ["One-Net / plain", med["one_net"], med["plain"], med["one_net"] / med["plain"]],
        ["branched / hand-written", med["branched"], med["hand"], med["branched"] / med["hand"]],
        ["STN / separate", med["stn"], med["separate"], med["stn"] / med["separate"]],
    ]))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the comparisons, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.common_arguments(parser, repeats=30, quick_repeats=8)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 64, --quick 32)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8, --quick 4)")
    parser.add_argument("--width", type=int, default=16, help="resnet_tiny width (default 16)")
    args = parser.parse_args(argv)
    repeats, warmup = _timing.resolve(args, 30, 8)
    size = args.size or (32 if args.quick else 64)
    batch = args.batch or (4 if args.quick else 8)
    nets = build(size, batch, args.width)
    print(f"resnet_tiny(width={args.width}): {nets['blocks']} blocks, {nets['macs'] / 1e9:.3f} GMac/image at "
          f"{size} px, batch {batch}, tasks {', '.join(TASKS)}")
    _timing.header("compiled networks vs the plain modules they replace (CPU)", repeats, warmup)
    rows = run_cpu(nets, _timing.thread_counts(args.threads), warmup, repeats)
    print(_timing.table(["comparison (a / b)", "pass", "threads", "a ms", "b ms", "a/b", "target"], rows))
    print(f"(load average after the runs {_timing.load()})")
    run_gpu(nets, warmup, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
