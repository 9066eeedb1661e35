"""A self-contained program of a backbone's blocks and of the task heads, saved with ``torch.export``.

An architecture folder must reopen without the code that built its modules
(:func:`mtgraph.open`): a model wrapped from a user's own classes, saved from
Python, has no factory mtgraph could call again, and calling one would run
that user's code. :func:`write_program` therefore saves the *computation* of
every backbone block and every head as a ``torch.export`` program (ATen
operators and the names and shapes of the module's tensors, no Python code),
and :func:`read_program` rebuilds the traced backbone and the heads from it.

Layout, inside an architecture folder::

    program/program.json    format, torch version, the input, and per block its
                            signature row (shapes, MACs, shortcut) and file;
                            per task its head's file
    program/block_00.pt2    one torch.export archive per block ...
    program/head_TASK.pt2   ... and per head

**No weights.** Modules are exported on the meta device: the archives hold
tensor names, shapes and dtypes only; the values are in
``weights.safetensors``, loaded as for any architecture.

**No code on load.** :func:`read_program` checks every archive before handing
it to ``torch.export.load``: only the files ``torch.export.save`` writes, no
pickled payload (the sample inputs, which torch would unpickle, are written
empty), no custom objects. The graph names ATen operators only.

**Inference programs.** The programs are captured in eval mode: BatchNorm
uses its running statistics and dropout is off, whatever ``.train()`` says.
A reopened network computes exactly what the saved one computed in eval mode
(:func:`write_program` checks this bit for bit on every block and head, and
on every projection shortcut a skip can run); to train it further, load the
folder with the original modules (:func:`mtgraph.load`).
"""

from __future__ import annotations

import copy
import io
import json
import re
import weakref
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.errors import CheckpointError, ExportError, IRError
from mtgraph.frontend.backbone import Backbone, BlockInfo, dtype_name
from mtgraph.frontend.residual import find_shortcut, shortcut_module
from mtgraph.frontend.tracer import torch_message
from mtgraph.ir.nodes import head_weights
from mtgraph.ir.signature import BlockSignature, Shortcut, TensorSignature
from mtgraph.params import ParamStore

__all__ = ["PROGRAM_DIR", "PROGRAM_FILE", "FORMAT", "ProgramNorm", "ReopenWarning", "write_program", "read_program"]

PROGRAM_DIR = "program"
PROGRAM_FILE = "program.json"
FORMAT = "mtgraph-program-1"
#: Larger program.json files are refused unread (a backbone of a thousand blocks needs a few hundred kB).
MAX_PROGRAM_BYTES = 16 * 1024 * 1024
#: Larger archives are refused unread: with no weights inside, a block's program is a few kB to a few MB.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024

_NORMS = nn.modules.batchnorm._NormBase
#: Files a torch.export archive may hold (paths inside the zip, after its top folder).
_ARCHIVE_FILES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json|"
    r"data/weights/model_weights_config\.json|data/weights/weight_\d+|data/constants/model_constants_config\.json|"
    r"data/sample_inputs/model\.pt)"
)
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"


class ReopenWarning(UserWarning):
    """A saved architecture folder that :func:`mtgraph.open` cannot reopen (no factory, no program).

    Examples:
        >>> from mtgraph.program import ReopenWarning
        >>> issubclass(ReopenWarning, UserWarning)
        True
    """


class ProgramNorm(_NORMS):
    """The parameters and running statistics of a normalisation layer inside a reloaded program.

    The program's graph reads these tensors; the module is never called. It is
    a normalisation module so that code which finds running statistics by
    module type (:func:`mtgraph.params.running_statistics`: per-call-site
    statistics, recalibration) finds them in a reloaded block as in the
    original.

    Examples:
        >>> from mtgraph.program import ProgramNorm
        >>> from mtgraph.params import running_statistics
        >>> sorted(running_statistics(ProgramNorm(4)))
        ['num_batches_tracked', 'running_mean', 'running_var']
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("a ProgramNorm holds a reloaded program's tensors; the program's graph computes with them")


@dataclass(frozen=True)
class _Exported:
    """One module's archive bytes and what program.json records of it."""

    data: bytes
    record: dict[str, Any]


#: Exported archives per traced backbone (weakly: they go with it), keyed by ("block", index) or a head's structure.
#: Exporting costs about half a second per module; a strategy that saves many candidates of one problem pays once.
_CACHE: weakref.WeakKeyDictionary[Backbone, dict[tuple[Any, ...], _Exported]] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _strip_sample_inputs(archive: bytes) -> bytes:
    """The archive with an empty sample-inputs payload (torch unpickles it on load; mtgraph needs none)."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            inner = info.filename.partition("/")[2]
            target.writestr(info, b"" if inner == _SAMPLE_INPUTS else source.read(info.filename))
    return out.getvalue()


def _export(module: nn.Module, value: TensorSignature, what: str) -> bytes:
    """``module`` (on the meta device, in eval mode) as torch.export archive bytes, the batch dimension dynamic."""
    meta = copy.deepcopy(module).eval().to("meta")
    dtype = getattr(torch, value.dtype)
    example = torch.zeros((2, *value.shape), dtype=dtype, device="meta")
    try:
        program = torch.export.export(meta, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                      strict=False)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as exc:  # torch.export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise ExportError(
            f"{what}: torch.export cannot capture it ({torch_message(exc)}); such a module reopens only with its "
            "own code: save from a backbone built by a factory (mtgraph.spec.ModelSpec) or reload it with "
            "mtgraph.load(folder, backbone, heads)"
        ) from exc
    return _strip_sample_inputs(buffer.getvalue())


def _norm_records(module: nn.Module) -> list[dict[str, Any]]:
    """Where ``module`` has normalisation layers with running statistics, and their options."""
    records = []
    for path, sub in module.named_modules():
        if isinstance(sub, _NORMS) and sub.track_running_stats and path:
            records.append({"path": path, "num_features": int(sub.num_features), "eps": float(sub.eps),
                            "momentum": None if sub.momentum is None else float(sub.momentum),
                            "affine": bool(sub.affine)})
    return records


def _same(reference: torch.Tensor, got: torch.Tensor, what: str) -> None:
    if reference.shape != got.shape or not torch.equal(reference, got):
        gap = (reference - got).abs().max().item() if reference.shape == got.shape else "shape"
        raise ExportError(
            f"{what}: the exported program does not compute what the module computes (max |difference| {gap}); "
            "save it with a factory instead (mtgraph.spec.ModelSpec)"
        )


def _checked_program(module: nn.Module, value: TensorSignature, norms: list[dict[str, Any]], what: str,
                     shortcut: Shortcut | None = None, out_value: TensorSignature | None = None,
                     ) -> tuple[bytes, Shortcut | None]:
    """Export ``module``, reload it as :func:`read_program` will, and check it computes the same, bit for bit.

    For a block with a projection shortcut, also find the shortcut in the
    reloaded graph (node names are the program's) and check it computes the
    original shortcut's output. Returns the archive and that shortcut.
    """
    data = _export(module, value, what)
    reloaded = _module_from_archive(data, norms, what, class_name="Checked")
    reloaded.load_state_dict(module.state_dict())
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, value.dtype)
    x = torch.randn((2, *value.shape), generator=generator) if dtype.is_floating_point else torch.zeros((2, *value.shape))
    x = x.to(dtype)
    with evaluation_mode(module), evaluation_mode(reloaded):
        _same(module(x.clone()), _record_shapes(reloaded, x.clone()), what)
        if shortcut is None or not shortcut.has_weights:
            return data, shortcut
        assert isinstance(module, fx.GraphModule)  # a traced block: its projection was found in its graph
        assert out_value is not None  # given with every shortcut
        found = find_shortcut(reloaded, (value,), (out_value,))
        if found.kind != "projection":
            raise ExportError(f"{what}: its projection shortcut is not found in the exported program ({found.reason})")
        mapped = replace(shortcut, nodes=found.nodes)
        original, exported = shortcut_module(module, shortcut), shortcut_module(reloaded, mapped)
        assert original is not None and exported is not None  # projections have modules
        _same(original(x.clone()), exported(x.clone()), f"{what}, its projection shortcut")
    return data, mapped


def _block_entry(backbone: Backbone, index: int) -> _Exported:
    info = backbone.blocks[index]
    row = info.signature
    norms = _norm_records(info.module)
    what = f"block {index} ({info.name})"
    if len(row.inputs) != 1 or len(row.outputs) != 1:
        raise ExportError(
            f"{what} reads or passes on several tensors; a self-contained program holds single-tensor blocks only. "
            "Save from a backbone built by a factory (mtgraph.spec.ModelSpec), or reload with "
            "mtgraph.load(folder, backbone, heads)"
        )
    data, shortcut = _checked_program(info.module, row.inputs[0], norms, what, row.shortcut, row.outputs[0])
    assert shortcut is not None
    return _Exported(data, {
        "index": index, "name": info.name, "file": f"block_{index:02d}.pt2",
        "inputs": [_value_record(v) for v in row.inputs], "outputs": [_value_record(v) for v in row.outputs],
        "macs": row.macs, "params": row.params,
        "shortcut": {"kind": shortcut.kind, "nodes": list(shortcut.nodes), "reason": shortcut.reason,
                     "macs": shortcut.macs, "params": shortcut.params, "parameters": list(shortcut.parameters)},
        "state": [[name, list(shape)] for name, shape in row.state],
        "norms": norms,
    })


def _fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """The structure of ``module``: classes, simple attributes and tensor shapes of every submodule.

    Two copies of one head (a ParamStore copies the heads it is given) share
    it, so their export is shared; anything that cannot be compared by value
    (an attribute whose repr names its address) makes the fingerprints differ,
    which costs an export, never a wrong program.
    """
    parts = []
    for name, sub in module.named_modules():
        attributes = tuple(sorted((k, repr(v)) for k, v in vars(sub).items() if not k.startswith("_") and k != "training"))
        parts.append((name, type(sub).__module__, type(sub).__qualname__, attributes))
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items())
    return tuple(parts), state


def _head_entry(module: nn.Module, value: TensorSignature, task: str) -> _Exported:
    norms = _norm_records(module)
    data, _ = _checked_program(module, value, norms, f"the head of task {task!r}")
    return _Exported(data, {"norms": norms})


def _value_record(value: TensorSignature) -> dict[str, Any]:
    return {"shape": list(value.shape), "dtype": value.dtype}


def _check_copies(params: ParamStore) -> None:
    """Every block key's module must be a copy of its traced block: the program holds the traced blocks only."""
    rows = params.signature.blocks
    for key, module in params.items():
        index = _block_of(key)
        if index is None or index >= len(rows):
            continue  # a head or a gate
        state = tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())
        if state != rows[index].state:
            raise ExportError(
                f"weight key {key!r} holds a module that is not a copy of block {index} ({rows[index].name}); a "
                "self-contained program holds the traced blocks only. Save from a backbone built by a factory "
                "(mtgraph.spec.ModelSpec) instead"
            )


def _block_of(key: str) -> int | None:
    match = re.fullmatch(r"b(\d+)\..*", key)
    return int(match.group(1)) if match else None


def write_program(folder: str | Path, params: ParamStore, tasks: tuple[str, ...]) -> Path:
    """Write ``folder/program/``: every block of ``params.backbone`` and the heads of ``tasks``; return its path.

    Archives are exported once per backbone and head structure and reused by
    later saves in the same process. Files are written atomically,
    ``program.json`` last (a crash leaves the previous program whole or a new
    one whose index is not yet written).

    Args:
        folder: the architecture folder (``program/`` is made inside it).
        params: the store; its backbone's blocks and its heads are exported.
        tasks: the tasks whose heads to export.

    Returns:
        The path of ``program.json``.

    Raises:
        ExportError: a block or head cannot be captured by torch.export, its
            program does not compute what it computes, a weight key's module is
            not a copy of its block, or a file cannot be written.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.program import read_program, write_program
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     index = write_program(folder, params, ("seg",))
        ...     loaded, heads = read_program(folder)
        >>> index.name, [block.name for block in loaded], list(heads)
        ('program.json', ['0', '1'], ['seg'])
    """
    from mtgraph.persist import atomic_write_bytes

    _check_copies(params)
    backbone = params.backbone
    cache = _CACHE.setdefault(backbone, {})
    blocks = []
    for index in range(backbone.num_blocks):
        key: tuple[Any, ...] = ("block", index)
        if key not in cache:
            cache[key] = _block_entry(backbone, index)
        blocks.append(cache[key])
    head_value = backbone.signature.blocks[-1].outputs[0]
    heads: dict[str, _Exported] = {}
    for task in tasks:
        module = params[head_weights(task)]
        key = ("head", _fingerprint(module))
        if key not in cache:
            cache[key] = _head_entry(module, head_value, task)
        heads[task] = cache[key]
    index_data = {
        "format": FORMAT,
        "torch": torch.__version__.split("+")[0],
        "source": backbone.source,
        "input": _value_record(backbone.signature.input[0]),
        "blocks": [entry.record for entry in blocks],
        "heads": {task: {**entry.record, "file": f"head_{task}.pt2"} for task, entry in heads.items()},
    }
    out = Path(folder) / PROGRAM_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        for entry in blocks:
            atomic_write_bytes(out / entry.record["file"], entry.data)
        for task, entry in heads.items():
            atomic_write_bytes(out / f"head_{task}.pt2", entry.data)
        atomic_write_bytes(out / PROGRAM_FILE, (json.dumps(index_data, indent=1) + "\n").encode())
    except OSError as exc:
        raise ExportError(f"cannot write the program into {str(out)!r}: {exc.strerror or exc}") from exc
    return out / PROGRAM_FILE


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _check_archive(data: bytes, origin: str) -> None:
    """Refuse an archive torch.export.load would unpickle anything from (or that mtgraph did not write)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
        for name in names:
            inner = name.partition("/")[2]
            if not _ARCHIVE_FILES.fullmatch(inner):
                raise CheckpointError(f"{origin} holds {name!r}, which a program mtgraph writes never holds")
            if inner == _SAMPLE_INPUTS and archive.getinfo(name).file_size != 0:
                raise CheckpointError(f"{origin} holds pickled sample inputs; mtgraph writes none and loads none")
            if inner.endswith("_config.json"):
                config = json.loads(archive.read(name))
                entries = config.get("config", {}) if isinstance(config, dict) else None
                if not isinstance(entries, dict):
                    raise CheckpointError(f"{origin}: {name!r} is malformed")
                if any(not isinstance(e, dict) or e.get("use_pickle", True) for e in entries.values()):
                    raise CheckpointError(f"{origin} stores pickled tensors; mtgraph does not unpickle files")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:
        raise CheckpointError(f"{origin} is not a torch.export archive ({exc})") from exc


def _plain(exported: fx.GraphModule, class_name: str) -> fx.GraphModule:
    """The exported module as a plain GraphModule: one tensor in, one out, no input guard, train()/eval() allowed.

    ``ExportedProgram.module()`` wraps its graph in pytree (un)flattening and
    refuses ``.train()``/``.eval()``; mtgraph calls blocks with one tensor and
    switches modes freely (the computation is the eval-mode one either way).
    An ATen copy of the input (a block that writes into its input works on a
    copy) becomes the ``clone`` method call the frontend recognises.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in exported.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            continue
        if node.op == "output":
            result = node.args[0]
            if isinstance(result, (tuple, list)):
                if len(result) != 1:
                    raise CheckpointError(f"a program of {class_name} returns {len(result)} values, not one tensor")
                result = result[0]
            graph.output(env[result])
            continue
        if node.op == "call_function" and node.target is torch.ops.aten.clone.default and len(node.args) == 1 \
                and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder":
            env[node] = graph.call_method("clone", (env[node.args[0]],))
            env[node].name = node.name
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        env[node].meta = {}  # fake tensors of the export: nothing to carry (and they do not deep-copy)
    graph.lint()
    return fx.GraphModule(exported, graph, class_name=class_name)


def _install_norms(module: nn.Module, norms: list[dict[str, Any]], origin: str) -> None:
    """Replace the holders of normalisation tensors by :class:`ProgramNorm` s holding the same tensors."""
    for record in norms:
        path = str(record["path"])
        try:
            old = module.get_submodule(path)
        except AttributeError as exc:
            raise CheckpointError(f"{origin}: no module {path!r} for its normalisation layer") from exc
        norm = ProgramNorm(int(record["num_features"]), eps=float(record["eps"]),
                           momentum=None if record["momentum"] is None else float(record["momentum"]),
                           affine=bool(record["affine"]))
        tensors = dict(old.named_parameters(recurse=False)) | dict(old.named_buffers(recurse=False))
        expected = {name for name, _ in norm.named_parameters(recurse=False)} | {n for n, _ in norm.named_buffers(recurse=False)}
        if set(tensors) != expected:
            raise CheckpointError(f"{origin}: normalisation layer {path!r} has tensors {sorted(tensors)}, expected {sorted(expected)}")
        for name, tensor in tensors.items():
            setattr(norm, name, tensor)
        parent, _, leaf = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, norm)


def _module_from_archive(data: bytes, norms: list[dict[str, Any]], origin: str, *, class_name: str) -> fx.GraphModule:
    _check_archive(data, origin)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise CheckpointError(
            f"{origin} cannot be loaded by this torch ({torch.__version__}): {torch_message(exc)}; programs are "
            "tied to torch's export format: reopen with the torch version that saved it, or reload with "
            "mtgraph.load(folder, backbone, heads)"
        ) from exc
    module = _plain(program.module(), class_name)
    module.to_empty(device="cpu")
    with torch.no_grad():  # deterministic content until the architecture's weights are loaded over it
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.zero_()
    _install_norms(module, norms, origin)
    return module


def _record_shapes(module: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x``, recording each node's batch-free shape and dtype (as the frontend does)."""

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                n.meta["mtgraph_shape"] = tuple(value.shape[1:])
                n.meta["mtgraph_dtype"] = dtype_name(value.dtype)
            return value

    result: torch.Tensor = Recorder(module).run(x)
    return result


def _read_index(folder: Path) -> dict[str, Any]:
    path = folder / PROGRAM_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    if path.stat().st_size > MAX_PROGRAM_BYTES:
        raise CheckpointError(f"{str(path)!r} is {path.stat().st_size} bytes, over the limit of {MAX_PROGRAM_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{str(path)!r} is not an mtgraph program (format {found!r}, expected {FORMAT!r})")
    return data


def _read_archive(folder: Path, name: object) -> tuple[bytes, str]:
    if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+\.pt2", name):
        raise CheckpointError(f"{str(folder / PROGRAM_FILE)!r} names the file {name!r}, which is not a program file")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist; the program folder is incomplete")
    if path.stat().st_size > MAX_ARCHIVE_BYTES:
        raise CheckpointError(f"{str(path)!r} is {path.stat().st_size} bytes, over the limit of {MAX_ARCHIVE_BYTES}")
    return path.read_bytes(), str(path)


def _value(record: Mapping[str, Any]) -> TensorSignature:
    return TensorSignature(tuple(int(d) for d in record["shape"]), str(record["dtype"]))


def read_program(folder: str | Path) -> tuple[Backbone, dict[str, nn.Module]]:
    """The traced backbone and the heads saved by :func:`write_program` in ``folder``.

    Nothing from the files is executed: archives are checked (see the module
    docstring) and their graphs name ATen operators. Modules come back with
    zeros for weights; load the architecture's weights over them
    (:func:`mtgraph.open` does).

    Args:
        folder: the architecture folder (holding ``program/``).

    Returns:
        ``(backbone, heads)``: a :class:`~mtgraph.Backbone` with the saved
        signature table, and task -> head module.

    Raises:
        CheckpointError: a file is missing, malformed, too large, holds
            anything a program mtgraph writes does not, or cannot be loaded
            by this version of torch.

    Examples:
        >>> from mtgraph.program import read_program
        >>> read_program("no_such_folder")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: 'no_such_folder/program/program.json' does not exist
    """
    root = Path(folder) / PROGRAM_DIR
    index = _read_index(root)
    try:
        blocks = []
        for position, record in enumerate(index["blocks"]):
            data, origin = _read_archive(root, record["file"])
            module = _module_from_archive(data, list(record["norms"]), origin, class_name=f"Block{position}")
            saved_state = tuple((str(n), tuple(int(d) for d in s)) for n, s in record["state"])
            state = tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())
            if sorted(state) != sorted(saved_state):
                raise CheckpointError(f"{origin}: its tensors do not match the block's recorded tensors")
            shortcut = record["shortcut"]
            signature = BlockSignature(
                index=position, name=str(record["name"]),
                inputs=tuple(_value(v) for v in record["inputs"]), outputs=tuple(_value(v) for v in record["outputs"]),
                macs=int(record["macs"]), params=int(record["params"]),
                shortcut=Shortcut(str(shortcut["kind"]), tuple(shortcut["nodes"]), str(shortcut["reason"]),
                                  int(shortcut["macs"]), int(shortcut["params"]), tuple(shortcut["parameters"])),
                state=state,
            )
            blocks.append(BlockInfo(index=position, name=signature.name, module=module, signature=signature))
        heads: dict[str, nn.Module] = {}
        for task, record in dict(index["heads"]).items():
            data, origin = _read_archive(root, record["file"])
            heads[str(task)] = _module_from_archive(data, list(record["norms"]), origin, class_name=f"Head_{task}")
        value = _value(index["input"])
        dtype = getattr(torch, value.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{str(root / PROGRAM_FILE)!r} names an unknown input dtype {value.dtype!r}")
        backbone = Backbone(blocks=tuple(blocks), input_shape=value.shape, input_dtype=dtype, source=str(index["source"]))
    except (KeyError, TypeError, ValueError, IRError) as exc:
        raise CheckpointError(f"{str(root / PROGRAM_FILE)!r} is malformed ({type(exc).__name__}: {exc})") from exc
    if not blocks:
        raise CheckpointError(f"{str(root / PROGRAM_FILE)!r} lists no blocks")
    return backbone, heads
