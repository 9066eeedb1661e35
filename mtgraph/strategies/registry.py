"""The explicit registry of strategies: name -> :class:`~mtgraph.strategies.protocol.Strategy`.

The table below is the whole list: a name typed by a user is looked up here,
never imported as a module or resolved to a class by string.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping

from mtgraph.errors import ConfigError
from mtgraph.strategies.protocol import Strategy

__all__ = ["registry", "get_strategy"]


@functools.cache
def registry() -> Mapping[str, Strategy]:
    """Every strategy by its name, in the order of the papers (read-only).

    Returns:
        ``{"mtsl": ..., "affinity": ..., "adashare": ..., "grouping": ..., "smtl": ...}``.

    Examples:
        >>> from mtgraph.strategies import registry
        >>> list(registry())
        ['mtsl', 'affinity', 'adashare', 'grouping', 'smtl']
    """
    from mtgraph.strategies.adashare.entry import AdaShareStrategy
    from mtgraph.strategies.affinity.entry import AffinityStrategy
    from mtgraph.strategies.grouping.entry import GroupingStrategy
    from mtgraph.strategies.mtsl.entry import MTSLStrategy
    from mtgraph.strategies.smtl.entry import SMTLStrategy

    strategies: list[Strategy] = [MTSLStrategy(), AffinityStrategy(), AdaShareStrategy(), GroupingStrategy(), SMTLStrategy()]
    return types.MappingProxyType({s.name: s for s in strategies})


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``.

    Raises:
        ConfigError: no strategy has that name (the known names are listed).

    Examples:
        >>> from mtgraph.strategies import get_strategy
        >>> get_strategy("mtsl").name
        'mtsl'
        >>> get_strategy("mtl")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: unknown strategy 'mtl'; choose one of mtsl, affinity, adashare, grouping, smtl
    """
    strategies = registry()
    if not isinstance(name, str) or name not in strategies:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(strategies)}")
    return strategies[name]
