"""The command line's conventions: `-o/--out` everywhere (old spellings still accepted), `--debug` after the
command, `--version`, help on every flag, the architecture-folder hint, `inspect` on a saved architecture,
`render` by suffix and `run` on images of different sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mtgraph import __version__
from mtgraph.cli import build_parser, main
from mtgraph.ir import from_groups
from mtgraph.params import ParamStore
from mtgraph.persist import save
from mtgraph.spec import ModelSpec, TaskSpec


@pytest.fixture(scope="module")
def arch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/architecture as `mtgraph learn` writes it: a two-task tree on resnet_tiny_w4 at 32 px."""
    folder = tmp_path_factory.mktemp("run") / "architecture"
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32),
                     (TaskSpec("seg", "segmentation", {"num_classes": 3}), TaskSpec("depth", "depth")))
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    graph = from_groups(backbone.num_blocks, list(tasks), [[["seg", "depth"]]] * 6 + [[["seg"], ["depth"]]] * 3)
    save(graph, ParamStore.create(graph, backbone, spec.build_heads(backbone, tasks)), folder)
    spec.save(folder)
    return folder


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_of_every_command_has_help() -> None:
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in _subparsers().items() for action in sub._actions
        if not action.help  # argparse.SUPPRESS (a hidden alias) is a help string, so it counts as documented
    ]
    assert missing == []


def test_every_command_writing_files_takes_dash_o_and_out() -> None:
    for name in ("demo", "evaluate", "learn", "export", "render", "run", "opt"):
        sub = _subparsers()[name]
        flags = {flag: action.dest for action in sub._actions for flag in action.option_strings}
        assert flags.get("-o") == flags.get("--out") == "out", name
        assert flags.get("--output") == "out", name  # the old spelling, hidden
    render = _subparsers()["render"]
    assert render.parse_args(["a", "--output", "x.png"]).out == "x.png"   # the old spelling still works


def test_version_and_debug_after_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mtgraph {__version__}"
    assert build_parser().parse_args(["cost", "x", "--debug"]).debug is True
    assert build_parser().parse_args(["--debug", "cost", "x"]).debug is True
    assert build_parser().parse_args(["cost", "x"]).debug is False
    from mtgraph.errors import CheckpointError

    with pytest.raises(CheckpointError):  # --debug after the command re-raises instead of printing one line
        main(["cost", str(tmp_path / "missing"), "--debug"])


def test_an_output_folder_gets_a_did_you_mean_hint(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("cost", "render", "export", "bench"):
        assert main([command, str(arch.parent)]) == 2
        err = capsys.readouterr().err
        assert f"did you mean '{arch}'?" in err and len(err.strip().splitlines()) == 1, command


def test_inspect_accepts_a_saved_architecture(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(arch)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet_tiny_w4: input [N,3,32,32]")
    assert "architecture (seg, depth):" in out and "seg = head (" in out and "depth = head (" in out


def test_render_picks_the_format_from_the_suffix(arch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtgraph.exporters.graphviz import dot_available

    if not dot_available():
        pytest.skip("Graphviz's dot is not installed")
    assert main(["render", str(arch), "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["render", str(arch), "--out", str(tmp_path / "a.svg")]) == 0
    assert (tmp_path / "a.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    capsys.readouterr()
    assert main(["render", str(arch), "-o", str(tmp_path / "b.png"), "--format", "svg"]) == 2
    assert "ends in .png" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


@pytest.fixture(scope="module")
def onnx_files(arch: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    files = {"dynamic": folder / "dynamic.onnx", "static": folder / "static.onnx"}
    assert main(["export", str(arch), "-o", str(files["dynamic"]), "--optimize", "basic"]) == 0
    assert main(["export", str(arch), "--out", str(files["static"]), "--optimize", "basic", "--static-size"]) == 0
    return files


def _images(folder: Path, *sizes: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for k, size in enumerate(sizes):
        path = folder / f"image{k}.npy"
        np.save(path, rng.random((3, size, size), dtype=np.float32))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_run_resizes_images_of_other_sizes_to_the_model_input(kind: str, onnx_files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path, 32, 48)
    assert main(["run", str(onnx_files[kind]), *images, "-o", str(tmp_path / "out"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: image1.npy is 48x48; resized to the model's input 32x32" in out
    assert "image0.npy" not in out  # the image already of the model's size is left as it is
    assert np.load(tmp_path / "out" / "depth.npy").shape == (2, 1, 32, 32)


def test_run_keeps_one_size_a_dynamic_model_accepts(onnx_files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path, 48, 48)
    assert main(["run", str(onnx_files["dynamic"]), *images, "-o", str(tmp_path / "out"), "--threads", "1"]) == 0
    assert "resized" not in capsys.readouterr().out
    assert np.load(tmp_path / "out" / "depth.npy").shape[0] == 2


def test_run_without_a_known_size_names_both_sizes(onnx_files: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    model = onnx.load(str(onnx_files["dynamic"]))
    kept = [p for p in model.metadata_props if p.key != "mtgraph.input_shape"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert main(["run", str(bare), *_images(tmp_path, 32, 40), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "different sizes (image0.npy 32x32, image1.npy 40x40)" in err and len(err.strip().splitlines()) == 1
