"""The `mtgraph` command: help, inspect, the architecture commands and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtgraph.cli import build_parser, main
from mtgraph.persist import ARCH_FILE, save
from mtgraph.spec import SPEC_FILE, ModelSpec, TaskSpec

SUBCOMMANDS = ("demo", "inspect", "learn", "cost", "export", "render", "run", "bench")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: mtgraph {command}" in capsys.readouterr().out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out


def test_inspect_prints_every_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet_tiny_w4", "--input-size", "3,32,32"]) == 0
    out = capsys.readouterr().out
    for name in ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]:
        assert re.search(rf"^\s*\d+\s+{re.escape(name)}\s", out, re.MULTILINE), name
    assert "projection" in out and "identity" in out
    assert "9 blocks" in out


def test_inspect_a_user_factory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "cli_models:small_convnet", "--input-size", "3,32,32", "--cuts", "stages"]) == 0
    assert "total:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["inspect", "cli_models:raising_factory"], "raised RuntimeError: weights file not found"),
        (["inspect", "cli_models:not_a_module"], "not an nn.Module"),
        (["inspect", "no_such_module_xyz:factory"], "cannot import module 'no_such_module_xyz'"),
        (["inspect", "resnet_tiny", "--cuts", "layer9"], "Valid cut names"),
        (["cost", "folder-that-does-not-exist"], "does not exist"),
        # One channel where the model wants three: torch.fx's own context lines are left out (issue 23).
        (["inspect", "resnet_tiny", "--input-size", "1,32,32"], "to have 3 channels, but got 1 channels instead"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_unknown_strategy_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--strategy", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_bad_input_size_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inspect", "resnet_tiny", "--input-size", "3,64"])
    assert "three positive numbers" in capsys.readouterr().err


def _saved_architecture(folder: Path, backbone_spec: str = "resnet_tiny_w4") -> ModelSpec:
    from mtgraph.ir import from_groups

    spec = ModelSpec(backbone_spec, (3, 32, 32), (TaskSpec("seg", "segmentation", {"num_classes": 3}), TaskSpec("depth", "depth")))
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    heads = spec.build_heads(backbone, tasks)
    groups = [[["seg", "depth"]]] * 6 + [[["seg"], ["depth"]]] * 3
    graph = from_groups(backbone.num_blocks, list(tasks), groups)
    from mtgraph.params import ParamStore

    save(graph, ParamStore.create(graph, backbone, heads), folder)
    spec.save(folder)
    return spec


def test_cost_of_a_saved_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _saved_architecture(tmp_path)
    assert main(["cost", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "seg" in out and "depth" in out and "total" in out
    assert main(["cost", str(tmp_path), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert set(data["tasks"]) == {"seg", "depth"}
    assert data["total_macs"] > 0


def test_a_user_factory_recorded_in_a_file_is_not_imported_without_consent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _saved_architecture(tmp_path)
    spec_file = tmp_path / SPEC_FILE
    spec_file.write_text(spec_file.read_text().replace("resnet_tiny_w4", "os:getcwd"))
    assert main(["cost", str(tmp_path)]) == 2
    assert "does not import code named by a file" in capsys.readouterr().err


def test_a_malformed_architecture_file_gives_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _saved_architecture(tmp_path)
    (tmp_path / ARCH_FILE).write_text("%0 = input\n%1 = blok 0 w=x (%0)\n")
    assert main(["cost", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtgraph.cli", "--debug", "cost", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_the_console_script_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "mtgraph.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "usage: mtgraph" in result.stdout


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    assert len(blocks) >= 2, "README must show the install+demo and the install+test commands"
    test_command = blocks[1].strip()
    install, _, run_tests = test_command.rpartition(" && ")
    assert run_tests == "python -m pytest -q"
    assert run_tests in ci.splitlines()
    assert "torch==2.14.1 torchvision==0.29.1" in install and "torch==2.14.1 torchvision==0.29.1" in ci
    assert '-e ".[test,zoo,dev]"' in install and '-e ".[test,zoo,dev]"' in ci
    assert "mtgraph demo" in blocks[0]


def test_torch_seed_isolation() -> None:
    # The spec builds the same backbone weights every time (a reloaded architecture needs identical skeletons).
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32), (TaskSpec("depth", "depth"),))
    a, b = spec.build_backbone(), spec.build_backbone()
    for (_, pa), (_, pb) in zip(a.blocks[0].module.named_parameters(), b.blocks[0].module.named_parameters()):
        assert torch.equal(pa, pb)
