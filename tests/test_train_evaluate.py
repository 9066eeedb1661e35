"""mtgraph.train.evaluate: per-task metrics over a dataset, as a dict and as a table."""

from __future__ import annotations

import pytest
import torch
import train_run as run  # noqa: E402 - tests/scripts is put on sys.path by conftest.py
from torch.utils.data import DataLoader

import mtgraph
from mtgraph.errors import ConfigError, DataError
from mtgraph.train import MetricsTable, evaluate


@pytest.fixture(scope="module")
def model():
    tasks = run.build_tasks()
    graph, params = run.build_model(tasks, seed=0)
    return tasks, graph, params


def test_metrics_equal_the_task_meters_over_the_whole_dataset(model):
    tasks, graph, params = model
    data = run.build_data(12, seed=3)
    metrics = evaluate(graph, params, tasks, data, batch_size=5)
    module = mtgraph.compile(graph, params).eval()
    images, targets = next(iter(DataLoader(data, batch_size=12)))
    with torch.no_grad():
        outputs = module(images)
    for name, task in tasks.items():
        meter = task.new_meter()
        meter.update(outputs[name], targets[task.target])
        expected = meter.compute()
        assert metrics[name].keys() == expected.keys()
        for metric, value in expected.items():
            assert metrics[name][metric] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, metric)


def test_batch_size_does_not_change_the_result_and_a_dataloader_works(model):
    tasks, graph, params = model
    data = run.build_data(10, seed=3)
    a = evaluate(graph, params, tasks, data, batch_size=1)
    b = evaluate(graph, params, tasks, DataLoader(data, batch_size=10))
    for name in tasks:
        assert a[name] == pytest.approx(b[name], rel=1e-5)


def test_evaluation_leaves_batchnorm_statistics_and_train_flags_alone(model):
    tasks, graph, params = model
    for _, module in params.items():
        module.train()
    before = {k: v.clone() for k, m in params.items() for k, v in m.state_dict().items()}
    evaluate(graph, params, tasks, run.build_data(4, seed=3))
    after = {k: v for k, m in params.items() for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for _, m in params.items())


def test_the_table_lists_every_task_metric_and_direction(model):
    tasks, graph, params = model
    table = evaluate(graph, params, tasks, run.build_data(4, seed=3))
    assert isinstance(table, MetricsTable) and isinstance(table, dict)
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == ["task", "metric", "value"]
    assert set(lines[1]) <= {"-", " "}
    assert sum(1 for line in lines[2:]) == sum(len(v) for v in table.values())
    assert any(line.startswith("seg") and "miou (higher is better)" in line for line in lines)
    assert "rmse (lower is better)" in text
    assert f"{table['depth']['rmse']:.4f}" in text


def test_mismatched_tasks_and_empty_data_are_errors(model):
    tasks, graph, params = model
    with pytest.raises(ConfigError, match=r"missing \['depth'\]"):
        evaluate(graph, params, {k: v for k, v in tasks.items() if k != "depth"}, run.build_data(4, seed=3))
    with pytest.raises(ConfigError, match=r"unknown \['extra'\]"):
        evaluate(graph, params, {**tasks, "extra": tasks["depth"]}, run.build_data(4, seed=3))
    with pytest.raises(DataError, match="evaluation data is empty"):
        evaluate(graph, params, tasks, run.build_data(0, seed=3))
    with pytest.raises(ConfigError, match="Dataset or DataLoader"):
        evaluate(graph, params, tasks, [1, 2])
