"""Hamming distances between learned policies, within and across designed task clusters."""

from __future__ import annotations

import pytest
import torch

from mtgraph.errors import ConfigError
from mtgraph.strategies.adashare import hamming_matrix, relatedness_gap

TASKS = ("seg", "edges", "depth", "normals", "unrelated")
CLUSTERS = (("seg", "edges"), ("depth", "normals"))


def _policy(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows])


def test_hamming_counts_the_blocks_decided_differently() -> None:
    u = _policy(["1100", "1101", "0011"])
    heatmap = hamming_matrix(u, TASKS[:3])
    assert heatmap.rows == heatmap.columns == TASKS[:3]
    assert heatmap.values == ((0.0, 1.0, 4.0), (1.0, 0.0, 3.0), (4.0, 3.0, 0.0))


def test_related_tasks_closer_than_unrelated_ones() -> None:
    u = _policy(["11110000", "11110001", "00001111", "00011111", "10101010"])
    gap = relatedness_gap(u, TASKS, CLUSTERS)
    assert gap.within_pairs == {"seg-edges": 1.0, "depth-normals": 1.0}
    assert gap.across_pairs["seg-depth"] == 8.0 and gap.across_pairs["seg-unrelated"] == 4.0
    assert len(gap.across_pairs) == 8  # 10 pairs, 2 within
    assert gap.within == 1.0 and gap.across == pytest.approx(sum(gap.across_pairs.values()) / 8)
    assert gap.holds and gap.gap > 0


def test_one_policy_for_every_task_shows_no_relatedness() -> None:
    gap = relatedness_gap(_policy(["1010"] * 5), TASKS, CLUSTERS)
    assert gap.within == gap.across == 0.0 and not gap.holds


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ((("seg", "pose"),), r"cluster \['seg', 'pose'\] names 'pose', which is not one of the tasks"),
        ((("seg", "edges"), ("edges", "depth")), "task 'edges' is in two clusters"),
        ((TASKS,), "leave no pair of tasks across them"),
        ((("seg",), ("edges",)), "leave no pair of tasks within them"),
    ],
)
def test_bad_clusters_are_refused(clusters, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        relatedness_gap(_policy(["1010"] * 5), TASKS, clusters)


def test_malformed_decisions_are_refused() -> None:
    with pytest.raises(ConfigError, match="bool tensor"):
        hamming_matrix(torch.ones(2, 3), ("a", "b"))
    with pytest.raises(ConfigError, match="3 rows for 2 tasks"):
        hamming_matrix(torch.ones(3, 3, dtype=torch.bool), ("a", "b"))
