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
    """Base class of every error mtgraph raises for bad input."""


class TraceError(MTGraphError):
    """The backbone could not be traced or partitioned into blocks."""


class CutError(TraceError):
    """A requested cut point does not exist or has several live values."""


class HeadError(MTGraphError):
    """A task head is missing, not a module, or does not fit the backbone."""


class IRError(MTGraphError):
    """Base class of errors about the intermediate representation."""


class ParseError(IRError):
    """IR text or a pipeline string is malformed (message names the line)."""


class VerifyError(IRError):
    """An MTGraph breaks one of its invariants (message names the node)."""


class PassError(MTGraphError):
    """A rewrite pass was given invalid options or could not apply."""


class CompileError(MTGraphError):
    """An MTGraph and its ParamStore could not be compiled to a module."""


class ExportError(MTGraphError):
    """Export to ONNX, Graphviz or a report failed."""


class DataError(MTGraphError):
    """A dataset folder, file or sample is missing or malformed."""


class TrainError(MTGraphError):
    """Training could not go on (for example a NaN loss)."""


class CheckpointError(MTGraphError):
    """A checkpoint or weight file is missing, truncated or malformed."""


class ConfigError(MTGraphError):
    """An option or configuration value is out of range or inconsistent."""


class BudgetError(ConfigError):
    """A cost budget cannot be met (message states the minimum feasible)."""
