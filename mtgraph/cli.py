"""The ``mtgraph`` command.

Every subcommand prints a one-line cause and exits non-zero on a user error
(``--debug`` shows the traceback); long work shows progress bars.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtgraph import __version__
from mtgraph.errors import ConfigError, MTGraphError

if TYPE_CHECKING:
    from mtgraph.spec import ModelSpec

__all__ = ["main", "build_parser"]

STRATEGIES = ("mtsl", "affinity", "adashare", "grouping", "smtl")
RENDER_FORMATS = ("svg", "png", "pdf", "dot")


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

    if Path(args.model).is_dir():  # a saved architecture: its backbone's blocks, then the architecture itself
        from mtgraph.ir import print_graph

        args.arch, args.model = args.model, None
        spec, graph, params = _open_architecture(args)
        name = spec.backbone if spec is not None else f"{params.backbone.source} (from the folder's program)"
        print(f"{name}: input [N,{','.join(map(str, params.backbone.input_shape))}]")
        print(params.backbone.describe())
        print(f"\narchitecture ({', '.join(graph.tasks)}):")
        print(print_graph(graph), end="")
        return 0
    model = resolve_model(args.model, features=not args.whole, weights=args.weights)
    cuts = args.cuts if args.cuts in ("auto", "blocks", "stages") else [c for c in args.cuts.split(",") if c]
    backbone = trace(model, torch.zeros((1, *args.input_size)), cuts=cuts, leaf_modules=args.leaf or ())
    print(f"{args.model}: input [N,{','.join(map(str, args.input_size))}]")
    print(backbone.describe())
    return 0


def _architecture_folder(folder: str) -> Path:
    """``folder``, after checking it is an architecture folder; else a ConfigError with the folder meant.

    ``mtgraph demo`` and ``mtgraph learn`` write the architecture into
    ``OUT/architecture``: pointing a command at ``OUT`` is the common slip.
    """
    from mtgraph.persist import ARCH_FILE

    path = Path(folder)
    if (path / ARCH_FILE).is_file():
        return path
    inner = [p.parent for p in sorted(path.glob(f"*/{ARCH_FILE}"))]
    if path.is_dir() and inner:
        meant = " or ".join(repr(str(p)) for p in inner[:2])
        raise ConfigError(f"{str(path)!r} is not an architecture folder (no {ARCH_FILE}); did you mean {meant}?")
    return path  # missing files are reported by the loaders, which name them


def _open_architecture(args: argparse.Namespace) -> tuple:
    """(spec or None, graph, params) of the folder ``args.arch``: rebuilt from model.json, or from its program.

    A folder saved from Python without a factory (``mtgraph.save`` of a
    model wrapped from the user's own code) has no model.json but a program
    (see :func:`mtgraph.open`); its spec is None.
    """
    from mtgraph.program import PROGRAM_DIR, PROGRAM_FILE
    from mtgraph.reopen import open as open_folder
    from mtgraph.spec import SPEC_FILE, ModelSpec

    args.arch = str(_architecture_folder(args.arch))
    override = getattr(args, "model", None)
    if not (Path(args.arch) / SPEC_FILE).is_file() and (Path(args.arch) / PROGRAM_DIR / PROGRAM_FILE).is_file():
        if override is not None:
            raise ConfigError(f"--model: {args.arch!r} has no {SPEC_FILE} to override; it reopens from its program")
        opened = open_folder(args.arch)
        return None, opened.graph, opened.params
    spec = ModelSpec.load(args.arch, model_override=override)
    from mtgraph.persist import load

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


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _npy_batches(folder: Path, channels: int, limit: int, batch: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` images from the .npy files of ``folder`` (sorted by name), in batches of ``batch``."""
    files = sorted(folder.glob("*.npy"))[:limit]
    if not files:
        raise ConfigError(f"--calibration {str(folder)!r} holds no .npy images (C,H,W or H,W,C arrays in [0, 1])")
    images = [_read_image(f) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ConfigError(f"--calibration images in {str(folder)!r} have different shapes {sorted(shapes)}; "
                          "use images of the model's input size")
    if images[0].shape[0] != channels:
        raise ConfigError(f"--calibration images have {images[0].shape[0]} channels; the model takes {channels}")
    return [np.stack(images[k:k + batch]) for k in range(0, len(images), batch)]


def _calibration(args: argparse.Namespace, spec: ModelSpec | None, channels: int) -> tuple[list[Any], Any, Any]:
    """(calibration batches, evaluation tasks, evaluation data) for ``--calibration`` (None, None without labels).

    ``scenes`` generates training scenes (seed of the saved model) for calibration
    and held-out ones (seed + 10000) for the metrics; ``nyuv2:FOLDER`` and
    ``cityscapes:FOLDER`` use their train and val splits; any other value is a
    folder of .npy images (calibration only: no labels, so no metrics).
    """
    import torch

    from mtgraph.data import Cityscapes, NYUv2, SceneDataset

    source, n, batch = args.calibration, args.calibration_images, 16
    kind, _, folder = source.partition(":")
    if spec is None:  # a folder saved without a factory: no task kinds to generate labelled data for
        if source == "scenes" or (kind in ("nyuv2", "cityscapes") and folder):
            raise ConfigError(f"--calibration {source}: this architecture records no task kinds (it has no "
                              "model.json); pass --calibration FOLDER with .npy images prepared like its input")
        return _npy_batches(Path(source), channels, n), None, None
    tasks = spec.build_tasks()
    if source == "scenes":
        size = spec.input_shape[-1]
        if len(spec.input_shape) != 3 or spec.input_shape[-2] != size:
            raise ConfigError(f"--calibration scenes needs a square [3, S, S] input; the model takes {list(spec.input_shape)}; "
                              "pass --calibration FOLDER with .npy images instead")
        designed = next((t for t in spec.tasks if t.kind == "designed"), None)
        if designed is not None:  # the demo's designed preset: the same scenes the architecture was trained on
            from mtgraph.data import SceneConfig

            scene = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(designed.options.get("scene", {})).items()}
            config = SceneConfig.designed(**scene)
            train: Any = SceneDataset.from_config(n, config, seed=spec.seed)
            val: Any = SceneDataset.from_config(args.eval_images, config.fully_labelled, seed=spec.seed + 10_000)
        else:
            seg = next((t for t in spec.tasks if t.kind == "segmentation"), None)
            classes = int(seg.options.get("num_classes", 5)) - 1 if seg is not None else 4
            train = SceneDataset(n, size=size, seed=spec.seed, num_classes=max(1, min(6, classes)))
            val = SceneDataset(args.eval_images, size=size, seed=spec.seed + 10_000, num_classes=train.config.num_classes)
    elif kind in ("nyuv2", "cityscapes") and folder:
        dataset = NYUv2 if kind == "nyuv2" else Cityscapes
        train, val = dataset(folder, "train"), dataset(folder, "val")
    else:
        return _npy_batches(Path(source), spec.input_shape[0], n), None, None
    images = [train[i][0] for i in range(min(n, len(train)))]
    batches = [torch.stack(images[k:k + batch]) for k in range(0, len(images), batch)]
    available = set(val[0][1])
    if any(task.target not in available for task in tasks.values()):
        print(f"note: {source} has no targets for every task ({sorted(available)}): int8 metrics are not compared")
        return batches, None, None
    return batches, tasks, val


def _cmd_export(args: argparse.Namespace) -> int:
    from mtgraph.exporters import InputNormalization, export_onnx

    spec, graph, params = _open_architecture(args)
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    quantize = "fp16" if args.fp16 else args.quantize
    default_name = {None: "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}[quantize]
    out = Path(args.out) if args.out else Path(args.arch) / default_name
    if (args.mean is None) != (args.std is None):
        raise ConfigError("give --mean and --std together (one value per input channel each)")
    normalization = InputNormalization(args.mean, args.std) if args.mean is not None else None
    calibration: list[Any] | None = None
    eval_tasks = eval_data = None
    if quantize == "int8":
        calibration, eval_tasks, eval_data = _calibration(args, spec, params.backbone.input_shape[0])
        if eval_tasks is not None and tasks is not None:
            eval_tasks = {t: eval_tasks[t] for t in tasks}
    result = export_onnx(graph, params, out, tasks=tasks, opset=args.opset, optimize=args.optimize,
                         dynamic_size=False if args.static_size else "auto", quantize=quantize,
                         calibration=calibration, normalization=normalization, eval_tasks=eval_tasks,
                         eval_data=eval_data)
    print(f"wrote {result.path} ({result.precision}; outputs: {', '.join(result.output_names)}; "
          f"max |onnxruntime - torch| = {result.worst_diff:.2e}"
          + (" on calibration images, informative only" if quantize == "int8" else "") + ")")
    axes = ", ".join(result.dynamic_axes) or "none"
    print(f"dynamic axes: {axes}" + (f" (height/width static: {result.static_size_reason})"
                                      if result.static_size_reason else ""))
    print(f"onnxruntime optimisation stored: {result.optimization}; BatchNorm nodes left: {result.batchnorm_nodes}")
    if result.quantization is not None:
        q = result.quantization
        print(f"{q.precision}: {q.method}")
        if q.metrics_fp32 and eval_data is not None:
            print(f"metrics on {len(eval_data)} held-out images ({args.calibration}; * = each task's primary metric):")
        else:
            print("no labelled data: output error relative to float32 on the calibration images:")
        print(q.table())
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from mtgraph.exporters import render

    _, graph, params = _open_architecture(args)
    suffix = Path(args.out).suffix.lstrip(".").lower() if args.out else ""
    if args.format is not None and suffix in RENDER_FORMATS and suffix != args.format:
        raise ConfigError(f"--format {args.format} but the output file {args.out!r} ends in .{suffix}; give one of them")
    fmt = args.format or (suffix if suffix in RENDER_FORMATS else "svg")
    out = Path(args.out) if args.out else Path(args.arch) / f"architecture.{fmt}"
    path = render(graph, params, out, format=fmt)
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


def _model_size(session: Any) -> tuple[int, int] | None:
    """The (height, width) the model takes: fixed in its input shape, else the traced size in its metadata."""
    shape = session.input_shape
    if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
        return int(shape[2]), int(shape[3])
    traced = [d for d in session.metadata.get("input_shape", "").split(",") if d.strip().isdigit()]
    return (int(traced[1]), int(traced[2])) if len(traced) == 3 else None


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (C,H,W) resized to ``size`` (bilinear, as torchvision's Resize on tensors without antialiasing)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    return torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0].numpy()


def _image_batch(paths: Sequence[Path], session: Any) -> np.ndarray:
    """The images of ``paths`` as one batch; images of another size than the model's are resized to it, with a note.

    A model with dynamic height and width takes any one size: images are only
    resized when they differ from each other (to the size the model was
    traced at, recorded in its metadata). Without a known size, images of
    different sizes are an error naming the sizes.
    """
    images = [_read_image(p) for p in paths]
    sizes = {tuple(im.shape[1:]) for im in images}
    fixed = session.input_shape[2:] if len(session.input_shape) == 4 else ()
    static = len(fixed) == 2 and None not in fixed
    target = _model_size(session) if static or len(sizes) > 1 else None
    if target is None:
        if len(sizes) > 1:
            found = ", ".join(f"{p.name} {h}x{w}" for p, (h, w) in zip(paths, (im.shape[1:] for im in images)))
            raise ConfigError(f"the images have different sizes ({found}) and the model does not record the size it "
                              "takes; resize them to one size first")
        return np.stack(images)
    for k, (path, image) in enumerate(zip(paths, images)):
        if tuple(image.shape[1:]) != target:
            print(f"note: {path.name} is {image.shape[1]}x{image.shape[2]}; resized to the model's input "
                  f"{target[0]}x{target[1]} (bilinear)")
            images[k] = _resized(image, target)
    return np.stack(images)


def _cmd_run(args: argparse.Namespace) -> int:
    from mtgraph.exporters.runtime import open_session

    providers = "auto" if args.providers == "auto" else [p for p in args.providers.split(",") if p]
    session = open_session(args.model_file, providers=providers, threads=args.threads)
    batch = _image_batch([Path(p) for p in args.images], session)
    normalization = session.normalization
    if normalization is not None:  # the model records what its input must be; images are read in [0, 1]
        batch = np.asarray(normalization.apply(batch), dtype=np.float32)
        print(f"normalised with the model's recorded mean {list(normalization.mean)} and std {list(normalization.std)}")
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
    from mtgraph.exporters.bench import bench_architecture

    spec, graph, params = _open_architecture(args)
    variants = [v for v in args.variants.split(",") if v]
    calibration = None
    if "ort-int8" in variants:
        calibration, _, _ = _calibration(args, spec, params.backbone.input_shape[0])
    report = bench_architecture(graph, params, variants=variants, threads=args.threads, batches=args.batches,
                                repeats=args.repeats, warmup=args.warmup, calibration=calibration)
    print(f"threads: torch.set_num_threads(n) for torch rows, intra_op_num_threads=n (inter-op 1) for onnxruntime "
          f"rows; input {list(params.backbone.input_shape)}")
    print(report)
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
        if args.out:
            out = save(result.graph, result.params, args.out, spec=spec)
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
    _add_out(p, "save the result as an architecture folder (files in it are replaced)")
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


def _add_out(p: argparse.ArgumentParser, help_text: str, default: str | None = None) -> None:
    """``-o/--out``, the one output flag of every command (``--output``: the old spelling, hidden, still accepted)."""
    p.add_argument("-o", "--out", dest="out", default=default, metavar="PATH", help=help_text)
    p.add_argument("--output", dest="out", default=default, help=argparse.SUPPRESS)


def _add_arch(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="architecture folder (architecture.mtir, weights.safetensors, model.json), such as "
                                "the architecture/ folder inside a demo or learn output folder")
    p.add_argument("--model", help="backbone factory to use instead of the recorded one (package.module:factory)")


def _add_calibration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", default="scenes",
                   help="int8 calibration images: 'scenes' (generated training scenes at the model's size, with "
                        "held-out scenes for the metrics before/after; the default), 'nyuv2:FOLDER', "
                        "'cityscapes:FOLDER' (train split to calibrate, val split for metrics), or a folder of .npy "
                        "images prepared like the model's input (no labels: output error only)")
    p.add_argument("--calibration-images", type=int, default=64, help="images used to calibrate int8 (default 64)")
    p.add_argument("--eval-images", type=int, default=128,
                   help="held-out generated scenes for the int8 metrics with --calibration scenes (default 128)")


def _add_deploy_flags(p: argparse.ArgumentParser) -> None:
    """The export subcommand's deployment flags (precision, optimisation, input description)."""
    p.add_argument("--quantize", choices=("int8", "fp16"), default=None,
                   help="int8: static quantisation calibrated on training images, every task's metric reported "
                        "before and after (default output ARCH/model.int8.onnx); fp16: float16 for GPU providers "
                        "(ARCH/model.fp16.onnx)")
    p.add_argument("--fp16", action="store_true", help="same as --quantize fp16")
    _add_calibration_flags(p)
    p.add_argument("--optimize", choices=("auto", "all", "extended", "basic", "none"), default="auto",
                   help="onnxruntime optimisation stored in the file: all (auto's choice for float32/int8; fastest, "
                        "specific to this CPU family), basic (portable across machines and providers), none")
    p.add_argument("--static-size", action="store_true",
                   help="keep height and width at the traced size (default: dynamic where the network allows)")
    p.add_argument("--mean", type=_floats, default=None,
                   help="per-channel input mean to record in the model's metadata, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_floats, default=None,
                   help="per-channel input std to record in the model's metadata, e.g. 0.229,0.224,0.225")


def _add_bench_flags(p: argparse.ArgumentParser) -> None:
    """The bench subcommand's flags."""
    p.add_argument("--variants", default="eager,compiled,ort-fp32,ort-int8",
                   help="comma-separated: eager, compiled (torch.compile; compiling takes a while), ort-fp32, ort-int8 "
                        "(default: all four)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts, the same for torch and onnxruntime in each row (default: 1 and all cores)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per variant and setting (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    _add_calibration_flags(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtgraph`` command."""
    parser = argparse.ArgumentParser(prog="mtgraph", description="Learn, compile, cost, export and draw multi-task networks.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (also after the command)")
    parser.add_argument("--version", action="version", version=f"mtgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        # SUPPRESS: given after the command it sets args.debug; not given, it leaves the top-level value alone.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        return p

    p = add("demo", _cmd_demo, "run the main job: generated scenes, a built-in backbone, a strategy through the "
                               "evaluation protocol (vs STN, One-Net and matched-compute baselines, over seeds)")
    p.add_argument("--strategy", choices=STRATEGIES, default="mtsl", help="structural-learning strategy (default: mtsl)")
    p.add_argument("--quick", action="store_true", help="fewer seeds and random draws, less data (under 45 s on 2 idle cores)")
    _add_out(p, "output folder (default: mtgraph-demo, or mtgraph-demo-quick with --quick); a rerun continues "
                "the demo there (finished runs are read back), report.md and the files it links are replaced, "
                "others kept; a folder holding a demo with other options is refused; the learned architecture is "
                "OUT/architecture")
    p.add_argument("--seed", type=int, default=0, help="the first seed of the scenes, weights and runs (default 0)")
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
    _add_out(p, "output folder (default: mtgraph-evaluation); a rerun continues the evaluation there (finished "
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

    p = add("inspect", _cmd_inspect, "trace a model and print its blocks: name, shapes, GMac, parameters, skippable "
                                     "(or, given a saved architecture folder, its backbone's blocks and its IR)")
    p.add_argument("model", help="resnet_tiny, torchvision:NAME, timm:NAME, package.module:factory, or a saved "
                                 "architecture folder")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="pretrained weights for the model: a .safetensors file or a torch state dict (read with "
                        "weights_only=True; of the whole classifier or of its feature extractor); default random")
    p.add_argument("--input-size", type=_shape, default=(3, 64, 64), help="C,H,W (default 3,64,64)")
    p.add_argument("--cuts", default="auto", help="auto, blocks, stages or comma-separated module names")
    p.add_argument("--leaf", action="append", help="module name to keep as a black box (repeatable)")
    p.add_argument("--whole", action="store_true", help="keep a zoo classifier whole instead of its feature extractor")

    p = add("learn", _cmd_learn, "run a strategy on a dataset and save the learned architecture")
    p.add_argument("--strategy", choices=STRATEGIES, default="mtsl", help="structural-learning strategy (default: mtsl)")
    p.add_argument("--data", default="scenes", help="scenes, nyuv2:FOLDER or cityscapes:FOLDER")
    p.add_argument("--model", default="resnet_tiny", help="backbone (see inspect)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="pretrained backbone weights: a .safetensors file or a torch state dict (read with "
                        "weights_only=True), of the whole classifier or its feature extractor; default random")
    p.add_argument("--tasks", default="seg,depth,edges,normals,autoencoder", help="comma-separated task names")
    p.add_argument("--size", type=int, default=64, help="image size in pixels for generated scenes")
    p.add_argument("--epochs", type=float, default=None, help="training budget in epochs (strategy default if omitted)")
    p.add_argument("--config", help="TOML file with the same options (command-line flags win)")
    _add_out(p, "output folder (default mtgraph-learn; training checkpoints go to OUT/checkpoints and are kept; a "
                "folder holding another run's checkpoints is refused; OUT/architecture is replaced when the run ends)",
             default="mtgraph-learn")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, weights and strategy (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT/checkpoints (same options and seed): finished phases "
                        "are read back, the interrupted one resumes; without it a non-empty OUT/checkpoints is refused")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: one per core not busy with other processes, printed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("cost", _cmd_cost, "print the MACs per image and parameters of a saved architecture: total, per task, "
                               "shared vs task-specific, in the units that fit")
    _add_arch(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("export", _cmd_export, "export a saved architecture to ONNX (one output per task), parity-checked")
    _add_arch(p)
    _add_out(p, "ONNX file (default ARCH/model.onnx); an existing file is replaced, atomically, only once the new "
                "one passed every check")
    p.add_argument("--tasks", help="comma-separated tasks to export (default: all)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    _add_deploy_flags(p)

    p = add("render", _cmd_render, "draw a saved architecture (task-coloured sharing diagram)")
    _add_arch(p)
    _add_out(p, "output file (default ARCH/architecture.FORMAT); its suffix (.svg, .png, .pdf, .dot) picks the "
                "format; an existing file is replaced, atomically")
    p.add_argument("--format", choices=RENDER_FORMATS, default=None,
                   help="svg, png, pdf or dot (default: the output file's suffix, else svg)")

    p = add("run", _cmd_run, "run an exported ONNX model on images through onnxruntime")
    p.add_argument("model_file", help="model.onnx written by 'mtgraph export'")
    p.add_argument("images", nargs="+", help=".npy arrays (C,H,W or H,W,C, float in [0,1]) or PNG/JPEG files; "
                                             "images of another size than the model's input are resized to it")
    p.add_argument("--providers", default="auto", help="auto or comma-separated: tensorrt,cuda,cpu")
    p.add_argument("--threads", type=_positive, default=None,
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    _add_out(p, "folder to save each task's output as TASK.npy (existing files of those names are replaced)")

    p = add("bench", _cmd_bench, "median latency of a saved architecture: torch eager, torch.compile, onnxruntime "
                                 "float32 and int8, per thread count and batch size")
    _add_arch(p)
    _add_bench_flags(p)
    _add_compiler_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # A warning is one line naming its kind, not Python's two lines quoting mtgraph's source.
    warnings.formatwarning = lambda message, category, *rest, **named: f"mtgraph: {category.__name__}: {message}\n"
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
