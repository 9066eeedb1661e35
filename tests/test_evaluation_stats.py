"""Student-t quantiles and intervals, and paired same-seed differences, against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from mtgraph.errors import ConfigError
from mtgraph.evaluation.results import PAIRED_BASELINES, RANDOM_MEDIAN, summarise
from mtgraph.evaluation.stats import paired_difference, t_cdf, t_interval, t_quantile

# The quantiles are found by bisection to ~1e-12 (relative), far inside the 1e-6 asked for; the tabulated
# values below are given to 10 or more significant digits (Abramowitz & Stegun table 26.10 / any statistics
# package), so an error of 1e-6 would be a wrong implementation, not rounding.
TOLERANCE = 1e-6

T_975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 6: 2.446911851,
         7: 2.364624252, 8: 2.306004135, 9: 2.262157163, 10: 2.228138852, 20: 2.085963447, 30: 2.042272456,
         60: 2.000297821, 120: 1.979930405}
OTHER = {(0.95, 5): 2.015048373, (0.995, 3): 5.840909310, (0.9, 10): 1.372183641, (0.99, 2): 6.964556734,
         (0.995, 7): 3.499483297}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_the_table_at_975(df: int) -> None:
    assert abs(t_quantile(0.975, df) - T_975[df]) < TOLERANCE


@pytest.mark.parametrize(("p", "df"), sorted(OTHER))
def test_t_quantile_matches_the_table_at_other_levels(p: float, df: int) -> None:
    assert abs(t_quantile(p, df) - OTHER[(p, df)]) < TOLERANCE
    assert abs(t_quantile(1 - p, df) + OTHER[(p, df)]) < TOLERANCE  # the distribution is symmetric


@pytest.mark.parametrize("p", [0.55, 0.75, 0.9, 0.975, 0.999])
def test_t_quantile_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(p: float) -> None:
    # df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi, so t_p = tan(pi (p - 1/2)).
    assert abs(t_quantile(p, 1) - math.tan(math.pi * (p - 0.5))) < TOLERANCE * max(1.0, math.tan(math.pi * (p - 0.5)))
    # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t_p = (2p - 1) / sqrt(2 p (1 - p)).
    assert abs(t_quantile(p, 2) - (2 * p - 1) / math.sqrt(2 * p * (1 - p))) < TOLERANCE


def test_t_cdf_inverts_the_quantile_and_approaches_the_normal() -> None:
    for df in (1, 3, 17):
        for p in (0.1, 0.5, 0.8, 0.99):
            assert abs(t_cdf(t_quantile(p, df), df) - p) < 1e-10
    assert abs(t_quantile(0.975, 1e9) - 1.959963985) < TOLERANCE   # the normal 97.5 % quantile


def test_t_interval_equals_the_hand_computation() -> None:
    values = [2.0, 4.0, 4.0, 5.0]            # mean 3.75; s^2 = (3.0625 + 0.0625 + 0.0625 + 1.5625) / 3 = 1.5833...
    interval = t_interval(values)
    half = 3.182446305 * math.sqrt(4.75 / 3) / 2   # t_{0.975, 3} * s / sqrt(4)
    assert interval.n == 4
    assert interval.mean == pytest.approx(3.75, abs=1e-12)
    assert interval.low == pytest.approx(3.75 - half, abs=TOLERANCE)
    assert interval.high == pytest.approx(3.75 + half, abs=TOLERANCE)


def test_t_interval_of_one_value_has_no_interval_and_refuses_nan() -> None:
    single = t_interval([1.5])
    assert (single.n, single.mean, single.low, single.high) == (1, 1.5, None, None)
    assert t_interval([]).n == 0
    with pytest.raises(ConfigError, match="finite numbers"):
        t_interval([1.0, math.nan])
    with pytest.raises(ConfigError, match=r"probability must be in \(0, 1\)"):
        t_quantile(1.0, 3)
    with pytest.raises(ConfigError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_paired_difference_pairs_by_seed_and_ignores_unpaired_seeds() -> None:
    values = {0: 10.0, 1: 20.0, 2: 30.0}
    baseline = {2: 29.0, 0: 9.0, 1: 19.0, 3: 100.0}   # another order, and a seed without a partner
    difference = paired_difference(values, baseline)
    assert (difference.n, difference.mean, difference.low, difference.high) == (3, 1.0, 1.0, 1.0)
    # Unpaired, the same numbers would give a wide interval around 1: pairing removes the seed-to-seed spread.
    unpaired = t_interval([v - b for v, b in zip([10.0, 20.0, 30.0], [29.0, 9.0, 19.0])])
    assert unpaired.mean == pytest.approx(1.0) and unpaired.high - unpaired.low > 50


def _row(name: str, kind: str, seed: int, delta: float) -> dict:
    return {"name": name, "kind": kind, "seed": seed, "gmac": 1.0, "params": 10, "delta_mtl": delta,
            "task_deltas": {"depth": delta}, "metrics": {"depth": {"rmse": 1.0}}}


def test_summary_pairs_rows_of_the_same_seed_whatever_their_order() -> None:
    learned = {0: 3.0, 1: -1.0, 2: 5.0}
    one_net = {0: 1.0, 1: -4.0, 2: 4.0}
    randoms = {0: [0.0, 2.0, 9.0], 1: [-5.0, -3.0, -2.0], 2: [1.0, 4.0, 6.0]}   # medians 2, -3, 4
    rows = [_row("STN", "stn", s, 0.0) for s in range(3)]
    rows += [_row("learned", "strategy", s, d) for s, d in learned.items()]
    rows += [_row("One-Net", "one_net", s, d) for s, d in one_net.items()]
    rows += [_row(f"random {k + 1}", "random", s, d) for s, draws in randoms.items() for k, d in enumerate(draws)]
    random.Random(0).shuffle(rows)
    summary = summarise(rows)
    paired = summary["learned"]["paired"]
    expected = paired_difference(learned, one_net)                     # differences 2, 3, 1
    assert paired["one_net"]["mean"] == pytest.approx(2.0)
    assert (paired["one_net"]["ci95_low"], paired["one_net"]["ci95_high"]) == pytest.approx((expected.low, expected.high))
    assert paired["random_median"]["mean"] == pytest.approx(((3 - 2) + (-1 + 3) + (5 - 4)) / 3)
    assert paired["width_matched"]["n"] == 0                              # no width-matched rows: nothing paired
    assert summary[RANDOM_MEDIAN]["delta_mtl_mean"] == pytest.approx((2 - 3 + 4) / 3)
    assert summary[RANDOM_MEDIAN]["draws"] == {"0": 3, "1": 3, "2": 3}
    assert list(summary)[:2] == ["learned", RANDOM_MEDIAN]
    assert set(PAIRED_BASELINES) == {"one_net", "width_matched", "random_median"}
    interval = t_interval([3.0, -1.0, 5.0])
    assert (summary["learned"]["ci95_low"], summary["learned"]["ci95_high"]) == pytest.approx((interval.low, interval.high))
