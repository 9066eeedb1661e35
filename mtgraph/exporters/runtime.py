"""Running an exported multi-task model in ONNX Runtime.

:func:`open_session` picks execution providers (TensorRT > CUDA > CPU among
those the installed onnxruntime offers), opens the model and wraps it in a
:class:`MultiTaskSession` whose ``run(x)`` returns ``{task: array}``.

Provider choice is the pure function :func:`choose_providers`, so it can be
checked on a machine without a GPU by giving it a made-up list of available
providers. A GPU provider that was asked for but cannot be used is dropped
with one warning, and the session runs on the CPU.

GPU providers come with the ``onnxruntime-gpu`` package, which replaces
``onnxruntime`` (the two must never be installed together).

A file whose metadata says it stores onnxruntime's full optimisation
(level ``"all"``, see :mod:`mtgraph.exporters.optimize`) is opened without
optimising it again, so it loads fast; such a file is specific to the CPU
family it was exported on, and opening it on another is refused (its blocked
weight layout would give wrong values). A float16 model opened on the CPU
runs, through float32 casts, with a warning that the float32 model is faster there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtgraph.errors import ConfigError, ExportError
from mtgraph.exporters.metadata import InputNormalization, normalization_from_metadata, read_metadata
from mtgraph.exporters.onnx import quiet
from mtgraph.exporters.optimize import MACHINE_SPECIFIC, cpu_family, stored_optimization

__all__ = [
    "TENSORRT",
    "CUDA",
    "CPU",
    "PREFERENCE",
    "ProviderWarning",
    "choose_providers",
    "open_session",
    "MultiTaskSession",
    "SessionModule",
]

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: The providers ``"auto"`` picks from, best first. CPU is always available and always last.
PREFERENCE = (TENSORRT, CUDA, CPU)

#: Short names accepted in a provider request.
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}

_GPU = frozenset({TENSORRT, CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"})

_INSTALL_HINT = (
    "GPU providers need the onnxruntime-gpu package instead of onnxruntime "
    "(pip uninstall onnxruntime && pip install onnxruntime-gpu; never both) and a matching CUDA/TensorRT install"
)

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class ProviderWarning(UserWarning):
    """A requested execution provider is unavailable; the session falls back to the next one.

    Examples:
        >>> import warnings
        >>> from mtgraph.exporters import choose_providers
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     choose_providers("cuda", ["CPUExecutionProvider"])
        ['CPUExecutionProvider']
        >>> caught[0].category.__name__, issubclass(caught[0].category, UserWarning)
        ('ProviderWarning', True)
    """


def _resolve(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an execution provider must be a non-empty string, got {name!r}")
    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    if name.endswith("ExecutionProvider"):
        return name
    raise ConfigError(
        f"unknown execution provider {name!r}; use 'auto', one of {sorted(ALIASES)} or a full onnxruntime "
        "provider name such as 'CUDAExecutionProvider'"
    )


def _select(requested: str | Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """(providers to use, requested providers that are not available)."""
    offered = list(available)
    missing: list[str] = []
    if isinstance(requested, str) and requested.lower() == "auto":
        chosen = [p for p in PREFERENCE if p in offered]
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        if not names:
            raise ConfigError("providers is an empty list; pass 'auto' or at least one provider")
        wanted = list(dict.fromkeys(_resolve(n) for n in names))
        missing = [p for p in wanted if p not in offered and p != CPU]
        chosen = [p for p in wanted if p not in missing]
    if TENSORRT in chosen and CUDA in offered and CUDA not in chosen:
        chosen.insert(chosen.index(TENSORRT) + 1, CUDA)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen, missing


def _fallback_message(unusable: Sequence[str], available: Sequence[str], using: Sequence[str]) -> str:
    hint = f". {_INSTALL_HINT}" if any(p in _GPU for p in unusable) else ""
    return (
        f"execution provider(s) {list(unusable)} cannot be used by this onnxruntime "
        f"(available: {list(available)}); running on {list(using)}{hint}"
    )


def choose_providers(requested: str | Sequence[str], available: Sequence[str], *, warn: bool = True) -> list[str]:
    """The execution providers to open a session with, best first.

    ``requested`` is ``"auto"`` (TensorRT > CUDA > CPU, whichever of them are in
    ``available``), one provider or a list of them, by full onnxruntime name or
    alias (``"tensorrt"``, ``"cuda"``, ``"cpu"``). Requested providers missing
    from ``available`` are dropped with a single :class:`ProviderWarning`
    naming them (when ``warn``). TensorRT is followed by CUDA when CUDA is
    available, so that nodes TensorRT cannot take still run on the GPU, and
    the CPU provider always closes the list as the last fallback.

    The function only looks at its arguments (``available`` is normally
    ``onnxruntime.get_available_providers()``).

    Args:
        requested: ``"auto"``, a provider, or a list of providers (names or aliases).
        available: the providers onnxruntime offers.
        warn: warn about requested providers that are not available.

    Returns:
        The providers to use, best first, ending with the CPU provider.

    Raises:
        ConfigError: an unknown provider name or an empty request.

    Examples:
        >>> from mtgraph.exporters import choose_providers
        >>> offered = ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]
        >>> choose_providers("auto", offered)
        ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
        >>> choose_providers(["trt"], ["CPUExecutionProvider"], warn=False)  # TensorRT missing: CPU only
        ['CPUExecutionProvider']
        >>> choose_providers("gpu", offered)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: unknown execution provider 'gpu'; use 'auto', one of [...] or ...
    """
    chosen, missing = _select(requested, available)
    if missing and warn:
        warnings.warn(_fallback_message(missing, available, chosen), ProviderWarning, stacklevel=2)
    return chosen


class MultiTaskSession:
    """An ONNX Runtime session of an exported multi-task model: ``run(x) -> {task: array}``.

    ``tasks`` are the model's output names (one per task), ``providers`` the
    execution providers onnxruntime actually enabled, best first. Sessions
    are made by :func:`open_session`.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        path: the model file it was opened from.

    Raises:
        ExportError: the model does not have exactly one input.
        ConfigError: (from ``run``) an unknown task, or an input of the wrong
            dtype or shape.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> import onnx
        >>> from onnx import TensorProto, helper
        >>> from mtgraph.exporters import open_session
        >>> x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])
        >>> outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", 2]) for t in ("S", "D")]
        >>> nodes = [helper.make_node("Relu", ["input"], ["S"]), helper.make_node("Neg", ["input"], ["D"])]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(helper.make_model(helper.make_graph(nodes, "two_tasks", [x], outputs)), f"{folder}/m.onnx")
        ...     session = open_session(f"{folder}/m.onnx", providers="cpu", threads=1)
        >>> session.tasks, session.input_shape
        (('S', 'D'), (None, 2))
        >>> session.run(np.array([[-1.0, 2.0]]), tasks=["D"])
        {'D': array([[ 1., -2.]], dtype=float32)}
    """

    def __init__(self, session: Any, path: Path, metadata: Mapping[str, str] | None = None) -> None:
        self.session = session
        self.path = path
        #: The model's ``mtgraph.*`` metadata, keys without the prefix (see :mod:`mtgraph.exporters.metadata`).
        self.metadata: dict[str, str] = dict(metadata or {})
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ExportError(
                f"{str(path)!r} has {len(inputs)} inputs {[i.name for i in inputs]}; an mtgraph model has one"
            )
        self._input = inputs[0]
        self.tasks: tuple[str, ...] = tuple(o.name for o in session.get_outputs())

    @property
    def input_name(self) -> str:
        """Name of the model's input (``"input"`` for models written by mtgraph)."""
        return str(self._input.name)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The input shape; None for a dynamic axis (the batch)."""
        return tuple(d if isinstance(d, int) else None for d in self._input.shape)

    @property
    def providers(self) -> list[str]:
        """The execution providers in use, best first."""
        return list(self.session.get_providers())

    @property
    def normalization(self) -> InputNormalization | None:
        """The input normalisation recorded in the model's metadata (None: not recorded)."""
        return normalization_from_metadata(self.metadata)

    @property
    def dynamic_axes(self) -> tuple[str, ...]:
        """The input's dynamic axes by name (``batch``, ``height``, ``width``), from the model's input shape."""
        names = ("batch", "channels", "height", "width")
        return tuple(names[i] for i, d in enumerate(self.input_shape) if d is None and i < len(names))

    def _prepare(self, x: Any) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
            x = x.detach().cpu().numpy()
        array = np.asarray(x)
        expected = _NUMPY_TYPES.get(self._input.type)
        if expected is not None and array.dtype != expected:
            both_float = np.issubdtype(array.dtype, np.floating) and np.issubdtype(expected, np.floating)
            if not both_float:
                raise ConfigError(
                    f"the model's input {self.input_name!r} is {self._input.type}; got an array of dtype {array.dtype}"
                )
            array = array.astype(expected)
        shape = self.input_shape
        mismatch = array.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, array.shape))
        if mismatch:
            symbols = {0: "N", 2: "H", 3: "W"}  # dynamic batch, height, width
            wanted = "[" + ", ".join(symbols.get(i, "?") if d is None else str(d) for i, d in enumerate(shape)) + "]"
            raise ConfigError(f"the model expects an input of shape {wanted}; got {list(array.shape)}")
        return np.ascontiguousarray(array)

    def run(self, x: Any, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on the batch ``x`` (numpy array or torch tensor); return ``{task: output}``.

        ``tasks`` restricts the outputs computed (default: every task).
        """
        names = list(self.tasks) if tasks is None else list(tasks)
        unknown = [t for t in names if t not in self.tasks]
        if unknown:
            raise ConfigError(
                f"tasks {unknown} are not outputs of {str(self.path)!r}; its tasks are {list(self.tasks)}"
            )
        outputs = self.session.run(names, {self.input_name: self._prepare(x)})
        return dict(zip(names, outputs))

    def __repr__(self) -> str:
        return f"MultiTaskSession({str(self.path)!r}, tasks={list(self.tasks)}, providers={self.providers})"


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's concern
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive int or None (onnxruntime's default), got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def open_session(
    path: str | os.PathLike[str],
    *,
    providers: str | Sequence[str] = "auto",
    threads: int | None = None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultiTaskSession:
    """Open the ONNX model at ``path`` for inference.

    ``providers`` is ``"auto"`` or a request as in :func:`choose_providers`;
    ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's
    default, all physical cores); ``provider_options`` maps a provider's full
    name to its options (e.g. ``{"TensorrtExecutionProvider": {"trt_fp16_enable": True}}``).

    If a GPU provider is chosen but onnxruntime cannot enable it (missing
    CUDA libraries, no device), the session runs on the CPU and one
    :class:`ProviderWarning` says so. A float16 model that ends up on the
    CPU, or a CPU-optimised model opened with a GPU provider, gets a
    ProviderWarning too.

    A model exported with onnxruntime's full optimisation stored (level
    ``"all"``) is opened without optimising it again; opening it on a CPU of
    another family than it was optimised for raises ExportError.

    Args:
        path: the ONNX model file.
        providers: ``"auto"`` or a provider request (see :func:`choose_providers`).
        threads: onnxruntime's intra-op thread count (None: its default).
        provider_options: options per provider, by full provider name.

    Returns:
        The :class:`MultiTaskSession`.

    Raises:
        ExportError: no file at ``path``, onnxruntime cannot open it, or it
            stores an optimisation for another CPU family.
        ConfigError: a bad provider request, thread count or provider_options.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.exporters import export_onnx, open_session
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(1, ["S", "D"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 2, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = export_onnx(graph, params, f"{folder}/model.onnx").path
        ...     outputs = open_session(path, providers="cpu", threads=1).run(torch.randn(5, 3, 8, 8))
        >>> {task: out.shape for task, out in outputs.items()}
        {'S': (5, 1, 8, 8), 'D': (5, 2, 8, 8)}
    """
    import onnxruntime as ort

    file = Path(path)
    if not file.is_file():
        raise ExportError(f"no ONNX model at {str(file)!r}")
    options = _session_options(threads)
    metadata = _metadata_of(file)
    # Looked up through the module at call time, so that a test can fake the available list.
    available = ort.get_available_providers()
    chosen, missing = _select(providers, available)
    level, family = stored_optimization(metadata.get("optimization", "none"))
    if level in MACHINE_SPECIFIC:
        if family is not None and family != cpu_family():
            raise ExportError(
                f"{str(file)!r} stores onnxruntime's optimisation for {family} CPUs (level {level!r}), and this CPU "
                f"is {cpu_family()}: its blocked weight layout would give wrong values here. Export it again on this "
                "machine, or export with optimize='basic' for a file that runs anywhere"
            )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # nothing is left to do
    extra = dict(provider_options or {})
    unknown = sorted(set(extra) - set(chosen))
    if unknown:
        raise ConfigError(f"provider_options names providers {unknown} that are not in use; providers: {chosen}")
    requested: list[Any] = [(p, dict(extra[p])) if p in extra else p for p in chosen]
    try:
        with quiet():  # onnxruntime warns through Python warnings for providers it cannot enable
            session = ort.InferenceSession(str(file), options, providers=requested)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot open {str(file)!r}: {type(exc).__name__}: {exc}") from exc
    # One warning for everything that was asked for (or picked) but is not running.
    active = session.get_providers()
    unusable = missing + [p for p in chosen if p not in active and p != CPU]
    if unusable:
        warnings.warn(_fallback_message(unusable, available, active), ProviderWarning, stacklevel=2)
    on_gpu = [p for p in active if p in _GPU]
    if metadata.get("precision") == "fp16" and not on_gpu:
        warnings.warn(
            f"{str(file)!r} is a float16 model for GPU providers; on the CPU onnxruntime runs it through float32 "
            "casts, slower than the float32 model (use that one here)", ProviderWarning, stacklevel=2,
        )
    if level in MACHINE_SPECIFIC and on_gpu:
        warnings.warn(
            f"{str(file)!r} stores an optimisation for the CPU provider (level {level!r}); on {on_gpu} part of it "
            "runs on the CPU. Export with optimize='basic' for GPU providers", ProviderWarning, stacklevel=2,
        )
    return MultiTaskSession(session, file, metadata)


def _metadata_of(file: Path) -> dict[str, str]:
    """The model's mtgraph metadata; empty if the file cannot be parsed (onnxruntime then says why)."""
    try:
        return read_metadata(file)
    except Exception:
        return {}


class SessionModule(nn.Module):
    """A :class:`MultiTaskSession` as a torch module: ``forward(x) -> {task: tensor}`` (CPU tensors, no gradient).

    Lets code written for a compiled network (evaluation, metrics) run an
    exported model unchanged.

    Args:
        session: the session to wrap.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.exporters import SessionModule, export_onnx, open_session
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(1, ["S"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1)})
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     module = SessionModule(open_session(export_onnx(graph, params, f"{folder}/m.onnx").path, threads=1))
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(module(x)["S"], mtgraph.compile(graph, params).eval()(x)["S"], atol=1e-5)
        True
    """

    def __init__(self, session: MultiTaskSession) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: torch.from_numpy(np.asarray(value)) for task, value in self.session.run(x).items()}
