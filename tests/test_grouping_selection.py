"""Network selection under a budget (papers/003 §5.2–§5.3, §6): exact search, approximations, baselines.

The regression fixture is notes/methods-003-004.md §A.10 (Setting 1 of the
authors' released loss tables): selecting on the validation columns must give
the §A.9 optimal groupings, and scoring them on the test columns the §A.9
curves.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies.grouping.selection import (
    Candidate,
    Solution,
    brute_force_select,
    budget_sweep,
    cheapest_cover,
    early_stopping_approximation,
    higher_order_approximation,
    higher_order_candidates,
    pessimal_select,
    predict_from_pairs,
    random_baseline,
    random_solution,
    rescore,
    select_networks,
    train_chosen,
)

# --------------------------------------------------------------------------- #
# Fixture: notes §A.10 (task order s, d, n, k, e; "-" = task not solved)
# --------------------------------------------------------------------------- #

TASKS = ("s", "d", "n", "k", "e")
HALF = "half-size"

# name, cost, 5 validation losses, 5 test losses
_TABLE = """
s     0.5 0.08021 -      -       -       -       0.07742 -      -       -       -
d     0.5 -       0.1739 -       -       -       -       0.1737 -       -       -
n     0.5 -       -      0.08965 -       -       -       -      0.08932 -       -
k     0.5 -       -      -       0.09264 -       -       -      -       0.09203 -
e     0.5 -       -      -       -       0.03313 -       -      -       -       0.03268
s     1   0.08039 -      -       -       -       0.07662 -      -       -       -
d     1   -       0.1695 -       -       -       -       0.1696 -       -       -
n     1   -       -      0.08591 -       -       -       -      0.08555 -       -
k     1   -       -      -       0.0895  -       -       -      -       0.08847 -
e     1   -       -      -       -       0.02783 -       -      -       -       0.0275
sd    1   0.07858 0.1833 -       -       -       0.07419 0.1831 -       -       -
sn    1   0.074   -      0.0997  -       -       0.07084 -      0.0994  -       -
sk    1   0.07722 -      -       0.09718 -       0.07369 -      -       0.09601 -
se    1   0.07897 -      -       -       0.04462 0.07504 -      -       -       0.044
dn    1   -       0.1695 0.09275 -       -       -       0.1694 0.09249 -       -
dk    1   -       0.1706 -       0.09318 -       -       0.1713 -       0.08882 -
de    1   -       0.1748 -       -       0.03192 -       0.1753 -       -       0.03145
nk    1   -       -      0.08968 0.09181 -       -       -      0.08934 0.09077 -
ne    1   -       -      0.09358 -       0.02908 -       -      0.09327 -       0.02865
ke    1   -       -      -       0.09185 0.03488 -       -      -       0.09077 0.0344
sdn   1   0.07498 0.1698 0.09575 -       -       0.07193 0.17   0.09544 -       -
sdk   1   0.07699 0.1782 -       0.09704 -       0.07311 0.1785 -       0.09591 -
sde   1   0.07893 0.1863 -       -       0.04559 0.07617 0.1865 -       -       0.04474
snk   1   0.0722  -      0.09919 0.0961  -       0.06933 -      0.09966 0.09302 -
sne   1   0.07222 -      0.0982  -       0.03689 0.06859 -      0.09796 -       0.03625
ske   1   0.0766  -      -       0.09342 0.03508 0.07323 -      -       0.09232 0.03463
dnk   1   -       0.1654 0.09358 0.09253 -       -       0.1658 0.09318 0.09143 -
dne   1   -       0.1708 0.09396 -       0.03286 -       0.1706 0.09362 -       0.03239
dke   1   -       0.1793 -       0.09073 0.02937 -       0.1795 -       0.08968 0.02887
nke   1   -       -      0.09626 0.09024 0.02609 -       -      0.09596 0.08921 0.02566
sdnk  1   0.07762 0.1822 0.09869 0.1015  -       0.07338 0.1826 0.09836 0.1003  -
sdne  1   0.07576 0.1735 0.09718 -       0.04513 0.07249 0.1739 0.09689 -       0.04441
sdke  1   0.0795  0.1797 -       0.09272 0.04141 0.07634 0.1801 -       0.09157 0.04097
snke  1   0.07369 -      0.09944 0.09697 0.03312 0.07111 -      0.09941 0.09464 0.03328
dnke  1   -       0.1708 0.09392 0.09334 0.02803 -       0.1704 0.09356 0.09226 0.02768
sdnke 1   0.07854 0.1864 0.1     0.09814 0.04453 0.07603 0.186  0.09976 0.09704 0.04395
"""

# Early (ESA) validation losses, same row order, tasks in s d n k e order.
_EARLY = """
0.2743 | 0.385 | 0.1498 | 0.24 | 0.1529 | 0.3937 | 0.3345 | 0.1721 | 0.2337 | 0.1788 |
0.2581 0.366 | 0.2126 0.1716 | 0.2434 0.235 | 0.3073 0.4247 | 0.3665 0.155 | 0.4057 0.1634 |
0.3671 0.2621 | 0.157 0.2245 | 0.1625 0.3694 | 0.2343 0.1412 | 0.21 0.3373 0.1666 |
0.2297 0.3313 0.264 | 0.2504 0.3582 0.3321 | 0.2064 0.1723 0.2407 | 0.2172 0.176 0.3459 |
0.2381 0.2368 0.3472 | 0.3302 0.1639 0.2233 | 0.3229 0.1531 0.3651 | 0.3327 0.2455 0.3415 |
0.1547 0.2503 0.1064 | 0.2341 0.3375 0.1754 0.1987 | 0.211 0.3185 0.1707 0.1747 |
0.2294 0.3495 0.1459 0.3404 | 0.2147 0.1645 0.1796 0.3378 | 0.3263 0.1585 0.2328 0.3416 |
0.2319 0.3658 0.1727 0.2396 0.3485
"""


def _load() -> tuple[list[Candidate], list[Candidate], list[Candidate]]:
    val, test, early = [], [], []
    early_rows = [row.split() for row in _EARLY.replace("\n", " ").split("|")]
    for line, early_row in zip(_TABLE.strip().splitlines(), early_rows, strict=True):
        name, cost, *cells = line.split()
        label = HALF if cost == "0.5" else None
        solved = [t for t, cell in zip(TASKS, cells[:5], strict=True) if cell != "-"]
        assert "".join(solved) == "".join(t for t in TASKS if t in name)
        val.append(
            Candidate({t: float(c) for t, c in zip(TASKS, cells[:5], strict=True) if c != "-"}, float(cost), label)
        )
        test.append(
            Candidate({t: float(c) for t, c in zip(TASKS, cells[5:], strict=True) if c != "-"}, float(cost), label)
        )
        early.append(Candidate(dict(zip(solved, map(float, early_row), strict=True)), float(cost), label))
    return val, test, early


VAL, TEST, EARLY = _load()
BUDGETS = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


def _names(*groups: str) -> tuple[str, ...]:
    """``_names("sdn", "n/2")`` -> sorted candidate names (``/2`` = half-size)."""
    out = []
    for g in groups:
        tasks, half = (g[:-2], True) if g.endswith("/2") else (g, False)
        base = "+".join(sorted(tasks))
        out.append(f"{base}[{HALF}]" if half else base)
    return tuple(sorted(out))


def _chosen(solution: Solution) -> tuple[str, ...]:
    return tuple(n.name for n in solution.networks)


def _close(value: float, printed: float) -> bool:
    """``value`` rounds to the 4-decimal number the notes print."""
    return abs(value - printed) <= 0.5e-4 + 1e-9


# --------------------------------------------------------------------------- #
# §A.10 fixture
# --------------------------------------------------------------------------- #


def test_fixture_reproduces_table_2_pairwise_matrix() -> None:
    # Checks the transcription: rel(t | u) = (L_half(t) − L_pair{t,u}(t)) / L_half(t), in %.
    table2 = {
        ("s", "d"): -5.41, ("s", "n"): -11.29, ("s", "k"): -4.32, ("s", "e"): -34.64,
        ("d", "s"): 4.17, ("d", "n"): -3.55, ("d", "k"): 3.49, ("d", "e"): 3.76,
        ("n", "s"): 8.50, ("n", "d"): 2.48, ("n", "k"): 1.37, ("n", "e"): 12.33,
        ("k", "s"): 4.82, ("k", "d"): 1.38, ("k", "n"): -0.02, ("k", "e"): -5.26,
        ("e", "s"): 3.07, ("e", "d"): -0.92, ("e", "n"): -4.42, ("e", "k"): 1.37,
    }  # fmt: skip
    half = {c.name[0]: c.losses[c.name[0]] for c in TEST if c.label == HALF}
    pair = {c.tasks: c for c in TEST if len(c.tasks) == 2}
    for (with_, on), printed in table2.items():
        rel = 100 * (half[on] - pair[frozenset((with_, on))].losses[on]) / half[on]
        assert round(rel, 2) == printed, (with_, on)


OPTIMAL = {
    1.0: (("sdnke",), 0.5028),
    1.5: (("s/2", "dnke"), 0.4613),
    2.0: (("sdn", "nke"), 0.4522),
    2.5: (("n/2", "sdn", "nke"), 0.4461),
    3.0: (("n", "sdn", "nke"), 0.4424),
    3.5: (("n/2", "snk", "dnk", "nke"), 0.4393),
    4.0: (("n", "snk", "dnk", "nke"), 0.4356),
    4.5: (("n", "snk", "dnk", "nke"), 0.4356),
    5.0: (("n", "k", "snk", "dnk", "nke"), 0.4348),
}


@pytest.mark.parametrize("budget", BUDGETS)
def test_fixture_optimal_groupings_and_test_losses(budget: float) -> None:
    groups, printed = OPTIMAL[budget]
    solution = select_networks(VAL, TASKS, budget)
    assert _chosen(solution) == _names(*groups)
    assert solution.total_cost <= budget
    # The honest protocol (heads fixed on validation) and the authors' (re-chosen
    # on test) agree on these solutions.
    assert _close(rescore(solution, TEST, TASKS).total_loss, printed)
    assert _close(rescore(solution, TEST, TASKS, reselect_serving=True).total_loss, printed)


def test_fixture_serving_and_auxiliary_heads() -> None:
    solution = select_networks(VAL, TASKS, 2.5)  # {n(1/2), sdn, nke}: Figure 1's pattern
    assert dict(solution.serving) == {"s": "d+n+s", "d": "d+n+s", "n": f"n[{HALF}]", "k": "e+k+n", "e": "e+k+n"}
    assert solution.auxiliary_heads() == {"d+n+s": ("n",), "e+k+n": ("n",)}
    assert solution.network("k").name == "e+k+n"
    assert math.isclose(solution.total_loss, sum(solution.task_losses.values()))


def test_fixture_budget_sweep_and_brute_force() -> None:
    sweep = budget_sweep(VAL, TASKS, BUDGETS)
    assert [_chosen(p.solution) for p in sweep] == [_names(*OPTIMAL[b][0]) for b in BUDGETS]
    losses = [p.loss for p in sweep]
    assert all(a >= b for a, b in itertools.pairwise(losses))
    for budget in (1.0, 2.0, 2.5):  # brute force over 36 candidates is slow above that
        assert brute_force_select(VAL, TASKS, budget) == select_networks(VAL, TASKS, budget)


HOA_PRINTED = [0.5028, 0.4613, 0.4547, 0.4505, 0.4488, 0.4449, 0.4411, 0.4453, 0.4418]


def test_fixture_higher_order_approximation() -> None:
    trained = [c for c in VAL if len(c.tasks) <= 2]
    for budget, printed in zip(BUDGETS, HOA_PRINTED, strict=True):
        proxy = higher_order_approximation(trained, TASKS, budget).proxy
        on_test = rescore(proxy, TEST, TASKS, reselect_serving=True).total_loss
        if budget <= 4.0:
            assert _close(on_test, printed), budget
    # §A.9's HOA groupings.
    assert _chosen(higher_order_approximation(trained, TASKS, 2.0).proxy) == _names("sn", "dnke")
    assert _chosen(higher_order_approximation(trained, TASKS, 3.0).proxy) == _names("e", "sn", "dnk")


@pytest.mark.parametrize(
    ("budget", "theirs", "printed"),
    [(4.5, ("dn", "e", "k/2", "n", "sn"), 0.4453), (5.0, ("dn", "e", "k", "n", "sn"), 0.4418)],
)
def test_fixture_hoa_ties_are_broken_by_name(budget: float, theirs: tuple[str, ...], printed: float) -> None:
    # At 4.5 and 5 SNT the pair network {d, n} and the single {d} have the same
    # validation loss on d (0.1695) and the same cost, so two solutions tie
    # exactly on the HOA table. The authors' search order kept {d, n}; our tie
    # rule (names) keeps {d}, which scores 0.0002 worse on test.
    pool = higher_order_candidates([c for c in VAL if len(c.tasks) <= 2], TASKS)
    ours = select_networks(pool, TASKS, budget)
    by_name = {c.name: c for c in pool}
    alternative = select_networks([by_name[n] for n in _names(*theirs)], TASKS, budget)
    assert _chosen(ours) == tuple(sorted(n.replace("d+n", "d") for n in _names(*theirs)))
    assert (alternative.total_loss, alternative.total_cost) == (ours.total_loss, ours.total_cost)
    assert _close(rescore(alternative, TEST, TASKS, reselect_serving=True).total_loss, printed)


ESA_PRINTED = [0.5028, 0.4873, 0.4673, 0.4606, 0.4572, 0.4506, 0.4506, 0.4474, 0.4474]


def test_fixture_early_stopping_approximation() -> None:
    for budget, printed in zip(BUDGETS, ESA_PRINTED, strict=True):
        proxy = early_stopping_approximation(EARLY, TASKS, budget).proxy
        assert _close(rescore(proxy, TEST, TASKS, reselect_serving=True).total_loss, printed), budget


def test_fixture_random_baseline() -> None:
    # At 1 SNT only the all-in-one network is a valid solution.
    assert random_baseline(TEST, TASKS, 1.0, draws=50).mean_loss == pytest.approx(0.50278)
    # At 1.5 SNT a draw keeps a full network F and a half-size single h, and
    # every (F, h) pair is equally likely (first F then the first half to come,
    # or h then F); the covering pairs are the 5-task network with any h and
    # each 4-task network with its missing task. Exact mean over those 10:
    # 0.48537 (notes §A.9 prints 0.4852 for its sampled Random curve).
    halves = [c for c in TEST if c.label == HALF]
    fulls = [c for c in TEST if c.label is None]
    pairs = [(f, h) for f in fulls for h in halves if f.tasks | h.tasks == set(TASKS)]
    assert len(pairs) == 10
    exact = sum(select_networks([f, h], TASKS, 1.5).total_loss for f, h in pairs) / len(pairs)
    baseline = random_baseline(TEST, TASKS, 1.5, draws=1500, seed=0)
    assert baseline.mean_loss == pytest.approx(exact, abs=4 * baseline.std_loss / math.sqrt(1500))
    few = random_baseline(TEST, TASKS, 1.5, draws=100, seed=5)
    assert random_baseline(TEST, TASKS, 1.5, draws=100, seed=5) == few  # reproducible
    assert select_networks(VAL, TASKS, 1.5).total_loss < baseline.mean_loss


def test_random_draws_are_valid_and_saturated() -> None:
    rng = random.Random(3)
    for budget in (2.0, 3.5, 5.0):
        for _ in range(30):
            draw = random_solution(TEST, TASKS, budget, rng)
            assert draw.total_cost <= budget
            assert set(draw.serving) == set(TASKS)
            left = budget - draw.total_cost
            assert left < 0.5 or all(c in draw.networks or c.cost > left for c in TEST)


# --------------------------------------------------------------------------- #
# Exact selection = brute force on random instances
# --------------------------------------------------------------------------- #


def _random_instance(rng: random.Random) -> tuple[tuple[str, ...], list[Candidate]]:
    k = rng.randint(1, 6)
    tasks = tuple("abcdef"[:k])
    subsets = [frozenset(s) for r in range(1, k + 1) for s in itertools.combinations(tasks, r)]
    # At most ~13 candidates keeps brute force (2^n subsets) fast.
    chosen = set(rng.sample(subsets, min(len(subsets), rng.randint(2, 7))))
    chosen |= {frozenset((t,)) for t in tasks if rng.random() < 0.4}
    if not set().union(*chosen) >= set(tasks):
        chosen.add(frozenset(tasks))
    coarse = rng.random() < 0.4  # one decimal: exact ties in loss and cost
    candidates = []
    for subset in sorted(chosen, key=sorted):
        if coarse:
            losses = {t: rng.randint(1, 4) / 10 for t in subset}
            cost = rng.choice([0.5, 1.0, 1.0, 1.5])
        else:
            losses = {t: rng.uniform(0.01, 1.0) for t in subset}
            cost = rng.uniform(0.1, 2.0)
        candidates.append(Candidate(losses, cost))
        if rng.random() < 0.2:
            candidates.append(Candidate({t: v * rng.choice([1.0, 1.2]) for t, v in losses.items()}, cost / 2, HALF))
    return tasks, candidates


@pytest.mark.parametrize("seed", range(12))
def test_branch_and_bound_equals_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(12):
        tasks, candidates = _random_instance(rng)
        minimum, cover = cheapest_cover(candidates, tasks)
        total = math.fsum(c.cost for c in candidates)
        for budget in (minimum * rng.uniform(0.3, 0.99), minimum, minimum + rng.uniform(0, total - minimum), total):
            if budget < minimum * (1 - 1e-9):
                for solver in (select_networks, brute_force_select):
                    with pytest.raises(BudgetError, match=rf"budget must be at least {minimum:g}"):
                        solver(candidates, tasks, budget)
                continue
            fast = select_networks(candidates, tasks, budget)
            slow = brute_force_select(candidates, tasks, budget)
            assert fast == slow, (tasks, budget, str(fast), str(slow))
            assert fast.total_cost <= budget * (1 + 1e-9)
            assert set(fast.serving) == set(tasks)
        # At exactly the cheapest cover's cost, the answer costs exactly that.
        assert select_networks(candidates, tasks, minimum).total_cost == pytest.approx(minimum)
        assert math.fsum(c.cost for c in cover) == pytest.approx(minimum)


# --------------------------------------------------------------------------- #
# Pessimal baseline = the worst budget-saturated set, exactly
# --------------------------------------------------------------------------- #


def _pessimal_by_enumeration(candidates: list[Candidate], tasks: tuple[str, ...], budget: float) -> tuple:
    """Every subset: the saturated covering ones within budget, the highest total loss, ties as select_networks."""
    best = None
    for size in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            spent = sum(Fraction(c.cost) for c in subset)
            if spent > Fraction(budget * (1 + 1e-9)):
                continue
            if not all(any(t in c.losses for c in subset) for t in tasks):
                continue
            left = Fraction(budget * (1 + 1e-9)) - spent
            if any(c not in subset and Fraction(c.cost) <= left for c in candidates):
                continue  # not saturated: another network still fits
            loss = sum(Fraction(min(c.losses[t] for c in subset if t in c.losses)) for t in tasks)
            key = (-loss, spent, len(subset), tuple(sorted(c.name for c in subset)))
            if best is None or key < best:
                best = key
    return best[3]


@pytest.mark.parametrize("seed", range(8))
def test_pessimal_equals_enumeration_of_saturated_sets(seed: int) -> None:
    rng = random.Random(100 + seed)
    for _ in range(8):
        tasks, candidates = _random_instance(rng)
        if len(candidates) > 11:
            candidates = candidates[:11]
            if not set().union(*(c.tasks for c in candidates)) >= set(tasks):
                continue
        minimum, _ = cheapest_cover(candidates, tasks)
        total = math.fsum(c.cost for c in candidates)
        for budget in (minimum, minimum + rng.uniform(0, total - minimum), total):
            worst = pessimal_select(candidates, tasks, budget)
            assert tuple(n.name for n in worst.networks) == _pessimal_by_enumeration(candidates, tasks, budget)
            assert worst.total_loss >= select_networks(candidates, tasks, budget).total_loss
            left = budget * (1 + 1e-9) - worst.total_cost
            assert all(c in worst.networks or c.cost > left for c in candidates)


def test_fixture_pessimal_is_the_all_in_one_network_up_to_three_networks() -> None:
    # notes §A.6 [derived]: exact over saturated sets on Setting 1, Pessimal equals the all-in-one score (0.5028)
    # at budgets 1-3: the budget can always be filled with networks that improve no task.
    for budget in (1.0, 1.5, 2.0, 2.5, 3.0):
        assert _close(pessimal_select(TEST, TASKS, budget).total_loss, 0.5028), budget
    curve = [pessimal_select(TEST, TASKS, b).total_loss for b in BUDGETS]
    optimal = [rescore(select_networks(VAL, TASKS, b), TEST, TASKS).total_loss for b in BUDGETS]
    assert all(w >= o for w, o in zip(curve, optimal, strict=True))
    with pytest.raises(ConfigError, match="max_nodes"):
        pessimal_select(TEST, TASKS, 5.0, max_nodes=10)


def test_ties_prefer_cheaper_then_fewer_then_name() -> None:
    a = Candidate({"x": 0.2, "y": 0.3}, 1.0)
    b1 = Candidate({"x": 0.2}, 0.5)
    b2 = Candidate({"y": 0.3}, 0.5)
    # {a} and {b1, b2}: same loss, same cost; fewer networks wins.
    assert _chosen(select_networks([a, b1, b2], ("x", "y"), 1.0)) == ("x+y",)
    cheap = Candidate({"x": 0.2, "y": 0.3}, 0.9, "lean")
    assert _chosen(select_networks([a, b1, b2, cheap], ("x", "y"), 1.0)) == ("x+y[lean]",)
    twin = Candidate({"x": 0.2, "y": 0.3}, 1.0, "another")
    assert _chosen(select_networks([a, twin], ("x", "y"), 1.0)) == ("x+y",)  # "x+y" < "x+y[another]"


def test_budget_sweep_refuses_infeasible_budgets() -> None:
    with pytest.raises(BudgetError, match="costs 1"):
        budget_sweep(VAL, TASKS, [0.5, 1.0])
    assert budget_sweep(VAL, TASKS, []) == []


def test_infeasible_budget_names_the_cheapest_cover() -> None:
    with pytest.raises(BudgetError, match=r"d\+e\+k\+n\+s\) costs 1; the budget must be at least 1"):
        select_networks(VAL, TASKS, 0.9)
    halves = [c for c in VAL if c.label == HALF]
    assert cheapest_cover(halves, TASKS)[0] == 2.5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: select_networks([Candidate({"a": 0.1}, 1.0)], ("a", "b"), 5.0), r"solves task\(s\) \['b'\]"),
        (lambda: select_networks([Candidate({"a": 0.1}, 1.0)] * 2, ("a",), 5.0), "both named"),
        (lambda: Candidate({"a": math.nan}, 1.0), "finite"),
        (lambda: Candidate({"a": 0.1}, -1.0), "≥ 0"),
        (lambda: Candidate({}, 1.0), "non-empty"),
        (lambda: select_networks([Candidate({"a": 0.1}, 1.0)], "a", 5.0), "not the string"),
        (lambda: select_networks([Candidate({"a": 0.1}, 1.0)], ("a",), math.nan), "budget"),
    ],
)
def test_bad_input_is_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_heads_outside_the_task_list_are_auxiliary() -> None:
    pool = [Candidate({"a": 0.1, "z": 0.5}, 1.0), Candidate({"b": 0.2}, 1.0)]
    solution = select_networks(pool, ("a", "b"), 2.0)
    assert dict(solution.serving) == {"a": "a+z", "b": "b"}
    assert solution.auxiliary_heads() == {"a+z": ("z",)}


# --------------------------------------------------------------------------- #
# Higher-order approximation (§5.3.2) and the training hooks
# --------------------------------------------------------------------------- #


def test_pair_average_follows_the_rule_not_the_papers_example() -> None:
    pairs = [
        Candidate({"a": 0.1, "b": 0.2}, 1.0),
        Candidate({"b": 0.3, "c": 0.4}, 1.0),
        Candidate({"a": 0.5, "c": 0.6}, 1.0),
    ]
    predicted = predict_from_pairs(pairs, "abc")
    # The paper prints a = (0.1 + 0.6) / 2 = 0.35; the rule gives (0.1 + 0.5) / 2.
    assert predicted == pytest.approx({"a": 0.30, "b": 0.25, "c": 0.5})


def test_pair_average_with_missing_pairs() -> None:
    pairs = [Candidate({"a": 0.1, "b": 0.2}, 1.0), Candidate({"a": 0.3, "c": 0.4}, 1.0)]
    # No {b, c}: b averages over {a, b} only, c over {a, c} only.
    assert predict_from_pairs(pairs, "abc") == pytest.approx({"a": 0.2, "b": 0.2, "c": 0.4})
    # d has no pair inside {a, b, d}: its single-task network stands in.
    single = Candidate({"d": 0.7}, 1.0)
    assert predict_from_pairs(pairs, "abd", singles=[single]) == pytest.approx({"a": 0.1, "b": 0.2, "d": 0.7})
    with pytest.raises(ConfigError, match="cannot predict the loss of task 'd'"):
        predict_from_pairs(pairs, "abd")
    with pytest.raises(ConfigError, match="two pair networks"):
        predict_from_pairs([*pairs, Candidate({"a": 0.1, "b": 0.2}, 0.5, HALF)], "abc")
    with pytest.raises(ConfigError, match="at least 3 tasks"):
        predict_from_pairs(pairs, "ab")


def test_higher_order_candidates_cover_every_larger_subset() -> None:
    trained = [c for c in VAL if len(c.tasks) <= 2]
    pool = higher_order_candidates(trained, TASKS)
    predicted = [c for c in pool if c.predicted]
    assert len(predicted) == 10 + 5 + 1 and all(c.cost == 1.0 for c in predicted)
    assert {c.name for c in predicted} == {c.name for c in VAL if len(c.tasks) >= 3}
    sdn = next(c for c in predicted if c.name == "d+n+s")
    assert sdn.losses["s"] == pytest.approx((0.07858 + 0.074) / 2)  # pairs sd and sn
    with pytest.raises(ConfigError, match="one or two tasks"):
        higher_order_candidates(VAL, TASKS)
    assert all(c.cost == 2.0 for c in higher_order_candidates(trained, TASKS, cost=2.0) if c.predicted)


def test_training_hooks_train_the_chosen_networks() -> None:
    final_by_name = {c.name: c for c in TEST}
    trained_names: list[str] = []

    def train(candidate: Candidate) -> Candidate:
        trained_names.append(candidate.name)
        return final_by_name[candidate.name]

    esa = early_stopping_approximation(EARLY, TASKS, 2.0, train)
    assert esa.final is not None
    assert sorted(trained_names) == list(_chosen(esa.proxy))
    assert _chosen(esa.final) == _chosen(esa.proxy)
    assert esa.final.total_loss == rescore(esa.proxy, TEST, TASKS, reselect_serving=True).total_loss

    trained_names.clear()
    hoa = higher_order_approximation([c for c in VAL if len(c.tasks) <= 2], TASKS, 3.0, train)
    # {e, sn, dnk}: only the predicted 3-task network needs training.
    assert trained_names == ["d+k+n"]
    assert hoa.final is not None and _chosen(hoa.final) == _names("e", "sn", "dnk")

    with pytest.raises(ConfigError, match="same network"):
        train_chosen(esa.proxy, TASKS, lambda c: Candidate({"s": 0.1}, 1.0))
