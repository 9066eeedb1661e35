"""Data-parallel training under torchrun matches a one-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtgraph.train import DistContext, init_distributed, list_checkpoints, load_checkpoint
from mtgraph.train.distributed import all_reduce_mean, wrap_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "train_run.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU, whatever the machine has
    return env


ARGS = ["--steps", "12", "--batch", "8", "--samples", "32", "--no-norm", "--every", "4", "--split-epoch", "0"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    single = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "one"), *ARGS],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), "--out", str(tmp_path / "two"), *ARGS]
    double = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]

    one = load_file(str(tmp_path / "one" / "final" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "weights.safetensors"))
    assert one.keys() == two.keys()
    # Both runs split block 1 at the end of epoch 0 (step 4) and trained the copies on.
    assert any(k.startswith("b1.seg/") for k in one)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-4, f"largest weight difference {worst}"
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert h1["graph"] == h2["graph"] and h2["step"] == 12
    assert h2["total"] == pytest.approx(h1["total"], rel=1e-4)  # losses are global-batch means on every rank
    # Rank 0 alone wrote the checkpoints; they record the world size and load as usual.
    files = list_checkpoints(tmp_path / "two" / "ckpt")
    assert [load_checkpoint(f).step for f in files] == [8, 12]
    assert load_checkpoint(files[-1]).state["world_size"] == 2


def test_one_process_context_wraps_nothing():
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, torch.device("cpu")) and ctx.is_main and not ctx.distributed
    module = torch.nn.Linear(2, 2)
    assert wrap_module(module, ctx) is module
    values = torch.tensor([1.0, 2.0])
    assert all_reduce_mean(values, ctx) is values
