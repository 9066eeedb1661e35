"""``mtgraph opt`` and ``mtgraph explain``: golden output on a saved architecture, refusals included."""

from __future__ import annotations

from pathlib import Path

import pytest

import mtgraph
from mtgraph.cli import main
from mtgraph.ir import from_groups
from mtgraph.persist import ARCH_FILE, save
from mtgraph.spec import SPEC_FILE, ModelSpec, TaskSpec

SHARED = "".join(
    f"%{k + 1} = block {k} w=b{k}.shared (%{k})".ljust(43) + " # seg depth\n" for k in range(8)
)
"""Blocks 0..7 shared by both tasks: the common first lines of every result below."""


@pytest.fixture(scope="module")
def arch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved architecture on resnet_tiny_w4 (9 blocks): blocks 0..6 shared, 7 and 8 per task."""
    folder = tmp_path_factory.mktemp("arch")
    spec = ModelSpec("resnet_tiny_w4", (3, 32, 32), (TaskSpec("seg", "segmentation", {"num_classes": 3}), TaskSpec("depth", "depth")))
    backbone = spec.build_backbone()
    heads = spec.build_heads(backbone, spec.build_tasks())
    graph = from_groups(backbone.num_blocks, ["seg", "depth"], [[["seg", "depth"]]] * 7 + [[["seg"], ["depth"]]] * 2)
    save(graph, mtgraph.ParamStore.create(graph, backbone, heads), folder)
    spec.save(folder)
    return folder


def _input_line() -> str:
    return "%0 = input".ljust(43) + " # seg depth\n"


def test_opt_prints_the_resulting_ir(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["opt", str(arch), "--passes", "fuse{tasks=seg+depth,block=7},skip{task=depth,block=8},dce"]) == 0
    out = capsys.readouterr()
    assert out.out == _input_line() + SHARED + (
        "%9 = block 8 w=b8.seg (%8)                  # seg\n"
        "%10 = skip 8 (%8)                           # depth\n"
        "seg = head (%9)\n"
        "depth = head (%10)\n"
    )
    assert out.err == ""
    assert "b7.seg" in (arch / ARCH_FILE).read_text()  # the saved architecture is not changed


def test_opt_prints_the_ir_after_every_pass(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = "fuse{tasks=seg+depth,block=7},skip{task=depth,block=8}"
    assert main(["opt", str(arch), "--passes", pipeline, "--print-after-all"]) == 0
    tail = "%9 = block 8 w=b8.seg (%8)                  # seg\n"
    assert capsys.readouterr().out == (
        "# after step 1: fuse{tasks=seg+depth,block=7,init=average}\n" + _input_line() + SHARED + tail
        + "%10 = block 8 w=b8.depth (%8)               # depth\nseg = head (%9)\ndepth = head (%10)\n"
        + "# after step 2: skip{task=depth,block=8}\n" + _input_line() + SHARED + tail
        + "%10 = skip 8 (%8)                           # depth\nseg = head (%9)\ndepth = head (%10)\n"
    )


def test_opt_saves_an_architecture_folder(arch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fused"
    assert main(["opt", str(arch), "--passes", "fuse{tasks=seg+depth,block=7},fuse{tasks=seg+depth,block=8}", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == f"wrote {out}\n"
    assert (out / ARCH_FILE).read_text() == printed.out
    assert ModelSpec.load(out) == ModelSpec.load(arch)
    assert main(["cost", str(out), "--json"]) == 0  # the folder is a complete architecture: it loads and costs
    assert '"shared_macs"' in capsys.readouterr().out


def test_opt_stops_at_a_refusal_with_one_line(arch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["opt", str(arch), "--passes", "fuse{tasks=seg+depth,block=7},skip{task=seg,block=0}", "-o", str(out)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and not out.exists()
    assert printed.err == (
        "mtgraph opt: error: while running 'skip{task=seg,block=0}' after ['fuse']: skip block 0 for task 'seg': "
        "block 0 (stem) cannot be skipped: its input shape [3, 32, 32] and output shape [4, 32, 32] differ and it has "
        "no shortcut (shapes differ ([3, 32, 32] -> [4, 32, 32]) and the block does not end in a residual sum)\n"
    )


@pytest.mark.parametrize("command", ["opt", "explain"])
def test_a_malformed_pipeline_is_one_line(command: str, arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, str(arch), "--passes", "fuse{tasks=seg+depth,blok=7}"]) == 2
    assert capsys.readouterr().err == (
        f"mtgraph {command}: error: pipeline position 21 (at 'b'): pass 'fuse' has no option 'blok'; "
        "its options are ['tasks', 'block', 'init', 'source_task']\n"
    )


def test_explain_says_applied_or_why_not_for_every_step(arch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = ("fuse{tasks=seg+depth,block=8},skip{task=seg,block=0},fuse{tasks=seg+depth,block=7},"
                "fuse{tasks=seg+depth,block=8},cse")
    assert main(["explain", str(arch), "--passes", pipeline]) == 0
    assert capsys.readouterr().out == (
        "step 1 fuse{tasks=seg+depth,block=8,init=average}: refused (no-common-source): fuse tasks seg+depth at "
        "block 8: the tasks do not share a source at block 8 (seg reads '%8 = block 7 w=b7.seg (%7)'; depth reads "
        "'%9 = block 7 w=b7.depth (%7)'); fusing needs their Blocks to consume the same node: fuse the earlier blocks "
        "first\n"
        "step 2 skip{task=seg,block=0}: refused (not-skippable): skip block 0 for task 'seg': block 0 (stem) cannot be "
        "skipped: its input shape [3, 32, 32] and output shape [4, 32, 32] differ and it has no shortcut (shapes "
        "differ ([3, 32, 32] -> [4, 32, 32]) and the block does not end in a residual sum)\n"
        "step 3 fuse{tasks=seg+depth,block=7,init=average}: applied\n"
        "step 4 fuse{tasks=seg+depth,block=8,init=average}: applied\n"
        "step 5 cse: applied, nothing changed\n"
        "3 of 5 steps applied; a refused step left the graph unchanged and the next steps ran on it\n"
    )


def test_explain_of_a_missing_architecture_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(tmp_path / "absent"), "--passes", "cse"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and SPEC_FILE in err


def test_a_verifier_error_is_one_line_on_the_command_line(arch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(arch, broken)
    text = (arch / ARCH_FILE).read_text()
    assert "%10 = block 8 w=b8.seg (%8)" in text
    (broken / ARCH_FILE).write_text(text.replace("%10 = block 8 w=b8.seg (%8)", "%10 = block 8 w=b8.seg (%7)"))
    assert main(["opt", str(broken), "--passes", "cse"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "mtgraph opt: error: node %10 (%10 = block 8 w=b8.seg (%7)): block 8 must consume the output of block 7 "
        "(level 8), but %7 is at level 7\n"
    )
