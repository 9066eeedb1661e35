"""``torch.compile`` for a compiled network, falling back to eager where it cannot work.

``torch.compile`` needs a Python version dynamo supports and, for the
default inductor backend on a CPU, a C++ compiler; it fails at the first
call, not when it is set up, and then with a long traceback. :func:`torch_compile`
wraps it: the first call tries the compiled version, and if compiling fails
the module runs eagerly from then on, after one :class:`TorchCompileWarning`
saying why. Results never depend on which path ran.

Measured effect on a CPU (``bench/bench_torch_compile.py``, BENCHMARKS.md):
inductor's generated kernels are faster in inference at batch 1 (fewer
dispatches), and its first call costs seconds to minutes of compilation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["torch_compile", "TorchCompileWarning", "CompiledOrEager"]


class TorchCompileWarning(UserWarning):
    """``torch.compile`` is unavailable or failed on this module; it runs eagerly instead.

    Examples:
        >>> from mtgraph.exporters import TorchCompileWarning
        >>> issubclass(TorchCompileWarning, UserWarning)
        True
    """


def _unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here at all (None: it may)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch >= 2.0)"
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # a broken or stripped torch install
        return f"torch._dynamo cannot be imported ({type(exc).__name__}: {exc})"
    supported = getattr(dynamo, "is_dynamo_supported", None)
    if supported is not None and not supported():
        return "torch.compile does not support this Python version or platform"
    return None


def _describe(exc: BaseException) -> str:
    """The exception's type and its first two message lines (dynamo puts the backend's own error on the second)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()][:2]
    return f"{type(exc).__name__}: {' '.join(lines)}"[:400]


class CompiledOrEager(nn.Module):
    """Runs ``torch.compile(module)``; after a compilation failure, ``module`` itself (see :func:`torch_compile`).

    ``module`` is the original (its parameters, state dict and train/eval
    flag are this wrapper's); ``fallback_reason`` is None while the compiled
    version is in use, else why it was given up.

    Args:
        module: the module to run.
        compiled: ``torch.compile(module)``, or None to run eagerly.
        reason: why ``compiled`` is None.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph.exporters.inductor import CompiledOrEager
        >>> net = CompiledOrEager(nn.Linear(2, 2), None, "no compiler here")
        >>> net(torch.zeros(1, 2)).shape, net.fallback_reason
        (torch.Size([1, 2]), 'no compiler here')
    """

    def __init__(self, module: nn.Module, compiled: Callable[..., Any] | None, reason: str | None = None) -> None:
        super().__init__()
        self.module = module
        # Not a registered submodule: torch.compile's wrapper holds ``module`` too, and registering it
        # would list every parameter twice.
        object.__setattr__(self, "_compiled", compiled)
        self.fallback_reason = reason

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        compiled: Callable[..., Any] | None = self.__dict__["_compiled"]
        if compiled is None:
            return self.module(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            # Run eagerly: if that fails too, the error is the user's (bad input), not the compiler's, and
            # it is raised as eager execution gives it; the compiled version stays in use for the next call.
            out = self.module(*args, **kwargs)
            self.fallback_reason = _describe(exc)
            object.__setattr__(self, "_compiled", None)
            warnings.warn(
                f"torch.compile failed on {type(self.module).__name__} ({self.fallback_reason}); running it eagerly "
                "from now on (same results, without the compiled speed-up)", TorchCompileWarning, stacklevel=2,
            )
            return out


def torch_compile(module: nn.Module, *, mode: str | None = None, backend: str | Callable[..., Any] = "inductor",
                  dynamic: bool | None = None) -> CompiledOrEager:
    """``torch.compile(module)`` that falls back to running ``module`` eagerly, with one warning.

    Where torch.compile is unavailable (no dynamo for this Python, no C++
    compiler for inductor on a CPU, ...) or fails on ``module``, the result
    runs ``module`` itself and a :class:`TorchCompileWarning` says why: once
    when it is unavailable, at the first failing call otherwise.

    Args:
        module: the network (e.g. the output of :func:`mtgraph.compile`).
        mode: torch.compile's mode (None, ``"reduce-overhead"``, ``"max-autotune"``).
        backend: torch.compile's backend (default ``"inductor"``).
        dynamic: torch.compile's ``dynamic`` (None: recompile once, then dynamic, for new shapes).

    Returns:
        A :class:`CompiledOrEager` module computing what ``module`` computes.

    Examples:
        >>> import warnings, torch
        >>> from torch import nn
        >>> from mtgraph.exporters import TorchCompileWarning, torch_compile
        >>> def broken_backend(graph_module, example_inputs):
        ...     raise RuntimeError("no compiler on this machine")
        >>> net = torch_compile(nn.Linear(2, 2), backend=broken_backend)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     out = net(torch.ones(1, 2))
        >>> torch.equal(out, net.module(torch.ones(1, 2))), caught[0].category is TorchCompileWarning
        (True, True)
        >>> "no compiler on this machine" in net.fallback_reason
        True
    """
    if not isinstance(module, nn.Module):
        from mtgraph.errors import ConfigError

        raise ConfigError(f"torch_compile needs an nn.Module, got {type(module).__name__}")
    reason = _unavailable()
    if reason is not None:
        warnings.warn(f"{reason}; running {type(module).__name__} eagerly", TorchCompileWarning, stacklevel=2)
        return CompiledOrEager(module, None, reason)
    compiled = torch.compile(module, mode=mode, backend=backend, dynamic=dynamic)
    return CompiledOrEager(module, compiled)
