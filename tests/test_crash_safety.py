"""Crash safety: every file mtgraph writes goes through a temporary file and a rename.

A process killed at any moment (SIGKILL: no cleanup runs) leaves each file
under its final name either as the previous complete version or as the new
one, never half-written; a failing export leaves the previous file untouched.

The kill tests start a writer subprocess that saves the same architecture
(or checkpoint) into one folder again and again, each version's tensors all
filled with its version number, and kill it at a random moment. Afterwards the
files must load and hold exactly one version. ``MTGRAPH_CRASH_ROUNDS`` (default
1) sets how many kills each test makes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import backbones
import pytest
import torch
from safetensors.torch import load_file

import mtgraph
from mtgraph.errors import ExportError

ROUNDS = int(os.environ.get("MTGRAPH_CRASH_ROUNDS", "1"))
_ROOT = Path(__file__).resolve().parents[1]
_TESTS = Path(__file__).resolve().parent

# The writer: builds a ~2.5 MB three-task STN, then saves version k = 1, 2, ...
# (every tensor filled with k) and prints k after each complete save.
_WRITER = textwrap.dedent(
    """
    import sys
    import torch
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import backbones, mtgraph
    from mtgraph.train.checkpoint import checkpoint_path, weights_state, write_checkpoint

    kind, folder = sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    model, x = backbones.chain(3, channels=48)
    backbone = mtgraph.trace(model, x)
    tasks = ("S", "E", "D")
    graph = mtgraph.stn(backbone.num_blocks, tasks)
    params = mtgraph.ParamStore.create(graph, backbone, backbones.make_heads(backbone.output_shape, tasks))
    k = 0
    while True:
        k += 1
        with torch.no_grad():
            for _, module in params.items():
                for tensor in module.state_dict(keep_vars=True).values():
                    tensor.fill_(k)
        if kind == "save":
            mtgraph.save(graph, params, folder)
        else:
            tensors = {}
            state = {"phase": "train", "step": k, "epoch": 0, "finished": False,
                     **weights_state(graph, params, tensors)}
            write_checkpoint(checkpoint_path(folder, "train", 1), state, tensors)
        print(k, flush=True)
    """
)


def _kill_writer_midway(kind: str, folder: Path, rng: random.Random) -> int:
    """Start a writer, let it complete at least one version, SIGKILL it at a random moment; return the last version it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(_ROOT), str(_TESTS), kind, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.strip(), f"the writer died before saving once: {proc.stderr.read()}"  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.0, 0.4))  # several saves take place in this window
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    reported = [int(line) for line in (first + out).split()]
    return reported[-1]


def _single_version(tensors: dict[str, torch.Tensor]) -> int:
    values = {float(v) for t in tensors.values() for v in t.unique().tolist()}
    assert len(values) == 1, f"the file mixes versions {sorted(values)[:10]}"
    return int(values.pop())


@pytest.mark.slow
def test_architecture_folder_survives_sigkill_mid_save(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("MTGRAPH_CRASH_SEED", "0")))
    folder = tmp_path / "arch"
    model, x = backbones.chain(3, channels=48)
    backbone = mtgraph.trace(model, x)
    heads = backbones.make_heads(backbone.output_shape, ("S", "E", "D"))
    for _ in range(ROUNDS):
        last = _kill_writer_midway("save", folder, rng)
        # Under the final names: complete files, of the last reported version or the one being written.
        graph, params = mtgraph.load(folder, backbone, heads)
        assert graph == mtgraph.stn(backbone.num_blocks, ("S", "E", "D"))
        version = _single_version(load_file(str(folder / "weights.safetensors")))
        assert version in (last, last + 1)
        assert float(params["b0.S"].state_dict()[next(iter(params["b0.S"].state_dict()))].flatten()[0]) == version


@pytest.mark.slow
def test_checkpoint_survives_sigkill_mid_write(tmp_path: Path) -> None:
    from mtgraph.train import latest_checkpoint, load_checkpoint
    from mtgraph.train.checkpoint import checkpoint_path

    rng = random.Random(int(os.environ.get("MTGRAPH_CRASH_SEED", "0")) + 1)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for _ in range(ROUNDS):
        last = _kill_writer_midway("checkpoint", folder, rng)
        # A killed write leaves a hidden temporary file behind; resuming must not pick it up.
        assert latest_checkpoint(folder, "train") == checkpoint_path(folder, "train", 1)
        checkpoint = load_checkpoint(checkpoint_path(folder, "train", 1))
        assert checkpoint.step in (last, last + 1)
        assert _single_version(checkpoint.weights) == checkpoint.step


# --------------------------------------------------------------------------- #
# Every writer renames a temporary file into place
# --------------------------------------------------------------------------- #


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Record every ``os.replace(src, dst)`` while the test runs."""
    seen: list[tuple[Path, Path]] = []
    real = os.replace

    def spy(src, dst, *args, **kwargs):
        seen.append((Path(src), Path(dst)))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    return seen


def _arch() -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    model, x = backbones.chain(2)
    backbone = mtgraph.trace(model, x)
    graph = mtgraph.one_net(backbone.num_blocks, ("S", "E"))
    return graph, mtgraph.ParamStore.create(graph, backbone, backbones.make_heads(backbone.output_shape, ("S", "E")))


def _written_by_rename(folder: Path, renames: list[tuple[Path, Path]]) -> None:
    """Every file now in ``folder`` (recursively) arrived by a rename from a temporary file beside it."""
    renamed = {dst.resolve(): src for src, dst in renames}
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.resolve() in renamed, f"{path.name} was written in place"
        src = renamed[path.resolve()]
        assert src.parent.resolve() == path.parent.resolve() or src.parent.parent.resolve() == path.parent.resolve(), src
        assert src.name != path.name
    leftovers = [p.name for p in files if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_save_writes_through_rename(tmp_path: Path, renames: list[tuple[Path, Path]]) -> None:
    graph, params = _arch()
    mtgraph.save(graph, params, tmp_path / "a")
    _written_by_rename(tmp_path / "a", renames)
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"architecture.mtir", "weights.safetensors", "README.md", "program"}


def test_checkpoint_writes_through_rename(tmp_path: Path, renames: list[tuple[Path, Path]]) -> None:
    from mtgraph.train.checkpoint import weights_state, write_checkpoint

    graph, params = _arch()
    tensors: dict[str, torch.Tensor] = {}
    state = {"phase": "p", "step": 1, "epoch": 0, "finished": False, **weights_state(graph, params, tensors)}
    write_checkpoint(tmp_path / "c" / "p.ckpt", state, tensors)
    _written_by_rename(tmp_path / "c", renames)


def test_diagram_and_report_write_through_rename(tmp_path: Path, renames: list[tuple[Path, Path]]) -> None:
    from mtgraph.exporters import render, write_report

    graph, params = _arch()
    (tmp_path / "g").mkdir()
    render(graph, params, tmp_path / "g" / "arch.dot", format="dot")
    _written_by_rename(tmp_path / "g", renames)
    write_report(tmp_path / "r", graph=graph, params=params, title="t")
    _written_by_rename(tmp_path / "r", renames)


def test_failing_diagram_leaves_previous_file(tmp_path: Path) -> None:
    from mtgraph.exporters import render

    graph, params = _arch()
    target = tmp_path / "arch.svg"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError, match="gif"):
        render(graph, params, target, format="gif")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["arch.svg"]


@pytest.mark.slow
def test_failing_onnx_export_leaves_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   renames: list[tuple[Path, Path]]) -> None:
    import mtgraph.exporters.onnx as onnx_export

    graph, params = _arch()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    # The export itself runs for real; only the parity check is made to fail (as a numerical mismatch would).
    monkeypatch.setattr(onnx_export, "_diffs", lambda file, reference, x: {t: 1.0 for t in reference})
    with pytest.raises(ExportError, match="differ"):
        onnx_export.export_onnx(graph, params, target)
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "the staging folder was left behind"
    assert not any(dst.resolve() == target.resolve() for _, dst in renames)
