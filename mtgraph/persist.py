"""Saving and loading an architecture: IR text plus a safetensors weight file, and what reopens it.

Layout of a saved architecture folder::

    architecture.mtir        the IR text (canonical form)
    weights.safetensors      every tensor once, as "KEY/NAME"; metadata: format
                             version, gate specs and tensor aliases (tied weights)
    model.json               the factory of the modules, when known
                             (:class:`~mtgraph.spec.ModelSpec`) ...
    program/                 ... otherwise the modules' computation as
                             torch.export programs (:mod:`mtgraph.program`)
    README.md                the model card (:mod:`mtgraph.card`)

``model.json`` or ``program/`` is what :func:`mtgraph.open` reopens the
folder with, without the caller's modules.

A call site with its own running statistics (see :class:`~mtgraph.ParamStore`)
stores them as ``"KEY@SITE/NAME"``, SITE being the node's site id
(:func:`~mtgraph.ir.sites.call_site_ids`), which does not depend on node order.

Loading parses text and reads tensors: it never unpickles or executes
anything from the files. The module *structures* come from the backbone and
heads the caller passes (the user's own code), exactly as when the
architecture was built, so a reloaded network is bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from mtgraph.errors import CheckpointError, ConfigError, MTGraphError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate
from mtgraph.ir.text import MAX_TEXT_CHARS, parse_graph, print_graph
from mtgraph.ir.verify import verify
from mtgraph.modules import MixGate, gate_from_spec
from mtgraph.params import ParamStore, running_statistics

if TYPE_CHECKING:
    from mtgraph.card import CardNotes
    from mtgraph.spec import ModelSpec

__all__ = ["save", "load", "state_tensors", "load_state_tensors", "atomic_write_bytes", "ARCH_FILE", "WEIGHTS_FILE"]

ARCH_FILE = "architecture.mtir"
WEIGHTS_FILE = "weights.safetensors"
FORMAT = "mtgraph-weights-1"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash leaves either the old file or the new one, never half of one.
    The file gets the permissions a plain ``open(path, "wb")`` would give it
    (0o666 minus the umask), not mkstemp's private 0o600.

    Args:
        path: the file to write; its folder must exist.
        data: the whole new content.

    Raises:
        OSError: the folder does not exist or is not writable (no temporary
            file is left behind).

    Examples:
        >>> import pathlib, tempfile
        >>> from mtgraph.persist import atomic_write_bytes
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     target = pathlib.Path(folder) / "note.txt"
        ...     atomic_write_bytes(target, b"first")
        ...     atomic_write_bytes(target, b"second")
        ...     print(target.read_bytes(), [p.name for p in pathlib.Path(folder).iterdir()])
        b'second' ['note.txt']
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:  # Linux >= 4.7 reports it; setting it to read it would race with other threads creating files
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def state_tensors(params: ParamStore) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every parameter and buffer as ``"key/name"`` -> tensor, each tensor once, plus aliases of tied ones.

    Args:
        params: the store.

    Returns:
        ``(tensors, aliases)``: detached CPU copies by name (site statistics
        as ``"key@site/name"``), and for each name of a tensor already stored
        under another name (tied weights), that other name.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.persist import state_tensors
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> tensors, aliases = state_tensors(mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)}))
        >>> {name: tuple(t.shape) for name, t in tensors.items()}, aliases
        ({'b0.seg/0.weight': (4, 3, 3, 3), 'b0.seg/0.bias': (4,), 'head.seg/weight': (2, 4, 1, 1), 'head.seg/bias': (2,)}, {})
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    stored: dict[int, str] = {}
    for key, module in params.items():
        for name, tensor in module.state_dict(keep_vars=True).items():
            full = f"{key}/{name}"
            ident = id(tensor)
            if ident in stored:
                aliases[full] = stored[ident]
                continue
            stored[ident] = full
            tensors[full] = tensor.detach().cpu().contiguous().clone()
    for (key, site), module in params.site_items():
        for name, tensor in running_statistics(module).items():
            tensors[f"{key}@{site}/{name}"] = tensor.detach().cpu().contiguous().clone()
    return tensors, aliases


def _load_site_tensors(params: ParamStore, tensors: Mapping[str, torch.Tensor], origin: str) -> set[str]:
    """Copy every ``"KEY@SITE/NAME"`` tensor into a site module of ``params`` (made if missing); return their names."""
    by_site: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for full, value in tensors.items():
        head, _, name = full.partition("/")
        key, at, site = head.partition("@")
        if at:
            by_site.setdefault((key, site), {})[name] = value
    loaded: set[str] = set()
    for (key, site), values in by_site.items():
        if key not in params:
            raise CheckpointError(f"{origin}: running statistics for call site {key}@{site} of a weight key this architecture does not have")
        module = params.add_site(key, site)
        current = running_statistics(module)
        if set(values) != set(current):
            raise CheckpointError(
                f"{origin}: call site {key}@{site} has statistics {sorted(values)[:4]} but the block has {sorted(current)[:4]}"
            )
        with torch.no_grad():
            for name, value in values.items():
                if tuple(value.shape) != tuple(current[name].shape):
                    raise CheckpointError(
                        f"{origin}: tensor {key}@{site}/{name} has shape {list(value.shape)} but the model expects "
                        f"{list(current[name].shape)}"
                    )
                current[name].copy_(value)
                loaded.add(f"{key}@{site}/{name}")
    return loaded


def load_state_tensors(params: ParamStore, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str], origin: str,
                       *, keys: Collection[str] | None = None) -> None:
    """Copy ``tensors`` into the modules of ``params`` (strict: names and shapes must match).

    ``keys`` limits the weight keys expected in the file (default: all of
    ``params``). Per-call-site statistics (``"KEY@SITE/NAME"``) go into site
    modules of ``params``, which are made when missing.

    Args:
        params: the store to load into (changed in place).
        tensors: tensors by name, as :func:`state_tensors` returns them.
        aliases: tied-tensor aliases, as :func:`state_tensors` returns them.
        origin: the file name used in error messages.
        keys: the weight keys to load, or None for every key of ``params``.

    Raises:
        CheckpointError: a tensor is missing, has the wrong shape, or belongs
            to no key or call site of ``params``.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.persist import load_state_tensors, state_tensors
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> trained = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> fresh = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> load_state_tensors(fresh, *state_tensors(trained), origin="weights.safetensors")
        >>> torch.equal(fresh["head.seg"].weight, trained["head.seg"].weight)
        True
        >>> load_state_tensors(fresh, {}, {}, origin="empty.safetensors")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: empty.safetensors: tensor 'b0.seg/0.weight' is missing; ...
    """
    expected = _load_site_tensors(params, tensors, origin)
    for key, module in params.items():
        if keys is not None and key not in keys:
            continue
        state = module.state_dict()
        values = {}
        for name, current in state.items():
            full = f"{key}/{name}"
            expected.add(full)
            source = aliases.get(full, full)
            if source not in tensors:
                raise CheckpointError(f"{origin}: tensor {full!r} is missing; the file does not match this architecture")
            value = tensors[source]
            if tuple(value.shape) != tuple(current.shape):
                raise CheckpointError(
                    f"{origin}: tensor {full!r} has shape {list(value.shape)} but the model expects {list(current.shape)}"
                )
            values[name] = value
        module.load_state_dict(values, strict=True)
    unexpected = sorted(set(tensors) - expected - set(aliases.values()))
    if unexpected:
        raise CheckpointError(f"{origin}: tensors {unexpected[:5]} do not belong to this architecture")


def _factory(spec: ModelSpec | None, graph: MTGraph, params: ParamStore) -> ModelSpec | None:
    """``spec`` (or the spec the backbone was built from), if the modules it builds are the saved ones' skeletons."""
    from mtgraph.ir.nodes import head_weights
    from mtgraph.spec import spec_of

    chosen = spec if spec is not None else spec_of(params.backbone)
    if chosen is None or spec is not None:
        return chosen  # a spec the caller names is recorded as given
    # A backbone built from a spec, with heads of the caller's own: model.json would rebuild other heads.
    with torch.random.fork_rng(devices=[]):  # building heads seeds torch: saving must not move the caller's RNG
        heads = chosen.build_heads(params.backbone, chosen.build_tasks())
    for task in graph.tasks:
        if task not in heads:
            return None
        mine = {k: tuple(v.shape) for k, v in params[head_weights(task)].state_dict().items()}
        if mine != {k: tuple(v.shape) for k, v in heads[task].state_dict().items()}:
            return None
    return chosen


def save(graph: MTGraph, params: ParamStore, folder: str | os.PathLike[str], *, spec: ModelSpec | None = None,
         program: bool | None = None, notes: CardNotes | None = None) -> Path:
    """Save ``graph`` and ``params`` into ``folder`` (created if needed), with what reopens it; return the folder.

    Only the weights ``graph`` uses are written (see :meth:`ParamStore.restricted`).
    Besides the IR and the weights, the folder gets what :func:`mtgraph.open`
    needs to rebuild the modules without the caller's code:

    * ``model.json`` when the modules come from a factory: ``spec``, or the
      spec the backbone was built from (:func:`mtgraph.spec.spec_of`, when
      the heads are that spec's);
    * otherwise ``program/``, the backbone's blocks and the heads saved with
      ``torch.export`` (:mod:`mtgraph.program`; seconds per new backbone,
      reused by later saves of it). A module torch.export cannot capture
      leaves the folder without it, with a :class:`~mtgraph.program.ReopenWarning`
      (``program=True`` makes that an error);
    * ``README.md``, the model card (:mod:`mtgraph.card`), unless the folder
      holds a README.md that mtgraph did not write.

    **Overwriting:** in an existing folder, the files above are replaced,
    each atomically (a failed write leaves the previous file whole); every
    other file in the folder is left alone.

    Args:
        graph: the architecture, written as canonical IR text.
        params: its modules, written as one safetensors file.
        folder: the output folder.
        spec: the factory of the modules, recorded as ``model.json``.
        program: write ``program/``: None (default) when no factory is known,
            True always (raising when it cannot), False never.
        notes: what the model card adds (how it was learned, metrics, the
            input normalisation).

    Returns:
        ``folder`` as a Path.

    Raises:
        VerifyError: ``graph`` is invalid for ``params``.
        ConfigError: the folder or a file in it cannot be created or written.
        ExportError: ``program=True`` and a module cannot be saved as a program.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     print(sorted(path.name for path in mtgraph.save(graph, params, folder).iterdir()))
        ['README.md', 'architecture.mtir', 'program', 'weights.safetensors']
        >>> with tempfile.TemporaryDirectory() as folder:  # IR and weights only: reopen with mtgraph.load
        ...     print(sorted(path.name for path in mtgraph.save(graph, params, folder, program=False).iterdir()))
        ['README.md', 'architecture.mtir', 'weights.safetensors']
    """
    from mtgraph.card import CARD_FILE, may_replace, model_card
    from mtgraph.errors import ExportError
    from mtgraph.program import ReopenWarning, write_program

    verify(graph, num_blocks=params.backbone.num_blocks, weight_keys=set(params.keys()))
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {str(out)!r}: {exc.strerror}") from exc
    used = params.restricted(graph)
    tensors, aliases = state_tensors(used)
    gates = {k: m.spec() for k, m in used.items() if isinstance(m, MixGate)}
    metadata = {"format": FORMAT, "gates": json.dumps(gates), "aliases": json.dumps(aliases)}
    try:
        atomic_write_bytes(out / WEIGHTS_FILE, save_bytes(tensors, metadata=metadata))
        atomic_write_bytes(out / ARCH_FILE, print_graph(graph).encode())
    except OSError as exc:
        raise ConfigError(f"cannot write the architecture into {str(out)!r}: {exc.strerror}") from exc
    factory = _factory(spec, graph, params)
    if factory is not None:
        try:
            factory.save(out)
        except OSError as exc:
            raise ConfigError(f"cannot write the model's factory into {str(out)!r}: {exc.strerror}") from exc
    wrote_program = False
    if program or (program is None and factory is None):
        try:
            write_program(out, used, tuple(graph.tasks))
            wrote_program = True
        except ExportError as exc:
            if program:
                raise
            warnings.warn(ReopenWarning(f"{str(out)!r} is saved without a program, so mtgraph.open cannot reopen it "
                                        f"(reload it with mtgraph.load(folder, backbone, heads)): {exc}"), stacklevel=2)
    card = out / CARD_FILE
    if may_replace(card):
        text = model_card(graph, used, spec=factory, program=wrote_program or (out / "program").is_dir(), notes=notes)
        try:
            atomic_write_bytes(card, text.encode())
        except OSError as exc:
            raise ConfigError(f"cannot write the model card {str(card)!r}: {exc.strerror}") from exc
    return out


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load(folder: str | os.PathLike[str], backbone: Backbone, heads: Mapping[str, nn.Module]) -> tuple[MTGraph, ParamStore]:
    """Load an architecture saved by :func:`save`, with modules built from ``backbone`` and ``heads``.

    Raises CheckpointError for missing, truncated or mismatched files and
    ParseError for malformed IR text. Nothing in the files is executed.

    Args:
        folder: a folder written by :func:`save`.
        backbone: the traced backbone the architecture was built on.
        heads: task -> head module of the same structure as when saved.

    Returns:
        ``(graph, params)`` equal to what was saved.

    Raises:
        CheckpointError: a file is missing, too large, not UTF-8, not an
            mtgraph safetensors file, or does not match the architecture.
        ParseError: the IR text is malformed.
        VerifyError: the IR does not fit ``backbone``.
        HeadError: ``heads`` lacks a task or does not fit the backbone.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = mtgraph.save(graph, params, folder)
        ...     loaded_graph, loaded = mtgraph.load(folder, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> loaded_graph == graph, torch.equal(loaded["head.seg"].weight, params["head.seg"].weight)
        (True, True)
        >>> mtgraph.load("no_such_folder", backbone, {})
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: '...architecture.mtir' does not exist; ...
    """
    root = Path(folder)
    arch, weights = root / ARCH_FILE, root / WEIGHTS_FILE
    for path in (arch, weights):
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r} does not exist; an architecture folder holds {ARCH_FILE} and {WEIGHTS_FILE}")
    size = arch.stat().st_size
    if size > MAX_TEXT_CHARS * 4:  # 4 bytes per character at most in UTF-8: refuse before reading it all
        raise CheckpointError(f"{str(arch)!r} is {size} bytes, far over the IR text limit; it is not an architecture file")
    try:
        text = arch.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{str(arch)!r} is not UTF-8 text: {exc}") from exc
    graph = parse_graph(text)
    verify(graph, num_blocks=backbone.num_blocks)
    try:
        metadata = _read_metadata(weights)
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(weights)!r} is not a valid safetensors file ({exc}); it may be truncated or not a weight file") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{str(weights)!r} is not an mtgraph weight file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        gate_specs = json.loads(metadata.get("gates", "{}"))
        aliases = json.loads(metadata.get("aliases", "{}"))
        gates = {key: gate_from_spec(spec) for key, spec in gate_specs.items()}
    except (json.JSONDecodeError, AttributeError, MTGraphError) as exc:
        raise CheckpointError(f"{str(weights)!r} has malformed metadata: {exc}") from exc
    missing_gates = sorted({n.weights for n in graph.nodes if isinstance(n, Gate)} - set(gates))
    if missing_gates:
        raise CheckpointError(f"{str(weights)!r} has no spec for gates {missing_gates}")
    params = ParamStore.create(graph, backbone, heads, gates=gates)
    load_state_tensors(params, tensors, aliases, origin=str(weights))
    return graph, params
