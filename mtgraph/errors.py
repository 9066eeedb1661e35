"""The typed exceptions mtgraph raises for a user's mistake.

Every error a user can cause derives from :class:`MTGraphError`, so a caller
(or the CLI) can catch one type and print one line. Messages say *what* went
wrong, *where* (block, node, task, file, line) and *how* to fix it.
"""

from __future__ import annotations

__all__ = [
    "MTGraphError",
    "TraceError",
    "CutError",
    "HeadError",
    "IRError",
    "ParseError",
    "VerifyError",
    "PassError",
    "CompileError",
    "ExportError",
    "DataError",
    "TrainError",
    "CheckpointError",
    "ConfigError",
    "BudgetError",
]


class MTGraphError(Exception):
    """Base class of every error mtgraph raises for bad input.

    Catch this one type to handle any user mistake (the CLI prints its message
    as one line).

    Examples:
        >>> import mtgraph
        >>> try:
        ...     mtgraph.stn(2, [])
        ... except mtgraph.MTGraphError as err:
        ...     print(type(err).__name__, "-", err)
        IRError - at least one task is needed
    """


class TraceError(MTGraphError):
    """The backbone could not be traced or partitioned into blocks.

    Examples:
        >>> import torch, mtgraph
        >>> mtgraph.trace("resnet", torch.zeros(1, 3, 8, 8))
        Traceback (most recent call last):
        ...
        mtgraph.errors.TraceError: the backbone must be a torch.nn.Module, got str
    """


class CutError(TraceError):
    """A requested cut point does not exist or has several live values.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> mtgraph.trace(model, torch.zeros(1, 3, 8, 8), cuts=["conv"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.CutError: cannot cut after ['conv']: ... Valid cut names: 0
    """


class HeadError(MTGraphError):
    """A task head is missing, not a module, or does not fit the backbone.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["seg", "depth"])
        >>> mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)})
        Traceback (most recent call last):
        ...
        mtgraph.errors.HeadError: no head given for tasks ['depth']; heads were given for ['seg']
    """


class IRError(MTGraphError):
    """Base class of errors about the intermediate representation.

    Examples:
        >>> import mtgraph
        >>> mtgraph.one_net(2, ["seg", "seg"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: task names must be unique; repeated: ['seg']
    """


class ParseError(IRError):
    """IR text or a pipeline string is malformed (message names the line).

    Examples:
        >>> import mtgraph
        >>> mtgraph.parse_graph("%0 = inptu")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ParseError: line 1: cannot parse '%0 = inptu' (near 'inptu'); expected one of ...
    """


class VerifyError(IRError):
    """An MTGraph breaks one of its invariants (message names the node).

    Examples:
        >>> import mtgraph
        >>> mtgraph.verify(mtgraph.parse_graph("%0 = input"))
        Traceback (most recent call last):
        ...
        mtgraph.errors.VerifyError: the graph has no head; every task needs a 'TASK = head (%k)' line
    """


class PassError(MTGraphError):
    """A rewrite pass was given invalid options or could not apply.

    Examples:
        >>> from mtgraph.passes import FusePass
        >>> FusePass(tasks=("seg", "depth"), block=0, init="sum")
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: fuse: init must be one of [...], got 'sum'
    """


class CompileError(MTGraphError):
    """An MTGraph and its ParamStore could not be compiled to a module.

    Examples:
        >>> import mtgraph
        >>> mtgraph.compile(mtgraph.one_net(1, ["seg"]), {})
        Traceback (most recent call last):
        ...
        mtgraph.errors.CompileError: params must be a ParamStore, got dict
    """


class ExportError(MTGraphError):
    """Export to ONNX, Graphviz or a report failed.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.exporters import render
        >>> render(mtgraph.one_net(1, ["seg"]), None, "net.jpeg", format="jpeg")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ExportError: unknown diagram format 'jpeg'; use one of [...]
    """


class DataError(MTGraphError):
    """A dataset folder, file or sample is missing or malformed.

    Examples:
        >>> from mtgraph.data import NpyFolderDataset
        >>> NpyFolderDataset("no_such_folder", "train", ["seg"], num_classes=2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.DataError: npy folder: dataset root is not a folder: no_such_folder. Expected layout: ...
    """


class TrainError(MTGraphError):
    """Training could not go on (for example a NaN loss).

    Examples:
        >>> import mtgraph
        >>> err = mtgraph.TrainError("loss of task 'seg' became nan at step 3")
        >>> isinstance(err, mtgraph.MTGraphError)
        True
    """


class CheckpointError(MTGraphError):
    """A checkpoint or weight file is missing, truncated or malformed.

    Examples:
        >>> from mtgraph.spec import ModelSpec
        >>> ModelSpec.load("no_such_folder")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: 'no_such_folder/model.json' does not exist; ...
    """


class ConfigError(MTGraphError):
    """An option or configuration value is out of range or inconsistent.

    Examples:
        >>> import mtgraph
        >>> mtgraph.MixGate(2, mode="argmax")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: gate mode 'argmax' is not one of ['softmax', 'gumbel', 'gumbel_st']
    """


class BudgetError(ConfigError):
    """A cost budget cannot be met (message states the minimum feasible).

    It is a :class:`ConfigError`: the budget is a configuration value.

    Examples:
        >>> import mtgraph
        >>> err = mtgraph.BudgetError("budget 0.5 GMac is below the cheapest network (0.8 GMac)")
        >>> isinstance(err, mtgraph.ConfigError), isinstance(err, mtgraph.MTGraphError)
        (True, True)
    """
