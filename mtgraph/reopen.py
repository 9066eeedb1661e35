"""Reopening a saved architecture folder without the code that built it: :func:`mtgraph.open`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["Opened", "open"]


@dataclass(frozen=True)
class Opened:
    """A reopened architecture: the IR, the weights and the compiled network (in eval mode).

    Unpacks as ``graph, params, network``.

    Attributes:
        graph: the architecture.
        params: its modules with the saved weights.
        network: ``mtgraph.compile(graph, params)`` in eval mode: images in,
            ``{task: output}`` out.
        spec: the factory recorded in ``model.json`` (None when reopened from
            the program).
        source: ``"factory"`` (modules rebuilt from ``model.json``) or
            ``"program"`` (from ``program/``, saved with torch.export).
        folder: the folder it was read from.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = mtgraph.save(graph, params, folder)
        ...     opened = mtgraph.open(folder)
        >>> g, p, network = opened
        >>> opened.source, g == graph, network(torch.zeros(1, 3, 8, 8))["seg"].shape
        ('program', True, torch.Size([1, 2, 6, 6]))
    """

    graph: MTGraph
    params: ParamStore
    network: nn.Module
    spec: Any
    source: str
    folder: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.graph, self.params, self.network))


def _hint(folder: Path) -> str:
    from mtgraph.persist import ARCH_FILE

    inner = sorted(p.parent for p in folder.glob(f"*/{ARCH_FILE}"))
    return f"; did you mean {str(inner[0])!r}?" if inner else ""


def open(folder: str | os.PathLike[str], *, model: str | None = None) -> Opened:  # noqa: A001 - mtgraph.open
    """Reopen an architecture folder written by :func:`mtgraph.save`: architecture, weights, compiled network.

    The modules come from ``model.json`` when the folder records a factory
    (a built-in, torchvision or timm backbone; a user's own
    ``package.module:factory`` only when ``model`` names it again, as on the
    command line), and otherwise from ``program/``, the blocks and heads
    saved with torch.export: such a folder reopens without the code that
    built the model, and nothing from the files is executed as Python.

    Args:
        folder: the architecture folder.
        model: the factory to use instead of the recorded one (you trust it).

    Returns:
        An :class:`Opened` (unpacks as ``graph, params, network``).

    Raises:
        CheckpointError: a file is missing, malformed or does not fit; or the
            folder has neither ``model.json`` nor ``program/``.
        ConfigError: ``model.json`` names a user factory and ``model`` is None,
            and the folder has no program to fall back on.

    Examples:
        >>> import mtgraph
        >>> mtgraph.open("no_such_folder")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: 'no_such_folder' is not an architecture folder (no architecture.mtir)
    """
    from mtgraph.compile import compile as compile_graph
    from mtgraph.persist import ARCH_FILE, load
    from mtgraph.program import PROGRAM_DIR, PROGRAM_FILE, read_program
    from mtgraph.spec import SPEC_FILE, ModelSpec

    root = Path(folder)
    if not (root / ARCH_FILE).is_file():
        raise CheckpointError(f"{str(root)!r} is not an architecture folder (no {ARCH_FILE}){_hint(root)}")
    has_program = (root / PROGRAM_DIR / PROGRAM_FILE).is_file()
    spec = None
    if (root / SPEC_FILE).is_file():
        try:
            spec = ModelSpec.load(root, model_override=model)
        except ConfigError:
            if not has_program:
                raise
    if spec is not None:
        backbone = spec.build_backbone()
        graph, params = load(root, backbone, spec.build_heads(backbone, spec.build_tasks()))
        source = "factory"
    elif has_program:
        backbone, heads = read_program(root)
        graph, params = load(root, backbone, heads)
        source = "program"
    else:
        raise CheckpointError(
            f"{str(root)!r} has neither {SPEC_FILE} nor {PROGRAM_DIR}/, so its modules cannot be rebuilt; reload it "
            "with mtgraph.load(folder, backbone, heads), or save it again with this version of mtgraph.save"
        )
    network = compile_graph(graph, params).eval()
    return Opened(graph, params, network, spec, source, root)
