"""The validated options of a branched-networks run (:class:`AffinityConfig`) and :func:`config_for`.

The budget is not an option: it is the :class:`~mtgraph.Budget` given to
:meth:`~mtgraph.strategies.affinity.AffinityStrategy.learn` (default
:data:`DEFAULT_BUDGET`, halfway from One-Net to STN in parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.options import check_choice, check_flag, check_number
from mtgraph.problem import Problem
from mtgraph.strategies.affinity.locations import LOCATION_PRESETS, resolve_locations
from mtgraph.strategies.affinity.probe import MIN_PROBE_IMAGES

__all__ = [
    "AffinityConfig", "DEFAULT_BUDGET", "INITS", "SHARED_INITS", "LINKAGES", "SEARCHES", "config_for", "default_locations",
]

#: How the branched network starts: fresh block copies, or the single-task networks' weights.
INITS = ("scratch", "stn")
#: With ``init="stn"``, what a block shared by a group starts from: its first task's STN block, or the mean.
SHARED_INITS = ("first", "average")
#: Readings of the paper's clustering cost (see :mod:`~mtgraph.strategies.affinity.tree_search`).
LINKAGES = ("diameter", "diameter_all", "element_max")
#: Tree search methods (see :mod:`~mtgraph.strategies.affinity.tree_search`).
SEARCHES = ("auto", "exhaustive", "branch_and_bound", "beam")
#: The budget used when none is given: halfway from One-Net's parameter count to the STN's.
DEFAULT_BUDGET = Budget.params(0.5, relative_to="one_net..stn")

_OWNER = "AffinityConfig"


@dataclass(frozen=True)
class AffinityConfig:
    """Options of the ``affinity`` strategy (validated on construction; ConfigError names the field).

    Affinity:
        locations: candidate branch locations: ``"stages"`` (default, the
            paper's setting: after each stage of a residual network, see
            :func:`~mtgraph.strategies.affinity.resolve_locations`), ``"all"``
            (the output of every block) or strictly increasing block indices.
        root_shared: the first segment (up to the first location) is shared
            by every task (the paper: the root holds f_0 and is shared).
        probe_images: K, held-out images of the RSA probe (at least 3).
        probe_batch_size: images per forward pass of the probe.

    Search (see :mod:`~mtgraph.strategies.affinity.tree_search`):
        linkage: clustering cost reading, ``"diameter"`` (default),
            ``"diameter_all"`` or ``"element_max"``.
        search: ``"auto"``, ``"exhaustive"``, ``"branch_and_bound"`` or ``"beam"``.
        budget_path: also compute the Pareto path of trees as the budget grows.
        exact_cost: build and measure every candidate instead of summing
            per-block costs (slow; automatic when the backbone ties weights
            across blocks).

    Training (Adam; epochs may be fractional and are rounded to steps):
        stn_epochs: epochs of the single-task networks (not used when trained
            STN weights are given to ``learn``).
        epochs: epochs of the branched network.
        init: ``"scratch"`` (fresh weights, default) or ``"stn"`` (start from
            the single-task networks); shared_init: with ``"stn"``, a shared
            block copies its group's first task (``"first"``) or averages the
            members (``"average"``). The paper does not say how its branched
            networks are initialised (notes/methods-001-002.md §A.5.9).
        lr, batch_size, eval_batch_size.
        device: where to train (``"cpu"``, ``"cuda:0"``); None: the problem's device.

    Raises:
        ConfigError: an option out of range or of the wrong type, naming it.

    Examples:
        >>> from mtgraph.strategies.affinity import AffinityConfig
        >>> config = AffinityConfig(locations=[1, 3], init="stn")
        >>> config.locations, config.probe_images, config.device
        ((1, 3), 64, None)
        >>> AffinityConfig(probe_images=2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: AffinityConfig.probe_images must be an integer >= 3, got 2
    """

    locations: str | tuple[int, ...] = "stages"
    root_shared: bool = True
    probe_images: int = 64
    probe_batch_size: int = 64
    linkage: str = "diameter"
    search: str = "auto"
    budget_path: bool = True
    exact_cost: bool = False
    stn_epochs: float = 4.0
    epochs: float = 4.0
    init: str = "scratch"
    shared_init: str = "first"
    lr: float = 1e-3
    batch_size: int = 32
    eval_batch_size: int = 64
    device: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "locations", _checked_locations(self.locations))
        check_flag(_OWNER, "root_shared", self.root_shared)
        # RSA ranks the K(K-1)/2 image pairs of each RDM: fewer than 3 images leave nothing to rank.
        check_number(_OWNER, "probe_images", self.probe_images, low=MIN_PROBE_IMAGES, integer=True)
        check_number(_OWNER, "probe_batch_size", self.probe_batch_size, low=1, integer=True)
        check_choice(_OWNER, "linkage", self.linkage, LINKAGES)
        check_choice(_OWNER, "search", self.search, SEARCHES)
        check_flag(_OWNER, "budget_path", self.budget_path)
        check_flag(_OWNER, "exact_cost", self.exact_cost)
        check_number(_OWNER, "stn_epochs", self.stn_epochs, low=0)
        check_number(_OWNER, "epochs", self.epochs, low=0)
        check_choice(_OWNER, "init", self.init, INITS)
        check_choice(_OWNER, "shared_init", self.shared_init, SHARED_INITS)
        check_number(_OWNER, "lr", self.lr, low=0, strict_low=True)
        check_number(_OWNER, "batch_size", self.batch_size, low=1, integer=True)
        check_number(_OWNER, "eval_batch_size", self.eval_batch_size, low=1, integer=True)
        object.__setattr__(self, "device", _checked_device(self.device))


def _checked_locations(locations: Any) -> str | tuple[int, ...]:
    if isinstance(locations, str):
        check_choice(_OWNER, "locations", locations, LOCATION_PRESETS)
        return locations
    if not isinstance(locations, Sequence):
        raise ConfigError(
            f"{_OWNER}.locations must be one of {list(LOCATION_PRESETS)} or a sequence of block indices, "
            f"got {locations!r}"
        )
    chosen = tuple(locations)
    if not chosen:
        raise ConfigError(f"{_OWNER}.locations must name at least one block")
    bad = [b for b in chosen if isinstance(b, bool) or not isinstance(b, int) or b < 0]
    if bad:
        raise ConfigError(f"{_OWNER}.locations must be block indices (integers >= 0), got {bad}")
    if any(b >= c for b, c in zip(chosen, chosen[1:])):
        raise ConfigError(f"{_OWNER}.locations must be strictly increasing, got {list(chosen)}")
    return chosen


def _checked_device(device: Any) -> str | None:
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"{_OWNER}.device must be None or a device name such as 'cpu', got {device!r}")
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{_OWNER}.device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc


def default_locations(problem: Problem) -> str:
    """``"stages"`` when the problem's backbone has at least two, else ``"all"`` (see :func:`config_for`).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import default_locations
        >>> default_locations(mtgraph.toy_problem())  # a plain network of equal-shaped blocks: one stage
        'all'
    """
    return "stages" if len(resolve_locations(problem.backbone, "stages")) >= 2 else "all"


def config_for(problem: Problem, epochs: float, *, batch_size: int = 16) -> AffinityConfig:
    """A configuration whose training totals about ``epochs`` epochs: half for the STNs, half for the tree.

    The branched network starts from the STN weights (``init="stn"``), so each
    of its weights has seen about ``epochs`` epochs, as have the references
    trained for ``epochs``. Locations are the ``"stages"`` (the paper's
    setting) when the backbone has at least two, else every block (a plain
    network of equal-shaped blocks has one stage, which leaves nothing to
    branch with the root shared). The RSA probe takes up to 64 images (fewer
    when the probe data is smaller, at least 3). Everything else keeps its
    default.

    Args:
        problem: the problem (its backbone decides the locations, its data the probe size).
        epochs: the total training budget, > 0.
        batch_size: images per step.

    Returns:
        The :class:`AffinityConfig`.

    Raises:
        ConfigError: ``epochs`` is not a positive number.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import config_for
        >>> config = config_for(mtgraph.toy_problem(blocks=3), 4)
        >>> config.stn_epochs, config.epochs, config.init, config.locations, config.probe_images
        (2.0, 2.0, 'stn', 'all', 4)
    """
    check_number("config_for", "epochs", epochs, low=0, strict_low=True)
    probe_data = problem.val_data if problem.val_data is not None else problem.train_data
    dataset = probe_data.dataset if isinstance(probe_data, DataLoader) else probe_data
    probe = max(MIN_PROBE_IMAGES, min(64, len(dataset)))  # type: ignore[arg-type]
    half = float(epochs) / 2.0
    return AffinityConfig(
        locations=default_locations(problem),
        probe_images=probe,
        stn_epochs=half,
        epochs=half,
        init="stn",
        batch_size=batch_size,
    )
