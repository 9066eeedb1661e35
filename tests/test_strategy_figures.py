"""Every strategy's result holds typed figures (Heatmap, Curve, Table) that the workflow and reports can draw."""

from __future__ import annotations

import pytest

import mtgraph
from mtgraph.strategies import registry
from mtgraph.strategies.result import Curve, Heatmap, Table


# A 0.5-epoch search leaves AdaShare's gates undecided; its warning says so and is not what this test checks.
@pytest.mark.filterwarnings("ignore::mtgraph.strategies.adashare.UndecidedPolicyWarning")
@pytest.mark.parametrize("name", sorted(registry()))
def test_learn_returns_typed_figures_and_a_replayable_architecture(name: str) -> None:
    problem = mtgraph.toy_problem()
    strategy = registry()[name]
    result = strategy.learn(problem, strategy.config_for(problem, 0.5), progress=False)
    assert result.figures, f"{name} returned no figures"
    untyped = {key: type(fig).__name__ for key, fig in result.figures.items()
               if not isinstance(fig, (Heatmap, Curve, Table))}
    assert not untyped, f"{name} returned figures that are not Heatmap/Curve/Table: {untyped}"
    # The learned architecture is what the pipeline string rebuilds from its start graph.
    arch = strategy.architecture(problem, result)
    assert mtgraph.print_graph(arch.graph) == mtgraph.print_graph(result.graph)
