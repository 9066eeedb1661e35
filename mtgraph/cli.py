"""The ``mtgraph`` command.

Every subcommand prints a one-line cause and exits non-zero on a user error
(``--debug`` shows the traceback); long work shows progress bars.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtgraph.errors import ConfigError, MTGraphError

__all__ = ["main", "build_parser"]

STRATEGIES = ("mtsl", "affinity", "adashare", "grouping", "smtl")


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size {text!r} must look like 3,64,64") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input size {text!r} must be three positive numbers C,H,W")
    return dims


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from mtgraph.frontend import trace
    from mtgraph.zoo import resolve_model

    model = resolve_model(args.model, features=not args.whole)
    cuts = args.cuts if args.cuts in ("auto", "blocks", "stages") else [c for c in args.cuts.split(",") if c]
    backbone = trace(model, torch.zeros((1, *args.input_size)), cuts=cuts, leaf_modules=args.leaf or ())
    print(f"{args.model}: input [N,{','.join(map(str, args.input_size))}]")
    print(backbone.describe())
    return 0


def _open_architecture(args: argparse.Namespace) -> tuple:
    from mtgraph.persist import load
    from mtgraph.spec import ModelSpec

    spec = ModelSpec.load(args.arch, model_override=getattr(args, "model", None))
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    heads = spec.build_heads(backbone, tasks)
    graph, params = load(args.arch, backbone, heads)
    return spec, graph, params


def _cmd_cost(args: argparse.Namespace) -> int:
    from mtgraph.analysis.cost import cost

    _, graph, params = _open_architecture(args)
    report = cost(graph, params)
    print(json.dumps(report.to_dict(), indent=2) if args.json else str(report))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mtgraph.exporters import export_onnx

    _, graph, params = _open_architecture(args)
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    out = Path(args.output) if args.output else Path(args.arch) / "model.onnx"
    result = export_onnx(graph, params, out, tasks=tasks, opset=args.opset)
    print(f"wrote {result.path} (outputs: {', '.join(result.output_names)}; "
          f"max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from mtgraph.exporters import render

    _, graph, params = _open_architecture(args)
    out = Path(args.output) if args.output else Path(args.arch) / f"architecture.{args.format}"
    path = render(graph, params, out, format=args.format)
    print(f"wrote {path}")
    return 0


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"image {str(path)!r} does not exist")
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        try:
            from torchvision.io import read_image
        except ImportError as exc:
            raise ConfigError(f"reading {path.suffix} images needs torchvision (pip install 'mtgraph[zoo]'); or pass .npy arrays") from exc
        try:
            array = read_image(str(path)).numpy().astype("float32") / 255.0
        except RuntimeError as exc:
            raise ConfigError(f"cannot decode image {str(path)!r}: {exc}") from exc
    array = np.asarray(array, dtype="float32")
    if array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
        array = array.transpose(2, 0, 1)  # H,W,C -> C,H,W
    if array.ndim != 3:
        raise ConfigError(f"image {str(path)!r} has shape {list(array.shape)}; expected C,H,W or H,W,C")
    return array


def _cmd_run(args: argparse.Namespace) -> int:
    from mtgraph.exporters.runtime import open_session

    providers = "auto" if args.providers == "auto" else [p for p in args.providers.split(",") if p]
    session = open_session(args.model_file, providers=providers, threads=args.threads)
    batch = np.stack([_read_image(Path(p)) for p in args.images])
    outputs = session.run(batch)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    print(f"providers: {', '.join(session.providers)}")
    for task, value in outputs.items():
        print(f"{task}: shape {list(value.shape)}, mean {float(value.mean()):.4f}")
        if out_dir is not None:  # through a temporary file and a rename, like every file mtgraph writes
            _save_npy(out_dir / f"{task}.npy", value)
    return 0


def _save_npy(path: Path, value: np.ndarray) -> None:
    """Write ``value`` as a .npy file atomically (a killed run never leaves half an array)."""
    import io

    from mtgraph.persist import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def _cmd_bench(args: argparse.Namespace) -> int:
    from mtgraph.workflow import bench_architecture

    _, graph, params = _open_architecture(args)
    print(bench_architecture(graph, params, repeats=args.repeats))
    return 0


def _threads(args: argparse.Namespace, *, announce: bool = True) -> None:
    """Apply the thread policy (mtgraph.threads) or ``--threads``, and say what was chosen."""
    import os

    from mtgraph.threads import apply_threads, choose_threads

    choice = apply_threads(choose_threads(args.threads))
    if announce and os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per rank
        print(choice.describe(), flush=True)


def _cmd_learn(args: argparse.Namespace) -> int:
    from mtgraph.train import init_distributed, shutdown
    from mtgraph.workflow import LearnOptions, learn

    options = LearnOptions.from_args(args)
    _threads(args)
    try:
        out = learn(options, progress=not args.no_progress)
        if init_distributed().is_main:  # under torchrun, one line, not one per rank
            print(f"wrote the learned architecture to {out}")
    finally:
        shutdown()  # leaves the torchrun process group, if learn joined one
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mtgraph.workflow import demo

    _threads(args)
    out = Path(args.out or ("mtgraph-demo-quick" if args.quick else "mtgraph-demo"))
    written = demo(strategy=args.strategy, out=out, quick=args.quick, seed=args.seed,
                   progress=not args.no_progress, threads=args.threads or "auto")
    print("wrote:")
    for label, path in written.items():
        print(f"  {label:<14} {path}")
    return 0


def _one_line(exc: MTGraphError) -> MTGraphError:
    """``exc`` with only the first line of its message (a pipeline error's caret, a verifier error's IR context)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if first == str(exc):
        return exc
    try:
        return type(exc)(first)
    except TypeError:  # a subclass with another constructor
        return MTGraphError(first)


def _cmd_opt(args: argparse.Namespace) -> int:
    from mtgraph.driver import format_after_step
    from mtgraph.ir import print_graph
    from mtgraph.passes import run_passes
    from mtgraph.persist import save

    try:
        spec, graph, params = _open_architecture(args)
        after = (lambda k, p, r: print(format_after_step(k + 1, p, r.graph), end="")) if args.print_after_all else None
        result = run_passes(graph, params, args.passes, on_step=after)
        if not args.print_after_all:
            print(print_graph(result.graph), end="")
        if args.output:
            out = save(result.graph, result.params, args.output)
            spec.save(out)
            print(f"wrote {out}", file=sys.stderr)
    except MTGraphError as exc:
        raise _one_line(exc) from exc
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from mtgraph.driver import explain_pipeline

    try:
        _, graph, params = _open_architecture(args)
        print(explain_pipeline(graph, params, args.passes))
    except MTGraphError as exc:
        raise _one_line(exc) from exc
    return 0


def _add_compiler_commands(add: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]) -> None:
    """The ``opt`` and ``explain`` subcommands: run or explain a pass pipeline on a saved architecture."""
    example = 'a pass pipeline such as "fuse{tasks=seg+depth,block=3},dce" (see mtgraph.passes)'
    p = add("opt", _cmd_opt, "apply a pass pipeline to a saved architecture and print the resulting IR")
    _add_arch(p)
    p.add_argument("--passes", required=True, help=example)
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("-o", "--output", help="save the result as an architecture folder (files in it are replaced)")
    p = add("explain", _cmd_explain,
            "for each pass of a pipeline, say whether it applies to a saved architecture or why not "
            "(a refused pass leaves the graph unchanged and the rest run on it)")
    _add_arch(p)
    p.add_argument("--passes", required=True, help=example)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mtgraph.evaluation.report import verdict
    from mtgraph.workflow import EvaluateOptions, run_evaluation

    options = EvaluateOptions.from_args(args)
    _threads(args)
    evaluation = run_evaluation(options, progress=not args.no_progress, threads=args.threads or "auto")
    learned = evaluation.summary.get("learned", {})
    if learned.get("delta_mtl_mean") is not None:
        low, high = learned["ci95_low"], learned["ci95_high"]
        interval = "" if low is None else f" [{low:+.2f}, {high:+.2f}]"
        print(f"learned: Δ_MTL {learned['delta_mtl_mean']:+.2f}%{interval} over {learned['n']} seeds")
        for key, label in (("width_matched", "width-matched One-Net"), ("random_median", "random draws' median"),
                           ("one_net", "One-Net")):
            print(f"  vs {label}: {verdict(learned['paired'].get(key))}")
    print(f"wrote {evaluation.folder / 'results.json'} and {evaluation.report}")
    return 0


def _add_arch(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="architecture folder (architecture.mtir, weights.safetensors, model.json)")
    p.add_argument("--model", help="backbone factory to use instead of the recorded one (package.module:factory)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtgraph`` command."""
    parser = argparse.ArgumentParser(prog="mtgraph", description="Learn, compile, cost, export and draw multi-task networks.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("demo", _cmd_demo, "run the main job: generated scenes, a built-in backbone, a strategy through the "
                               "evaluation protocol (vs STN, One-Net and matched-compute baselines, over seeds)")
    p.add_argument("--strategy", choices=STRATEGIES, default="mtsl", help="structural-learning strategy (default: mtsl)")
    p.add_argument("--quick", action="store_true", help="fewer seeds and random draws, less data (under 45 s on 2 idle cores)")
    p.add_argument("--out", default=None,
                   help="output folder (default: mtgraph-demo, or mtgraph-demo-quick with --quick); a rerun continues "
                        "the demo there (finished runs are read back), report.md and the files it links are replaced, "
                        "others kept; a folder holding a demo with other options is refused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: one per core not busy with other processes, printed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("evaluate", _cmd_evaluate, "compare a strategy's learned architecture with STN, One-Net, a width-matched "
                                       "One-Net and random architectures at its GMac, each retrained over seeds")
    p.add_argument("--strategy", choices=STRATEGIES, default=None, help="structural-learning strategy (default: mtsl)")
    p.add_argument("--config", help="TOML file with these options at its top level and the strategy's config fields "
                                    "in a [config] table (command-line flags win)")
    p.add_argument("--seeds", type=_positive, default=None, help="how many seeds (default 3)")
    p.add_argument("--randoms", type=int, default=None, help="random architectures per seed (default 5)")
    p.add_argument("--out", default=None,
                   help="output folder (default: mtgraph-evaluation); a rerun continues the evaluation there (finished "
                        "runs are read back), results.json, report.md and pareto.png are replaced; a folder holding an "
                        "evaluation with other settings is refused")
    p.add_argument("--quick", action="store_true", help="less data and one epoch (unless set otherwise)")
    p.add_argument("--data", default=None,
                   help="scenes, designed (the scene preset with known task clusters), nyuv2:FOLDER or "
                        "cityscapes:FOLDER (default scenes)")
    p.add_argument("--model", default=None, help="backbone (default resnet_tiny_w4; width-matching needs a built-in one)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: the data's tasks)")
    p.add_argument("--size", type=_positive, default=None, help="image size in pixels for generated scenes (default 32)")
    p.add_argument("--num-train", dest="num_train", type=_positive, default=None, help="training scenes (default 256)")
    p.add_argument("--num-val", dest="num_val", type=_positive, default=None, help="validation scenes (default 64)")
    p.add_argument("--epochs", type=float, default=None,
                   help="epochs of every retraining, and the strategy's budget (default 4)")
    p.add_argument("--clusters", default=None,
                   help="designed task clusters for the structure-recovery score, e.g. seg+edges,depth+normals,autoencoder "
                        "(default with --data designed: its clusters)")
    p.add_argument("--executor", choices=("sequential", "process", "ray"), default=None,
                   help="how the retraining runs execute (default sequential)")
    p.add_argument("--workers", type=_positive, default=None, help="processes of --executor process")
    p.add_argument("--seed", type=int, default=None, help="the first seed (default 0)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: one per core not busy with other processes, chosen again per run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("inspect", _cmd_inspect, "trace a model and print its blocks: name, shapes, GMac, parameters, skippable")
    p.add_argument("model", help="resnet_tiny, torchvision:NAME, timm:NAME or package.module:factory")
    p.add_argument("--input-size", type=_shape, default=(3, 64, 64), help="C,H,W (default 3,64,64)")
    p.add_argument("--cuts", default="auto", help="auto, blocks, stages or comma-separated module names")
    p.add_argument("--leaf", action="append", help="module name to keep as a black box (repeatable)")
    p.add_argument("--whole", action="store_true", help="keep a zoo classifier whole instead of its feature extractor")

    p = add("learn", _cmd_learn, "run a strategy on a dataset and save the learned architecture")
    p.add_argument("--strategy", choices=STRATEGIES, default="mtsl")
    p.add_argument("--data", default="scenes", help="scenes, nyuv2:FOLDER or cityscapes:FOLDER")
    p.add_argument("--model", default="resnet_tiny", help="backbone (see inspect)")
    p.add_argument("--tasks", default="seg,depth,edges,normals,autoencoder", help="comma-separated task names")
    p.add_argument("--size", type=int, default=64, help="image size in pixels for generated scenes")
    p.add_argument("--epochs", type=float, default=None, help="training budget in epochs (strategy default if omitted)")
    p.add_argument("--config", help="TOML file with the same options (command-line flags win)")
    p.add_argument("--out", default="mtgraph-learn",
                   help="output folder (training checkpoints go to OUT/checkpoints and are kept; a folder holding another "
                        "run's checkpoints is refused; OUT/architecture is replaced when the run ends)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT/checkpoints (same options and seed): finished phases "
                        "are read back, the interrupted one resumes; without it a non-empty OUT/checkpoints is refused")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: one per core not busy with other processes, printed)")
    p.add_argument("--no-progress", action="store_true")

    p = add("cost", _cmd_cost, "print GMac and parameters of a saved architecture: total, per task, shared vs specific")
    _add_arch(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("export", _cmd_export, "export a saved architecture to ONNX (one output per task), parity-checked")
    _add_arch(p)
    p.add_argument("-o", "--output", help="ONNX file (default ARCH/model.onnx); an existing file is replaced, atomically, "
                                          "only once the new one passed every check")
    p.add_argument("--tasks", help="comma-separated tasks to export (default: all)")
    p.add_argument("--opset", type=int, default=None)

    p = add("render", _cmd_render, "draw a saved architecture (task-coloured sharing diagram)")
    _add_arch(p)
    p.add_argument("-o", "--output", help="output file (default ARCH/architecture.FORMAT); an existing file is replaced, "
                                          "atomically")
    p.add_argument("--format", choices=("svg", "png", "pdf", "dot"), default="svg")

    p = add("run", _cmd_run, "run an exported ONNX model on images through onnxruntime")
    p.add_argument("model_file", help="model.onnx written by 'mtgraph export'")
    p.add_argument("images", nargs="+", help=".npy arrays (C,H,W or H,W,C, float in [0,1]) or PNG/JPEG files")
    p.add_argument("--providers", default="auto", help="auto or comma-separated: tensorrt,cuda,cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="folder to save each task's output as TASK.npy (existing files of those names are replaced)")

    p = add("bench", _cmd_bench, "median latency of a saved architecture: torch eager vs onnxruntime")
    _add_arch(p)
    p.add_argument("--repeats", type=int, default=20)
    _add_compiler_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except MTGraphError as exc:
        if args.debug:
            raise
        print(f"mtgraph {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: one line unless --debug
        if args.debug:
            raise
        print(f"mtgraph {args.command}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
