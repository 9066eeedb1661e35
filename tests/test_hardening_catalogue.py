"""A catalogue of bad inputs across mtgraph (issue 13).

Each case builds one bad input, runs the public call a user would make, and
checks the *typed* error (a subclass of :class:`mtgraph.MTGraphError`) and that
its message names what went wrong and where (a block, task, option, line, file
or step). A user catching ``MTGraphError`` must never see a bare ``KeyError``,
``RuntimeError`` or pickle traceback.

The cases are data: ``Case(id, run, error, words)``; ``run(tmp_path)`` must
raise ``error`` with every string of ``words`` in its message. Cases the
current code gets wrong, in files this test's author may not edit, are marked
``xfail(strict=True)`` with the fix in their reason.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import backbones
import numpy as np
import pytest
import torch
from torch import nn

import mtgraph
from mtgraph import (
    CheckpointError,
    ConfigError,
    CutError,
    DataError,
    ExportError,
    HeadError,
    IRError,
    MTGraphError,
    ParseError,
    PassError,
    TraceError,
    TrainError,
    VerifyError,
)
from mtgraph.ir.text import MAX_TEXT_CHARS

TASKS = ("S", "E", "D")


# --------------------------------------------------------------------------- #
# Small shared fixtures (built once; cases never modify them)
# --------------------------------------------------------------------------- #

_CACHE: dict[str, object] = {}


def _chain() -> tuple[nn.Module, torch.Tensor, mtgraph.Backbone]:
    """A 3-block residual chain, traced once per session."""
    if "chain" not in _CACHE:
        model, x = backbones.chain(3)
        _CACHE["chain"] = (model, x, mtgraph.trace(model, x))
    return _CACHE["chain"]  # type: ignore[return-value]


def _heads(tasks=TASKS) -> dict[str, nn.Module]:
    return backbones.make_heads(_chain()[2].output_shape, tasks)


def _arch(tasks=TASKS) -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    backbone = _chain()[2]
    graph = mtgraph.stn(backbone.num_blocks, tasks)
    return graph, mtgraph.ParamStore.create(graph, backbone, _heads(tasks))


def _saved(tmp_path: Path) -> Path:
    graph, params = _arch()
    return mtgraph.save(graph, params, tmp_path / "arch")


def _load(folder: Path) -> None:
    mtgraph.load(folder, _chain()[2], _heads())


def _trace(factory: Callable[[], tuple[nn.Module, torch.Tensor]], **kwargs) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        model, x = factory()
        return mtgraph.trace(model, x, **kwargs)

    return run


# --------------------------------------------------------------------------- #
# Case builders (one per family of inputs)
# --------------------------------------------------------------------------- #


def _wrong_rank(tmp_path: Path) -> None:
    model, x = backbones.chain(2)
    mtgraph.trace(model, x[0, 0])  # [H, W]: no batch or channel dimension


def _heads_call(heads_of: Callable[[], object]) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        backbone = _chain()[2]
        graph = mtgraph.stn(backbone.num_blocks, TASKS)
        return mtgraph.ParamStore.create(graph, backbone, heads_of())  # type: ignore[arg-type]

    return run


def _missing_head() -> dict[str, nn.Module]:
    heads = _heads()
    del heads["E"]
    return heads


def _head_not_module() -> dict[str, object]:
    heads: dict[str, object] = dict(_heads())
    heads["D"] = lambda x: x
    return heads


def _head_wrong_channels() -> dict[str, nn.Module]:
    heads = _heads()
    heads["S"] = nn.Conv2d(99, 2, 1)  # the backbone gives 4 channels
    return heads


def _tasks(names: list[str]) -> Callable[[Path], object]:
    return lambda tmp_path: mtgraph.stn(3, names)


def _parse(text: str, *, num_blocks: int = 3, weight_keys: set[str] | None = None) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        graph = mtgraph.parse_graph(text)
        mtgraph.verify(graph, num_blocks=num_blocks, weight_keys=weight_keys)
        return graph

    return run


def _huge_text(tmp_path: Path) -> None:
    mtgraph.parse_graph("%0 = input\n" + " " * MAX_TEXT_CHARS)


def _pass(make: Callable[[], object], pipeline: bool = False) -> Callable[[Path], object]:
    """Build a pass (its options are checked when it is built or run) and run it on an STN."""

    def run(tmp_path: Path) -> object:
        from mtgraph.passes import run_passes

        graph, params = _arch()
        p = make()
        return run_passes(graph, params, [p])  # type: ignore[list-item]

    return run


def _pipeline(text: str) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.passes import parse_pipeline

        return parse_pipeline(text)

    return run


def _weights(mutate: Callable[[Path], None]) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        folder = _saved(tmp_path)
        mutate(folder / "weights.safetensors")
        return _load(folder)

    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign_tensors(rename: bool) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        name = sorted(tensors)[0]
        if rename:
            tensors["b9.S/conv.weight"] = tensors.pop(name)
        else:
            tensors[name] = torch.zeros(7, 7)
        save_file(tensors, str(path), metadata={"format": "mtgraph-weights-1", "gates": "{}", "aliases": "{}"})

    return mutate


class _Marker:
    """Unpickling this would create a file: the loader must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickled_weights(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    torch.save({"b0.S/weight": _Marker(tmp_path / "pwned")}, folder / "weights.safetensors")
    _load(folder)


def _bad_arch_text(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    (folder / "architecture.mtir").write_text("%0 = input\n%1 = conv 0 (%0)\nS = head (%1)\n")
    _load(folder)


def _missing_arch(tmp_path: Path) -> None:
    _load(tmp_path / "nowhere")


def _export(target: Callable[[Path], Path]) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.exporters import export_onnx

        graph, params = _arch()
        return export_onnx(graph, params, target(tmp_path))

    return run


def _existing_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").mkdir()
    return tmp_path / "model.onnx"


def _render(name: str, fmt: str) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.exporters import render

        graph, params = _arch()
        return render(graph, params, tmp_path / name, format=fmt)

    return run


def _select_unknown(tmp_path: Path) -> object:
    from mtgraph.exporters import select_tasks

    graph, params = _arch()
    return select_tasks(graph, params, ["S", "Q"])


def _npy(layout: Callable[[Path], None]) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.data.npy_folder import NpyFolderDataset

        root = tmp_path / "data"
        layout(root)
        dataset = NpyFolderDataset(root, "train", ["seg"], num_classes=3)
        return dataset[0]

    return run


def _no_label_folder(root: Path) -> None:
    (root / "train" / "image").mkdir(parents=True)
    np.save(root / "train" / "image" / "0.npy", np.zeros((8, 8, 3), np.float32))


def _empty_split(root: Path) -> None:
    (root / "train" / "image").mkdir(parents=True)
    (root / "train" / "label").mkdir(parents=True)


def _bad_image_shape(root: Path) -> None:
    for role in ("image", "label"):
        (root / "train" / role).mkdir(parents=True)
    np.save(root / "train" / "image" / "0.npy", np.zeros((8, 8), np.float32))
    np.save(root / "train" / "label" / "0.npy", np.zeros((8, 8), np.int64))


def _pickled_npy(root: Path) -> None:
    for role in ("image", "label"):
        (root / "train" / role).mkdir(parents=True)
    np.save(root / "train" / "image" / "0.npy", np.array([_Marker(root / "pwned")], dtype=object), allow_pickle=True)
    np.save(root / "train" / "label" / "0.npy", np.zeros((8, 8), np.int64))


def _scenes(size: int) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.data import SceneDataset

        return SceneDataset(4, size=size, seed=0)

    return run


def _nan_at_step(tmp_path: Path) -> None:
    from mtgraph.train import Hook, fit

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    try:
        import train_run as run
    finally:
        sys.path.pop(0)

    class NaNAtThree(Hook):
        def extra_loss(self, state, outputs, batch):
            return torch.tensor(math.nan) if state.step == 3 else None

    tasks = run.build_tasks()
    graph, params = run.build_model(tasks, seed=0)
    fit(graph, params, tasks, run.build_data(8, seed=1), steps=6, batch_size=2, hooks=[NaNAtThree()],
        seed=0, device="cpu", progress=False)


def _fit_no_budget(tmp_path: Path) -> None:
    from mtgraph.train import fit

    graph, params = _arch()
    fit(graph, params, {}, [], progress=False)


def _resume_unreadable(tmp_path: Path) -> None:
    """Resume a phase whose every checkpoint was truncated: refused, naming each file (issue 23)."""
    import warnings

    from mtgraph.train import fit

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    try:
        import train_run as run
    finally:
        sys.path.pop(0)
    tasks = run.build_tasks()
    graph, params = run.build_model(tasks, seed=0)
    data = run.build_data(8, seed=1)
    fit(graph, params, tasks, data, steps=2, batch_size=8, checkpoint=tmp_path, device="cpu", progress=False)
    for path in tmp_path.glob("train.step-*.safetensors"):
        _truncate(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each skipped file also warns; the error is what this case checks
        fit(graph, params, tasks, data, steps=2, batch_size=8, checkpoint=tmp_path, resume=True, device="cpu",
            progress=False)


def _checkpoint(mutate: Callable[[Path], None]) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.train import load_checkpoint

        path = tmp_path / "train-00000001.ckpt"
        mutate(path)
        return load_checkpoint(path)

    return run


def _checkpoint_pickle(path: Path) -> None:
    torch.save({"state": _Marker(path.parent / "pwned")}, path)


def _checkpoint_foreign(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "something-else"})


def _checkpoint_config(**kwargs) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.train import CheckpointConfig

        return CheckpointConfig(tmp_path, **kwargs)

    return run


def _spec_folder(tmp_path: Path, backbone: str) -> Path:
    """An architecture folder whose model.json names ``backbone``; an importable module there would drop a marker."""
    from mtgraph.spec import ModelSpec, TaskSpec

    (tmp_path / "evil_factory_mod.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'pwned')!r}).touch()\n"
        "def make():\n    raise SystemExit('never')\n"
    )
    folder = tmp_path / "arch"
    folder.mkdir()
    ModelSpec(backbone, (3, 32, 32), (TaskSpec("seg", "segmentation", {}),)).save(folder)
    return folder


def _spec_untrusted(tmp_path: Path) -> object:
    from mtgraph.spec import ModelSpec

    folder = _spec_folder(tmp_path, "evil_factory_mod:make")
    sys.path.insert(0, str(tmp_path))
    try:
        return ModelSpec.load(folder)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evil_factory_mod", None)


def _spec_not_utf8(tmp_path: Path) -> object:
    from mtgraph.spec import ModelSpec

    folder = _spec_folder(tmp_path, "resnet_tiny")
    (folder / "model.json").write_bytes(b'{"backbone": "\xff\xfe"}')
    return ModelSpec.load(folder)


def _spec_from(tmp_path: Path, text: str) -> object:
    from mtgraph.spec import ModelSpec

    (tmp_path / "model.json").write_text(text)
    return ModelSpec.load(tmp_path)


def _spec_huge(tmp_path: Path) -> object:
    from mtgraph.spec import ModelSpec

    with open(tmp_path / "model.json", "wb") as f:
        f.truncate(8 * 1024**3)  # sparse: 8 GiB that must not be read
    return ModelSpec.load(tmp_path)


def _zoo(name: str) -> Callable[[Path], object]:
    def run(tmp_path: Path) -> object:
        from mtgraph.zoo import resolve_model

        return resolve_model(name)

    return run


def _cli(argv: Callable[[Path], list[str]]) -> Callable[[Path], object]:
    """Run the CLI in-process; a failure must be a non-zero exit with a single stderr line."""

    def run(tmp_path: Path) -> object:
        from mtgraph.cli import main

        args = argv(tmp_path)
        errors = []
        import contextlib
        import io

        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 2
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        if code == 0:
            errors.append("exit code 0")
        # One error line; argparse prefixes its own with the (possibly wrapped) usage text.
        said = [line for line in lines if not line.startswith(("usage:", " "))]
        if len(said) != 1:
            errors.append(f"{len(said)} error lines")
        if any("internal error" in line for line in lines):  # an untyped exception reached the CLI
            errors.append("internal error")
        raise _CLIFailure(code, lines, errors)

    return run


class _CLIFailure(MTGraphError):
    """Carries a CLI run's exit code and stderr to the assertion (test-only)."""

    def __init__(self, code: int, lines: list[str], problems: list[str]) -> None:
        super().__init__(" | ".join(lines))
        self.code, self.lines, self.problems = code, lines, problems


# --------------------------------------------------------------------------- #
# The catalogue
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` must raise ``error`` whose message contains every string of ``words``."""

    id: str
    run: Callable[[Path], object]
    error: type[MTGraphError]
    words: tuple[str, ...]
    xfail: str | None = None


_GOOD_IR = "%0 = input\n%1 = block 0 w=b0.S (%0)\n%2 = block 1 w=b1.S (%1)\n%3 = block 2 w=b2.S (%2)\nS = head (%3)\n"

CASES: list[Case] = [
    # -- backbones ---------------------------------------------------------
    Case("backbone-data-dependent", _trace(backbones.data_dependent), TraceError, (backbones.DATA_DEPENDENT_MODULE, "leaf")),
    # Flat tuples and str-keyed dicts of tensors are multi-member values (issue 21); anything else is refused.
    Case("backbone-tuple-with-int-output", _trace(backbones.mixed_output), TraceError, ("tuple", "other than tensors")),
    Case("backbone-int-keyed-dict-output", _trace(backbones.int_keyed_output), TraceError, ("dict", "[0]", "strings")),
    Case("backbone-wrong-input-rank", _wrong_rank, TraceError, ("batch", "[8, 8]")),
    # A conv net accepts an unbatched [C, H, W] image, so the full trace passes; one sample of it does not (issue 23).
    Case("backbone-5d-input", lambda p: mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
                                                      torch.zeros(1, 1, 3, 16, 16)),
         TraceError, ("[1, 1, 3, 16, 16]", "RuntimeError", "Check example_input's shape")),
    Case("backbone-unbatched-3d-input", lambda p: mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
                                                                torch.zeros(3, 16, 16)),
         TraceError, ("[3, 16, 16]", "[1, 16, 16]", "batch", "unsqueeze(0)")),
    Case("backbone-not-a-module", lambda p: mtgraph.trace(lambda x: x, torch.zeros(1, 3, 8, 8)), TraceError, ("nn.Module", "function")),
    Case("backbone-cut-does-not-exist", _trace(lambda: backbones.chain(3), cuts=["7", "nope"]), CutError, ("nope",)),
    Case("backbone-cut-granularity-unknown", _trace(lambda: backbones.chain(3), cuts="layers"), CutError, ("layers", "blocks")),
    Case("backbone-leaf-unknown", _trace(lambda: backbones.chain(3), leaf_modules=["ghost"]), TraceError, ("ghost",)),
    # -- heads ---------------------------------------------------------------
    Case("heads-missing", _heads_call(_missing_head), HeadError, ("'E'",)),
    Case("heads-not-a-module", _heads_call(_head_not_module), HeadError, ("'D'", "nn.Module", "function")),
    Case("heads-mismatched-shape", _heads_call(_head_wrong_channels), HeadError, ("'S'", "99", "4")),
    Case("heads-not-a-mapping", _heads_call(lambda: [nn.Identity()]), HeadError, ("mapping", "list")),
    # -- task names ------------------------------------------------------------
    Case("tasks-duplicate", _tasks(["S", "E", "S"]), IRError, ("'S'", "unique")),
    Case("tasks-empty-list", _tasks([]), IRError, ("task",)),
    Case("tasks-empty-name", _tasks(["S", ""]), IRError, ("''", "identifier")),
    Case("tasks-not-identifier", _tasks(["S", "seg-map"]), IRError, ("'seg-map'", "identifier")),
    Case("tasks-non-ascii", _tasks(["S", "tiefe\u00e9"]), IRError, ("tiefe", "identifier")),
    # "input" names an exported model's input: refused where tasks are first named, not only at export.
    Case("tasks-reserved-input", _tasks(["input", "E"]), IRError, ("'input'", "reserved")),
    # -- IR text -----------------------------------------------------------------
    Case("ir-forward-reference", _parse("%0 = input\n%1 = block 0 w=b0.S (%2)\n%2 = block 1 w=b1.S (%1)\nS = head (%2)\n"),
         VerifyError, ("%1", "%2", "earlier")),
    Case("ir-self-cycle", _parse("%0 = input\n%1 = block 0 w=b0.S (%1)\nS = head (%1)\n"), VerifyError, ("%1", "earlier")),
    Case("ir-unknown-kind", _parse("%0 = input\n%1 = conv 0 w=b0.S (%0)\nS = head (%1)\n"), ParseError, ("line 2", "conv")),
    Case("ir-unknown-weights", _parse(_GOOD_IR, weight_keys={"b0.S", "b1.S"}), VerifyError, ("'b2.S'", "%3")),
    Case("ir-truncated-line", _parse(_GOOD_IR[: _GOOD_IR.index("(%2)")]), ParseError, ("line 4",)),
    Case("ir-truncated-no-head", _parse(_GOOD_IR.rsplit("S = head", 1)[0]), VerifyError, ("head",)),
    Case("ir-misnumbered", _parse("%0 = input\n%5 = block 0 w=b0.S (%0)\nS = head (%1)\n"), ParseError, ("line 2", "%5")),
    Case("ir-block-out-of-range", _parse(_GOOD_IR, num_blocks=2), VerifyError, ("block 2", "2 blocks", "%3")),
    Case("ir-second-head", _parse(_GOOD_IR + "S = head (%3)\n"), VerifyError, ("'S'", "second head")),
    Case("ir-huge-input", _huge_text, ParseError, ("characters", "limit")),
    Case("ir-huge-node-reference", _parse("%0 = input\n%1 = block 0 w=b0.S (%" + "9" * 5000 + ")\nS = head (%1)\n"),
         ParseError, ("line 2",)),
    Case("ir-huge-node-number", _parse("%" + "0" * 5000 + " = input\nS = head (%0)\n"), ParseError, ("line 1",)),
    Case("ir-empty", _parse("# nothing\n\n"), ParseError, ("no nodes",)),
    Case("ir-not-text", lambda p: mtgraph.parse_graph(b"%0 = input"), ParseError, ("str", "bytes")),
    # -- passes: invalid options ---------------------------------------------------
    Case("pass-fuse-init", _pass(lambda: _passes().FusePass(tasks=("S", "E"), block=0, init="median")), PassError, ("init", "median")),
    Case("pass-fuse-block", _pass(lambda: _passes().FusePass(tasks=("S", "E"), block=9)), PassError, ("9",)),
    Case("pass-fuse-unknown-task", _pass(lambda: _passes().FusePass(tasks=("S", "Q"), block=0)), PassError, ("'Q'",)),
    Case("pass-split-empty", _pass(lambda: _passes().SplitPass(block=0, groups=())), PassError, ("groups", "empty")),
    Case("pass-split-overlap", _pass(lambda: _passes().SplitPass(block=0, groups=(("S", "E"), ("E",)))), PassError, ("'E'", "more than one group")),
    Case("pass-skip-unknown-task", _pass(lambda: _passes().SkipPass(task="Q", block=1)), PassError, ("'Q'",)),
    Case("pass-gate-alpha", _pass(lambda: _passes().GatePass(task="S", start=0, end=1, alpha=1.5)), PassError, ("alpha", "1.5")),
    Case("pass-gate-mode", _pass(lambda: _passes().GatePass(task="S", start=0, end=1, mode="argmax")), PassError, ("mode", "argmax")),
    Case("pass-gate-tau", _pass(lambda: _passes().GatePass(task="S", start=0, end=1, tau=0.0)), PassError, ("tau",)),
    Case("pass-gate-range", _pass(lambda: _passes().GatePass(task="S", start=2, end=1)), PassError, ("start=2", "end=1")),
    Case("pass-gate-private", _pass(lambda: _passes().GatePass(task="S", start=0, end=1, private="random")), PassError, ("private", "random")),
    Case("pass-harden-threshold", _pass(lambda: _passes().HardenPass(threshold=2.0)), PassError, ("threshold", "2.0")),
    Case("pipeline-unknown-pass", _pipeline("cse,frobnicate"), ParseError, ("frobnicate",)),
    Case("pipeline-unknown-option", _pipeline("fuse{tasks=S+E,block=1,speed=3}"), ParseError, ("speed", "fuse")),
    Case("pipeline-missing-option", _pipeline("fuse{tasks=S+E}"), ParseError, ("block",)),
    Case("pipeline-bad-value", _pipeline("fuse{tasks=S+E,block=one}"), ParseError, ("block",)),
    Case("pipeline-option-twice", _pipeline("dce,skip{task=S,block=1,block=2}"), ParseError, ("block", "twice")),
    Case("pipeline-unclosed", _pipeline("fuse{tasks=S+E,block=1"), ParseError, ("'}'",)),
    Case("pipeline-empty", _pipeline(""), ParseError, ("empty",)),
    Case("pipeline-huge", _pipeline("cse," * 1_000_000 + "dce"), ParseError, ("characters", "limit")),
    # -- weight files ----------------------------------------------------------------
    Case("weights-truncated", _weights(_truncate), CheckpointError, ("weights.safetensors", "truncated")),
    Case("weights-empty-file", _weights(lambda p: p.write_bytes(b"")), CheckpointError, ("weights.safetensors",)),
    Case("weights-wrong-keys", _weights(_foreign_tensors(rename=True)), CheckpointError, ("weights.safetensors", "missing")),
    Case("weights-wrong-shapes", _weights(_foreign_tensors(rename=False)), CheckpointError, ("weights.safetensors", "shape", "[7, 7]")),
    Case("weights-pickle-in-disguise", _pickled_weights, CheckpointError, ("weights.safetensors",)),
    Case("weights-not-mtgraph", _weights(lambda p: _checkpoint_foreign(p)), CheckpointError, ("weights.safetensors", "format")),
    Case("arch-text-malformed", _bad_arch_text, ParseError, ("line 2", "conv")),
    Case("arch-folder-missing", _missing_arch, CheckpointError, ("nowhere", "architecture.mtir")),
    # -- checkpoints -----------------------------------------------------------------
    Case("checkpoint-missing", _checkpoint(lambda p: None), CheckpointError, ("train-00000001.ckpt", "does not exist")),
    Case("checkpoint-pickle", _checkpoint(_checkpoint_pickle), CheckpointError, ("train-00000001.ckpt",)),
    Case("checkpoint-foreign-format", _checkpoint(_checkpoint_foreign), CheckpointError, ("something-else",)),
    Case("checkpoint-every-zero", _checkpoint_config(every=0), ConfigError, ("every", "0")),
    Case("checkpoint-keep-zero", _checkpoint_config(keep=0), ConfigError, ("keep", "0")),
    Case("resume-every-checkpoint-unreadable", _resume_unreadable, CheckpointError,
         ("no readable checkpoint of phase 'train'", "train.step-000000002.safetensors", "Remove these files")),
    # -- export targets ------------------------------------------------------------------
    Case("export-missing-folder", _export(lambda p: p / "absent" / "m.onnx"), ExportError, ("absent", "does not exist")),
    Case("export-target-is-directory", _export(_existing_dir), ExportError, ("model.onnx", "folder")),
    Case("export-unknown-task", _select_unknown, ExportError, ("'Q'",)),
    Case("render-unknown-format", _render("g.gif", "gif"), ExportError, ("gif",)),
    Case("render-suffix-mismatch", _render("g.png", "svg"), ExportError, (".png", "svg")),
    # -- datasets ----------------------------------------------------------------------------
    Case("data-missing-root", _npy(lambda root: None), DataError, ("data",)),
    Case("data-wrong-layout", _npy(_no_label_folder), DataError, ("label",)),
    Case("data-empty-split", _npy(_empty_split), DataError, ("empty",)),
    Case("data-bad-image-shape", _npy(_bad_image_shape), DataError, ("0.npy", "(8, 8)")),
    Case("data-pickled-npy", _npy(_pickled_npy), DataError, ("0.npy",)),
    Case("data-scenes-size", _scenes(8), ConfigError, ("size", "8")),
    # -- training ------------------------------------------------------------------------------
    Case("train-nan-at-step", _nan_at_step, TrainError, ("step 3", "non-finite")),
    Case("train-no-budget", _fit_no_budget, ConfigError, ("epochs", "steps")),
    # -- model.json and model names ------------------------------------------------------------
    Case("spec-untrusted-factory-not-imported", _spec_untrusted, ConfigError, ("evil_factory_mod:make", "--model")),
    Case("spec-not-utf8", _spec_not_utf8, CheckpointError, ("model.json", "UTF-8")),
    Case("spec-huge-file", _spec_huge, CheckpointError, ("model.json", "limit")),
    Case("spec-malformed", lambda p: _spec_from(p, '{"backbone": 3}'), CheckpointError, ("model.json", "malformed")),
    Case("zoo-timm-hub-name", _zoo("timm:hf-hub:someone/model"), ConfigError, ("hf-hub:someone/model",)),
    Case("zoo-not-a-spec", _zoo("resnet9000"), ConfigError, ("resnet9000", "package.module:factory")),
    # -- command line --------------------------------------------------------------------------
    Case("cli-cost-missing-folder", _cli(lambda p: ["cost", str(p / "absent")]), _CLIFailure, ("absent",)),
    Case("cli-inspect-bad-factory", _cli(lambda p: ["inspect", "no_such_pkg_xyz.models:net"]), _CLIFailure, ("no_such_pkg_xyz",)),
    Case("cli-export-missing-folder", _cli(lambda p: ["export", str(p / "absent")]), _CLIFailure, ("absent",)),
    Case("cli-run-missing-model", _cli(lambda p: ["run", str(p / "m.onnx"), str(p / "x.npy")]), _CLIFailure, ("m.onnx",)),
    Case("cli-inspect-bad-size", _cli(lambda p: ["inspect", "resnet_tiny", "--input-size", "3,x"]), _CLIFailure, ("input-size",)),
]


def _passes():
    import mtgraph.passes as passes

    return passes


def _params():
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input_raises_typed_error_naming_the_problem(case: Case, tmp_path: Path) -> None:
    with pytest.raises(MTGraphError) as info:
        case.run(tmp_path)
    exc = info.value
    assert isinstance(exc, case.error), f"{type(exc).__name__} is not a {case.error.__name__}: {exc}"
    message = str(exc)
    for word in case.words:
        assert word in message, f"{word!r} not in the message: {message}"
    # torch.fx appends its own context to errors raised inside a graph; a user's message is mtgraph's words only.
    assert not any(noise in message for noise in ("While executing", "Original traceback", "tlparse")), message
    if isinstance(exc, _CLIFailure):
        assert exc.code != 0 and not exc.problems, (exc.code, exc.problems, exc.lines)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "data" / "pwned").exists()


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40


# --------------------------------------------------------------------------- #
# Inputs that look odd but must work
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["tied", "twice_called"])
def test_tied_weights_and_modules_called_twice_work(name: str, tmp_path: Path) -> None:
    model, x = getattr(backbones, name)()
    backbone = mtgraph.trace(model, x)
    heads = backbones.make_heads(backbone.output_shape, ("S", "E"))
    graph = mtgraph.one_net(backbone.num_blocks, ("S", "E"))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    module = mtgraph.compile(graph, params).eval()
    with torch.no_grad():
        out = module(x)
        expected = model.eval()(x)
        for task in ("S", "E"):
            torch.testing.assert_close(out[task], heads[task](expected))
    mtgraph.save(graph, params, tmp_path / "a")
    graph2, params2 = mtgraph.load(tmp_path / "a", backbone, heads)
    with torch.no_grad():
        again = mtgraph.compile(graph2, params2).eval()(x)
    for task in ("S", "E"):
        assert torch.equal(out[task], again[task])


def test_pickle_marker_class_really_executes_when_unpickled(tmp_path: Path) -> None:
    # Guards the safe-loading cases: the payload they plant is live.
    pickle.loads(pickle.dumps(_Marker(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- #
# Safe loading: a pickle where weights are expected is refused, never executed
# --------------------------------------------------------------------------- #


def _plant_pickle(path: Path, marker: Path, how: str) -> None:
    payload = {"b0.S/weight": _Marker(marker), "state": _Marker(marker)}
    if how == "torch.save":  # zip container, what a PyTorch user would hand over
        torch.save(payload, path)
    else:  # a bare pickle stream
        path.write_bytes(pickle.dumps(payload, protocol=2))


@pytest.mark.parametrize("how", ["torch.save", "raw-pickle"])
@pytest.mark.parametrize("where", ["architecture-weights", "training-checkpoint"])
def test_malicious_pickle_is_refused_without_executing(where: str, how: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    if where == "architecture-weights":
        folder = _saved(tmp_path)
        _plant_pickle(folder / "weights.safetensors", marker, how)
        with pytest.raises(CheckpointError, match="weights.safetensors"):
            _load(folder)
    else:
        from mtgraph.train import latest_checkpoint, load_checkpoint
        from mtgraph.train.checkpoint import checkpoint_path

        path = checkpoint_path(tmp_path / "ckpt", "train", 5)
        path.parent.mkdir()
        _plant_pickle(path, marker, how)
        assert latest_checkpoint(tmp_path / "ckpt", "train") == path
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)
    assert not marker.exists(), "the pickle was executed"
