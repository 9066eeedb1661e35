"""A task whose predictions are constant over the evaluation data is called out with a warning."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import mtgraph
from mtgraph.train import evaluate
from mtgraph.train.evaluate import ConstantPredictionWarning


def _constant_head(channels: int, outputs: int, bias: list[float]) -> nn.Module:
    head = nn.Conv2d(channels, outputs, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(bias))
    return head


def _varying_seg_head(channels: int) -> nn.Module:
    """A segmentation head whose strong random weights make several classes win somewhere."""
    torch.manual_seed(0)
    head = nn.Conv2d(channels, 3, 1)
    with torch.no_grad():
        head.weight.normal_(0, 10.0)
    return head


def _evaluate_with(seg: nn.Module | None = None, depth: nn.Module | None = None) -> list[str]:
    problem = mtgraph.toy_problem(("seg", "depth"), samples=8)
    channels = problem.backbone.output_shape[0]
    heads = {"seg": seg or _varying_seg_head(channels), "depth": depth or problem.heads["depth"]}
    graph = mtgraph.one_net(problem.backbone.num_blocks, list(problem.task_names))
    params = mtgraph.ParamStore.create(graph, problem.backbone, heads)
    assert problem.val_data is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(graph, params, problem.tasks, problem.val_data, batch_size=4)
    return [str(w.message) for w in caught if issubclass(w.category, ConstantPredictionWarning)]


def test_a_segmentation_head_predicting_one_class_everywhere_is_warned_about() -> None:
    channels = mtgraph.toy_problem().backbone.output_shape[0]
    messages = _evaluate_with(seg=_constant_head(channels, 3, [0.0, 5.0, 0.0]))
    assert len(messages) == 1
    assert messages[0].startswith("task 'seg' of the One-Net predicts one class (1) everywhere over all 8 evaluation inputs")


def test_a_regression_head_predicting_one_value_is_warned_about() -> None:
    channels = mtgraph.toy_problem().backbone.output_shape[0]
    messages = _evaluate_with(depth=_constant_head(channels, 1, [2.5]))
    assert len(messages) == 1 and messages[0].startswith("task 'depth' of the One-Net predicts one value (2.5) everywhere")


def test_heads_whose_predictions_vary_get_no_warning() -> None:
    assert _evaluate_with() == []


