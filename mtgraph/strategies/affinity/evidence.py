"""What a branched-networks run shows for its choice: decisions, typed figures and the raw numbers.

Figures (:class:`~mtgraph.strategies.result.Heatmap`,
:class:`~mtgraph.strategies.result.Curve`,
:class:`~mtgraph.strategies.result.Table`): the RSA affinity matrix at each
location, the budget path (clustering cost against the budget) and the
chosen tree per block. The same numbers, machine-readable, go to the
result's ``history``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from mtgraph.budget import Budget
from mtgraph.errors import BudgetError
from mtgraph.frontend.backbone import Backbone
from mtgraph.strategies.affinity.cost import TreeCost
from mtgraph.strategies.affinity.locations import Groups, partition_of
from mtgraph.strategies.affinity.probe import AffinityProbe
from mtgraph.strategies.affinity.tree_search import BranchingTree, Linkage, PathPoint, TreeChoice, tree_dissimilarity
from mtgraph.strategies.result import Curve, Decision, Figure, Heatmap, Table

__all__ = ["BudgetLimit"]


@dataclass(frozen=True)
class BudgetLimit:
    """A budget resolved for one problem: its value and the One-Net's and STN's costs, in the budget's measure.

    Examples:
        >>> from mtgraph import Budget
        >>> from mtgraph.strategies.affinity.evidence import BudgetLimit
        >>> BudgetLimit(Budget.params(0.25, relative_to="one_net..stn"), 150.0, 100.0, 300.0).fraction
        0.25
    """

    budget: Budget
    value: float
    one_net: float
    stn: float

    @property
    def fraction(self) -> float:
        """Where the value lies from the One-Net's cost (0) to the STN's (1)."""
        span = self.stn - self.one_net
        return (self.value - self.one_net) / span if span > 0 else 0.0

    @classmethod
    def resolve(cls, budget: Budget, value: float, coster: TreeCost) -> BudgetLimit:
        """The limit of ``budget`` (resolved to ``value``); BudgetError when it is below the One-Net's cost."""
        minimum, maximum = coster.one_net, coster.stn
        # The same relative slack as the search, so a budget equal to the One-Net's cost is accepted.
        if value < minimum - 1e-9 * max(1.0, abs(minimum)):
            raise BudgetError(
                f"budget {budget.describe()} ({coster.format(value)}) is below the cost of the One-Net (every task "
                f"sharing every block, the cheapest tree), {coster.format(minimum)}; the budget must be at least "
                f"{coster.format(minimum)} (the STN costs {coster.format(maximum)})"
            )
        return cls(budget, value, minimum, maximum)


def _text(partition: Sequence[Sequence[str]]) -> str:
    return " ".join("{" + ",".join(g) + "}" for g in partition)


def probe_decision(probe: AffinityProbe, source: str) -> Decision:
    """Where the probe images came from."""
    return Decision(
        where="RSA probe",
        what=f"K={probe.num_images} images from {source}, {len(probe.locations)} locations",
        accepted=True,
        reason=(
            "held-out images"
            if source == "val_data"
            else "no val_data was given, so the probe images are training images (the paper uses held-out ones)"
        ),
        data={"locations": probe.locations, "source": source},
    )


def chosen_decision(choice: TreeChoice, limit: BudgetLimit, coster: TreeCost, groups: Groups, linkage: str) -> Decision:
    """The chosen tree, its clustering cost and cost against the budget."""
    span = (
        f"{limit.fraction:.0%} of the way from the One-Net ({coster.format(limit.one_net)}) to the STN "
        f"({coster.format(limit.stn)})"
    )
    return Decision(
        where=f"budget {coster.format(limit.value)}",
        what=f"tree {choice.tree}",
        accepted=True,
        reason=(
            f"lowest clustering cost ({linkage} linkage) {choice.dissimilarity:.4f} among the trees within the budget "
            f"{limit.budget.describe()}, {span}; the tree costs {coster.format(choice.cost)} ({choice.method} search, "
            f"{'exact' if choice.exact else 'heuristic'}, {choice.cost_calls} trees costed)"
        ),
        data={
            "cost": choice.cost,
            "dissimilarity": choice.dissimilarity,
            "budget": limit.value,
            "measure": coster.measure,
            "one_net": limit.one_net,
            "stn": limit.stn,
            "method": choice.method,
            "exact": choice.exact,
            "groups": groups,
        },
    )


def level_decisions(probe: AffinityProbe, tree: BranchingTree, linkage: str) -> list[Decision]:
    """One decision per location: share or branch, with the affinities that decided it."""
    tasks = probe.tasks
    out = []
    means = probe.mean_affinity()
    index = {t: i for i, t in enumerate(tasks)}
    for d, raw in enumerate(tree.partitions):
        partition = partition_of(raw, tasks)
        level = tree_dissimilarity(
            BranchingTree((raw,)), probe.affinity[d : d + 1].numpy(), tasks, linkage=cast(Linkage, linkage)
        )
        within = [
            float(probe.affinity[d, index[a], index[b]]) for g in partition for k, a in enumerate(g) for b in g[k + 1 :]
        ]
        across = [
            float(probe.affinity[d, index[a], index[b]])
            for k, a in enumerate(tasks)
            for b in tasks[k + 1 :]
            if not any(a in g and b in g for g in partition)
        ]
        parts = [f"mean affinity {means[d]:.3f}", f"level clustering cost {level:.4f}"]
        if within:
            parts.append(f"lowest affinity inside a group {min(within):.3f}")
        if across:
            parts.append(f"highest affinity across groups {max(across):.3f}")
        out.append(
            Decision(
                where=f"location {d}: {probe.label(d)}",
                what=f"{'share' if len(partition) == 1 else 'branch into'} {_text(partition)}",
                accepted=True,
                reason="; ".join(parts),
                data={
                    "block": probe.locations[d],
                    "groups": partition,
                    "level_cost": level,
                    "mean_affinity": means[d],
                    "within": within,
                    "across": across,
                },
            )
        )
    return out


def path_decisions(path: Sequence[PathPoint], choice: TreeChoice, limit: BudgetLimit, coster: TreeCost) -> list[Decision]:
    """The budget path's other trees, declined with the reason."""
    out = []
    for point in path:
        if point.tree == choice.tree:
            continue
        if point.cost > limit.value:
            why = f"costs {coster.format(point.cost)}, over the budget {coster.format(limit.value)}"
        else:
            why = f"clustering cost {point.dissimilarity:.4f} is higher than the chosen tree's {choice.dissimilarity:.4f}"
        out.append(
            Decision(
                where="budget path",
                what=f"tree {point.tree}",
                accepted=False,
                reason=why,
                data={"cost": point.cost, "dissimilarity": point.dissimilarity},
            )
        )
    return out


def figures(
    probe: AffinityProbe, path: Sequence[PathPoint], coster: TreeCost, groups: Groups, backbone: Backbone
) -> dict[str, Figure]:
    """A heatmap of the affinity per location, the budget path as a curve, the chosen tree as a table."""
    out: dict[str, Figure] = {}
    for d in range(len(probe.locations)):
        title = f"RSA affinity at {probe.label(d)}"
        out[title] = Heatmap.from_matrix(title, probe.tasks, probe.affinity[d].numpy())
    if path:
        unit = "parameters" if coster.measure == "params" else "GMac"
        out["budget path"] = Curve(
            "budget path: the best tree's clustering cost as the budget grows",
            f"cost ({unit})",
            "clustering cost",
            tuple(p.cost for p in path),
            {"clustering cost": tuple(p.dissimilarity for p in path)},
        )
    out["tree"] = Table(
        "chosen tree: task groups per block",
        ("block", "name", "groups"),
        tuple((b, backbone.blocks[b].name, _text(g)) for b, g in enumerate(groups)),
    )
    return out


def history_entries(
    probe: AffinityProbe, path: Sequence[PathPoint], coster: TreeCost, choice: TreeChoice, groups: Groups,
    limit: BudgetLimit,
) -> dict[str, Any]:
    """The affinity tensor, the budget path, the tree and the budget as JSON-ready values."""
    return {
        "affinity": {
            "tasks": probe.tasks,
            "locations": probe.locations,
            "blocks": probe.block_names,
            "tensor": probe.affinity.tolist(),
            "mean_off_diagonal": probe.mean_affinity(),
            "num_images": probe.num_images,
        },
        "budget_path": [(p.cost, p.dissimilarity, coster.groups(p.tree)) for p in path],
        "tree": {
            "text": str(choice.tree),
            "locations": tuple(partition_of(p, probe.tasks) for p in choice.tree.partitions),
            "blocks": groups,
        },
        "budget": {
            "measure": coster.measure,
            "described": limit.budget.describe(),
            "value": limit.value,
            "one_net": limit.one_net,
            "stn": limit.stn,
            "fraction": limit.fraction,
        },
    }
