"""MAC accounting: mtgraph.cost against FlopCounterMode/2, fvcore, ptflops and thop.

For every small test backbone (``tests/backbones.py``) and, at 224 px, the
torchvision classifiers resnet18, mobilenet_v3_small, convnext_tiny and
vit_b_16, the script prints per image (batch 1):

* the MAC count of each counter and its difference relative to mtgraph;
* which operators explain the differences: fvcore's per-operator breakdown
  (operators outside conv/linear/matmul/attention, and the operators it
  skips), ptflops' count with norm / activation / pooling-and-resize modules
  ignored in turn, thop's per-module-type breakdown;
* the time each counter takes, with 1 thread and all threads (median).

fvcore is in the project's ``test`` extra; ptflops and thop are not project
dependencies (``pip install ptflops thop``, both MIT). A counter that is not
installed is reported as such and skipped.

Usage::

    python bench/bench_accounting.py            # test backbones + torchvision zoo at 224 px
    python bench/bench_accounting.py --quick    # test backbones + the 32 px torchvision variants
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import _timing
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_timing.add_paths()

import backbones  # noqa: E402

import mtgraph  # noqa: E402
from mtgraph.ir import one_net  # noqa: E402

#: Operators that mtgraph's convention counts (aten names as fvcore reports them, without "aten::").
CORE = {"conv", "convolution", "_convolution", "linear", "addmm", "mm", "matmul", "bmm", "einsum", "baddbmm",
        "scaled_dot_product_attention", "upsample_bilinear2d"}
CORE_FV = {"conv", "linear", "addmm", "matmul", "bmm", "einsum", "baddbmm", "scaled_dot_product_attention",
           "_convolution", "mm"}
NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)
ACT = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.LeakyReLU, nn.PReLU, nn.ELU)
POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)


def have(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def models(quick: bool) -> dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]]:
    """The compared models: every test backbone, and the torchvision zoo when installed."""
    out = dict(backbones.HAND_WRITTEN)
    if not backbones.HAS_TORCHVISION:
        return out
    if quick:
        out.update(backbones.TORCHVISION)
        return out
    from torchvision import models as tv

    def zoo(build: Callable[[], nn.Module], seed: int) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
        def make() -> tuple[nn.Module, torch.Tensor]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return build().eval(), torch.randn(1, 3, 224, 224)
        return make

    out.update({"tv_resnet18@224": zoo(tv.resnet18, 1), "tv_mobilenet_v3_small@224": zoo(tv.mobilenet_v3_small, 2),
                "tv_convnext_tiny@224": zoo(tv.convnext_tiny, 3), "tv_vit_b_16@224": zoo(tv.vit_b_16, 4)})
    return out


# --------------------------------------------------------------------------- #
# The counters: each returns MACs per image for a batch-1 input.
# --------------------------------------------------------------------------- #


def count_mtgraph(model: nn.Module, x: torch.Tensor) -> int:
    """Trace, build a one-task One-Net with an identity head, and read mtgraph.cost's total."""
    backbone = mtgraph.trace(model, x)
    graph = one_net(backbone.num_blocks, ("t",))
    store = mtgraph.ParamStore.create(graph, backbone, {"t": nn.Identity()})
    return int(mtgraph.cost(graph, store).total_macs)


def count_flopcounter(model: nn.Module, x: torch.Tensor) -> int:
    """PyTorch's FlopCounterMode total / 2, as it comes (no custom formulas, fast paths left on)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def fvcore_analysis(model: nn.Module, x: torch.Tensor):  # noqa: ANN201 - fvcore's type
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def count_fvcore(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's FlopCountAnalysis total (fvcore's "flop" is one multiply-add)."""
    return int(fvcore_analysis(model, x).total())


def count_ptflops(model: nn.Module, x: torch.Tensor, ignore: tuple[type, ...] = ()) -> int:
    """ptflops' MACs with its default (module-hook) backend, optionally ignoring some module types."""
    from ptflops import get_model_complexity_info

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        macs, _ = get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False,
                                            print_per_layer_stat=False, verbose=False, ignore_modules=list(ignore))
    return int(macs or 0)


def thop_profile(model: nn.Module, x: torch.Tensor) -> tuple[int, dict]:
    from thop import profile

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _, layers = profile(model, inputs=(x,), verbose=False, ret_layer_info=True)
    return int(macs), layers


def count_thop(model: nn.Module, x: torch.Tensor) -> int:
    """thop's MACs (module hooks on leaf modules)."""
    return thop_profile(model, x)[0]


COUNTERS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor], int]]] = {
    "mtgraph": ("mtgraph", count_mtgraph),
    "FlopCounter/2": ("torch", count_flopcounter),
    "fvcore": ("fvcore", count_fvcore),
    "ptflops": ("ptflops", count_ptflops),
    "thop": ("thop", count_thop),
}


# --------------------------------------------------------------------------- #
# Explanations
# --------------------------------------------------------------------------- #


def explain_fvcore(model: nn.Module, x: torch.Tensor) -> str:
    analysis = fvcore_analysis(model, x)
    extra = {op: n for op, n in analysis.by_operator().items() if op not in CORE_FV and n}
    skipped = dict(analysis.unsupported_ops())
    parts = [f"+{op} {n / 1e6:.3f}M" for op, n in sorted(extra.items())]
    relevant = {op: k for op, k in skipped.items() if any(w in op for w in ("attention", "matmul", "bmm", "conv"))}
    if relevant:
        parts.append("skips " + ", ".join(f"{op}x{k}" for op, k in sorted(relevant.items())))
    return "; ".join(parts) or "same operators"


def explain_ptflops(model: nn.Module, x: torch.Tensor) -> str:
    full = count_ptflops(model, x)
    parts = []
    for label, kinds in (("norm", NORM), ("act", ACT), ("pool/resize", POOL)):
        delta = full - count_ptflops(model, x, ignore=kinds)
        if delta:
            parts.append(f"+{label} {delta / 1e6:.3f}M")
    return "; ".join(parts) or "no norm/act/pool extras"


def explain_thop(model: nn.Module, x: torch.Tensor) -> str:
    _, layers = thop_profile(model, x)
    modules = dict(model.named_modules())
    by_type: dict[str, float] = defaultdict(float)

    def walk(tree: dict, prefix: str) -> None:
        for name, (ops, _, children) in tree.items():
            full = f"{prefix}{name}"
            if children:
                walk(children, full + ".")
            else:
                by_type[type(modules[full]).__name__ if full in modules else f"(re-registered {full})"] += ops

    walk(layers, "")
    core = ("Conv", "Linear", "MultiheadAttention")
    extra = {k: v for k, v in by_type.items() if v and not k.startswith(core)}
    return "; ".join(f"+{k} {v / 1e6:.3f}M" for k, v in sorted(extra.items())) or "conv/linear only"


# --------------------------------------------------------------------------- #


def time_counter(fn: Callable[[nn.Module, torch.Tensor], int], model: nn.Module, x: torch.Tensor,
                 repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(model, x)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Count, compare, explain and time every counter on every model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.common_arguments(parser, repeats=3, quick_repeats=1)
    parser.add_argument("--models", nargs="*", help="only these model names")
    args = parser.parse_args(argv)
    repeats, _ = _timing.resolve(args, 3, 1)
    available = {name: fn for name, (module, fn) in COUNTERS.items() if have(module)}
    for name, (module, _) in COUNTERS.items():
        if name not in available:
            print(f"{name}: not installed (pip install {module}); skipped")
    chosen = {k: v for k, v in models(args.quick).items() if not args.models or k in args.models}

    counts: dict[str, dict[str, int]] = {}
    explain: list[list[object]] = []
    for name, factory in chosen.items():
        counts[name] = {}
        for counter, fn in available.items():
            # A fresh model per counter: thop and ptflops leave hooks/buffers behind on some models (tied).
            model, x = factory()
            x = x[:1]
            try:
                counts[name][counter] = fn(model, x)
            except Exception as error:  # noqa: BLE001 - a third-party counter failing is a result to report
                counts[name][counter] = -1
                print(f"{name}: {counter} failed: {type(error).__name__}: {str(error)[:120]}")
        for counter, fn in (("fvcore", explain_fvcore), ("ptflops", explain_ptflops), ("thop", explain_thop)):
            if counter in available:
                model, x = factory()
                x = x[:1]
                try:
                    explain.append([name, counter, fn(model, x)])
                except Exception as error:  # noqa: BLE001
                    explain.append([name, counter, f"explanation failed: {type(error).__name__}"])

    print(f"\n## MACs per image (batch 1), millions; relative difference vs mtgraph   load {_timing.load()}")
    names = list(available)
    rows = []
    for model_name, c in counts.items():
        ref = c.get("mtgraph", 0)
        row: list[object] = [model_name]
        for counter in names:
            v = c[counter]
            if v < 0:
                row.append("failed")
            elif counter == "mtgraph" or not ref:
                row.append(f"{v / 1e6:.3f}")
            else:
                row.append(f"{v / 1e6:.3f} ({100 * (v - ref) / ref:+.1f}%)")
        rows.append(row)
    print(_timing.table(["model", *names], rows))

    print("\n## what explains the differences (extra operators counted, in MMACs)")
    print(_timing.table(["model", "counter", "extra / skipped"], explain))

    print(f"\n## time to count one model (ms, median of {repeats})   load {_timing.load()}")
    rows = []
    for model_name, factory in chosen.items():
        for threads in _timing.thread_counts(args.threads):
            with _timing.threads(threads):
                row = [model_name, threads]
                for fn in available.values():
                    model, x = factory()
                    x = x[:1]
                    try:
                        row.append(time_counter(fn, model, x, repeats))
                    except Exception:  # noqa: BLE001
                        row.append("failed")
                rows.append(row)
    print(_timing.table(["model", "threads", *names], rows))

    print("\n## GPU")
    print("skipped: no GPU" if not _timing.has_gpu() else "counting is device-independent; not repeated on the GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
