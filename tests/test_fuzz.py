"""Fuzzing the readers of untrusted input: IR text, pipeline strings (parsed and run by the driver), weight files
and the evaluation protocol's resume files.

Property for each: on *any* input the reader either succeeds or raises a typed
:class:`mtgraph.MTGraphError` subclass, never another exception, never hangs
(every example runs under a wall-clock alarm) and never grows memory without
bound (inputs are capped by the readers' size limits; resident memory is
checked after each test).

The CI run is bounded (200 examples per target, a few seconds in all). For a
longer run by hand::

    MTGRAPH_FUZZ_EXAMPLES=100000 python -m pytest tests/test_fuzz.py -q

``MTGRAPH_FUZZ_SECONDS`` (default 10) changes the per-example alarm.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import backbones
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtgraph
from mtgraph import MTGraphError
from mtgraph.ir.text import print_graph
from mtgraph.passes import format_pipeline, parse_pipeline

EXAMPLES = int(os.environ.get("MTGRAPH_FUZZ_EXAMPLES", "200"))
SECONDS = float(os.environ.get("MTGRAPH_FUZZ_SECONDS", "10"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # reproducible CI runs; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
#: Resident memory may grow at most this much during one fuzz target.
MAX_GROWTH_BYTES = 512 * 1024 * 1024


class Hang(Exception):
    """Raised by the alarm when one example runs longer than ``SECONDS``."""


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Fail (rather than hang) when the body runs longer than ``seconds``."""

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"one input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_typed_errors(call: Callable[[], object]) -> object | None:
    """Run ``call``; return its result, or None if it raised an MTGraphError. Anything else fails the test."""
    with alarm(SECONDS):
        try:
            return call()
        except MTGraphError as exc:
            assert str(exc), f"{type(exc).__name__} with an empty message"
            return None


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(autouse=True)
def bounded_memory() -> Iterator[None]:
    before = _rss_bytes()
    yield
    grown = _rss_bytes() - before
    assert grown < MAX_GROWTH_BYTES, f"peak resident memory grew by {grown / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- #
# IR text
# --------------------------------------------------------------------------- #

_REF = st.integers(-2, 12).map(lambda k: f"%{k}")
_TASK = st.sampled_from(["S", "E", "D", "input", "x1", "_", "9a", "é", ""])
_KEY = st.sampled_from(["b0.S", "b1.S+E", "b2.shared", "head.S", ".x", "gate.S", "w", "b0.S b1"])
_BLOCK = st.integers(-1, 5).map(str)


@st.composite
def ir_line(draw: st.DrawFn) -> str:
    """One line that is often well-formed, sometimes not, with node numbers from a small range."""
    kind = draw(st.sampled_from(["input", "block", "skip", "gate", "head", "junk"]))
    num = draw(_REF)
    if kind == "input":
        return f"{num} = input"
    if kind == "block":
        return f"{num} = block {draw(_BLOCK)} w={draw(_KEY)} ({draw(_REF)})"
    if kind == "skip":
        weights = draw(st.sampled_from(["", f" w={draw(_KEY)}"]))
        return f"{num} = skip {draw(_BLOCK)}{weights} ({draw(_REF)})"
    if kind == "gate":
        srcs = ", ".join(draw(st.lists(_REF, max_size=4)))
        return f"{num} = gate {draw(_TASK)} w={draw(_KEY)} ({srcs})"
    if kind == "head":
        return f"{draw(_TASK)} = head ({draw(_REF)})"
    return draw(st.text(max_size=30))


@st.composite
def ir_text(draw: st.DrawFn) -> str:
    """A sequence of IR lines (numbered consecutively most of the time), with comments and stray characters."""
    lines = draw(st.lists(ir_line(), max_size=12))
    if draw(st.booleans()):  # renumber so that more inputs get past the parser to the verifier
        out, k = [], 0
        for line in lines:
            if line.startswith("%") and "=" in line:
                line = f"%{k} =" + line.split("=", 1)[1]
                k += 1
            elif " = head" in line:
                k += 1
            out.append(line)
        lines = out
    text = "\n".join(lines)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["", "\n", "  # comment", "\r\n", "\x00", "#"]))
    if draw(st.booleans()):  # truncate anywhere
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _parse_and_verify(text: str) -> mtgraph.MTGraph:
    graph = mtgraph.parse_graph(text)
    mtgraph.verify(graph, num_blocks=3)
    return graph


@FUZZ
@given(st.one_of(ir_text(), st.text(max_size=200)))
def test_ir_parser_raises_only_typed_errors(text: str) -> None:
    graph = only_typed_errors(lambda: _parse_and_verify(text))
    if graph is not None:  # a valid graph round-trips through its canonical text
        assert mtgraph.parse_graph(print_graph(graph)) == graph


# --------------------------------------------------------------------------- #
# Pipeline strings
# --------------------------------------------------------------------------- #

_PIPE_TOKENS = st.sampled_from(
    ["fuse", "split", "skip", "gate", "harden", "cse", "dce", "nope", "{", "}", ",", "=", "tasks", "block", "groups",
     "task", "start", "end", "alpha", "mode", "tau", "threshold", "init", "S+E", "S+E/D", "1", "-3", "0.5", "nan", "inf",
     "1e999", "softmax", "copy", "average", " ", "/", "+", "é", "\n"]
)


@FUZZ
@given(st.one_of(st.lists(_PIPE_TOKENS, max_size=25).map("".join), st.text(max_size=100)))
def test_pipeline_parser_raises_only_typed_errors(text: str) -> None:
    passes = only_typed_errors(lambda: parse_pipeline(text))
    if passes is not None:  # whatever parses, formats and parses back to the same passes
        again = only_typed_errors(lambda: parse_pipeline(format_pipeline(passes)))
        assert again == passes


# --------------------------------------------------------------------------- #
# Weight files (and checkpoints, which use the same container)
# --------------------------------------------------------------------------- #

# Hypothesis tests cannot take pytest's function-scoped tmp_path, so the files they mutate live in one folder per
# process, removed when the process ends (a run left one behind in the system's temp folder every time before).
_FOLDER = Path(tempfile.mkdtemp(prefix="mtgraph-fuzz-"))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)


def _reference() -> tuple[bytes, mtgraph.Backbone, dict[str, torch.nn.Module]]:
    model, x = backbones.chain(2)
    backbone = mtgraph.trace(model, x)
    heads = backbones.make_heads(backbone.output_shape, ("S", "E"))
    graph = mtgraph.from_groups(backbone.num_blocks, ("S", "E"), [[["S", "E"]], [["S"], ["E"]]])
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    mtgraph.save(graph, params, _FOLDER / "ref")
    return (_FOLDER / "ref" / "weights.safetensors").read_bytes(), backbone, heads


_REFERENCE = _reference()


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few byte flips, splices, deletions or a truncation; the 8-byte header length is a favourite."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip_header", "insert", "delete", "truncate", "length"]))
        if not data:
            break
        if op == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "flip_header":  # the JSON header holds offsets, dtypes, shapes and our metadata
            end = min(len(data), 8 + int.from_bytes(original[:8], "little"))
            i = draw(st.integers(0, end - 1))
            data[i] = draw(st.sampled_from(list(b'0123456789{}[]":,-eE ')))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:  # claim an absurd header length
            data[:8] = draw(st.sampled_from([2**63 - 1, 2**32, 0, len(data), 99_999_999])).to_bytes(8, "little")
    return bytes(data)


@FUZZ
@given(mutated(_REFERENCE[0]))
def test_weight_loader_raises_only_typed_errors(data: bytes) -> None:
    original, backbone, heads = _REFERENCE
    (_FOLDER / "ref" / "weights.safetensors").write_bytes(data)
    try:
        only_typed_errors(lambda: mtgraph.load(_FOLDER / "ref", backbone, heads))
    finally:
        (_FOLDER / "ref" / "weights.safetensors").write_bytes(original)


def _checkpoint_bytes() -> bytes:
    from mtgraph.train.checkpoint import weights_state, write_checkpoint

    original, backbone, heads = _REFERENCE
    graph, params = mtgraph.load(_FOLDER / "ref", backbone, heads)
    tensors: dict[str, torch.Tensor] = {}
    state = {"phase": "train", "step": 1, "epoch": 0, "finished": False, **weights_state(graph, params, tensors)}
    path = write_checkpoint(_FOLDER / "train-00000001.ckpt", state, tensors)
    return path.read_bytes()


_CHECKPOINT = _checkpoint_bytes()


@FUZZ
@given(mutated(_CHECKPOINT))
def test_checkpoint_loader_raises_only_typed_errors(data: bytes) -> None:
    from mtgraph.train import load_checkpoint

    path = _FOLDER / "fuzzed.ckpt"
    path.write_bytes(data)
    only_typed_errors(lambda: load_checkpoint(path))


def test_reference_files_load() -> None:
    # The fuzz targets start from files that are valid: otherwise they would test nothing.
    from mtgraph.train import load_checkpoint

    original, backbone, heads = _REFERENCE
    graph, _ = mtgraph.load(_FOLDER / "ref", backbone, heads)
    assert graph.tasks == ("S", "E")
    assert load_checkpoint(_FOLDER / "train-00000001.ckpt").step == 1


# --------------------------------------------------------------------------- #
# The pipeline driver (`mtgraph opt` / `mtgraph explain`) on a real graph
# --------------------------------------------------------------------------- #


def _stn_with_params() -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    original, backbone, heads = _REFERENCE
    graph = mtgraph.stn(backbone.num_blocks, ("S", "E"))
    return graph, mtgraph.ParamStore.create(graph, backbone, heads)


_STN = _stn_with_params()


@FUZZ
@given(st.one_of(st.lists(_PIPE_TOKENS, max_size=25).map("".join), st.text(max_size=100)))
def test_pipeline_driver_raises_only_typed_errors(text: str) -> None:
    from mtgraph.driver import explain_pipeline

    graph, params = _STN
    explanation = only_typed_errors(lambda: explain_pipeline(graph, params, text))
    if explanation is not None:  # whatever the driver applied left a graph that verifies
        mtgraph.verify(explanation.result.graph)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- #
# The evaluation protocol's resume files (a unit's result.json, the folder's evaluation.json)
# --------------------------------------------------------------------------- #

def _unit_record_bytes() -> tuple[bytes, object]:
    from mtgraph.evaluation.units import Unit, UnitRecord

    unit = Unit("random 1", "random", 2, "units/seed-2/random-1", 0.75)
    record = UnitRecord(unit, {"S": {"miou": 0.25}, "E": {"bce": 0.5}}, 12, 3.5)
    return record.to_json().encode(), unit


_RECORD, _UNIT = _unit_record_bytes()
_IDENTITY = {"strategy": "mtsl", "config": {"gamma": 0.8}, "seeds": [0, 1, 2], "randoms": 5, "tolerance": 0.05}
#: Any JSON value: a resume file that parses but holds the wrong shape.
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=8)


@FUZZ
@given(st.one_of(mutated(_RECORD), _JSON.map(lambda v: json.dumps(v).encode())))
def test_unit_record_reader_raises_only_typed_errors(data: bytes) -> None:
    from mtgraph.evaluation.units import finished, result_path

    path = result_path(_FOLDER / "evaluation", _UNIT)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    record = only_typed_errors(lambda: finished(_FOLDER / "evaluation", _UNIT))  # type: ignore[arg-type]
    if record is not None:  # a record read back is the planned unit's
        assert record.unit == _UNIT  # type: ignore[attr-defined]


@FUZZ
@given(st.one_of(mutated(json.dumps(_IDENTITY).encode()), st.binary(max_size=40), _JSON.map(lambda v: json.dumps(v).encode())))
def test_evaluation_identity_reader_raises_only_typed_errors(data: bytes) -> None:
    from mtgraph.evaluation.driver import IDENTITY_FILE, _check_identity

    root = _FOLDER / "identity"
    root.mkdir(exist_ok=True)
    (root / IDENTITY_FILE).write_bytes(data)
    # The file matches the run (continue) or not (refused with a ConfigError): never an exception from inside.
    only_typed_errors(lambda: _check_identity(root, dict(_IDENTITY)))


def test_reference_resume_files_are_accepted() -> None:
    from mtgraph.evaluation.driver import IDENTITY_FILE, _check_identity
    from mtgraph.evaluation.units import finished, result_path

    path = result_path(_FOLDER / "valid", _UNIT)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_RECORD)
    assert finished(_FOLDER / "valid", _UNIT).steps == 12  # type: ignore[arg-type, union-attr]
    (_FOLDER / "valid" / IDENTITY_FILE).write_text(json.dumps(_IDENTITY))
    _check_identity(_FOLDER / "valid", dict(_IDENTITY))  # the same settings: no error
