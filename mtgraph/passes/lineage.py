"""Lineage: where every new weight key of a rewrite came from, and which old keys are gone.

A training loop uses it to carry optimizer state across a rewrite
(:func:`~mtgraph.passes.remap_optimizer`); MTSL averages the Adam moments of
fused task nodes (papers/000 appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.errors import PassError

__all__ = ["HOWS", "LineageEntry", "Lineage"]

#: How a new weight key was made from old ones.
HOWS = ("copy", "average", "fresh")


@dataclass(frozen=True)
class LineageEntry:
    """Where new weight key ``new_key`` came from.

    ``how`` is ``"copy"`` (a deep copy of one old key), ``"average"`` (the
    weighted mean of several old keys) or ``"fresh"`` (new weights, no old
    source). ``weights`` holds one mixing coefficient per source; they sum to
    1. They are filled in when omitted: ``(1.0,)`` for a copy, uniform for an
    average, ``()`` for fresh weights.

    Raises:
        PassError: ``how`` is not one of :data:`HOWS`, the sources do not fit
            ``how`` (a copy has one, an average at least one, fresh none), or
            the number of weights differs from the number of sources.

    Examples:
        >>> from mtgraph.passes import LineageEntry
        >>> entry = LineageEntry("b2.S+E", ("b2.S", "b2.E"), "average")
        >>> print(entry)
        b2.S+E <- average(b2.S, b2.E)
        >>> entry.weights  # filled in: uniform
        (0.5, 0.5)
        >>> LineageEntry("b2.S", ("b2.S+E", "b2.D"), "copy")
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: lineage of 'b2.S': a copy has exactly one source, got ['b2.S+E', 'b2.D']
    """

    new_key: str
    sources: tuple[str, ...]
    how: str
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.how not in HOWS:
            raise PassError(f"lineage of {self.new_key!r}: how must be one of {list(HOWS)}, got {self.how!r}")
        if self.how == "fresh" and self.sources:
            raise PassError(f"lineage of {self.new_key!r}: fresh weights have no sources, got {list(self.sources)}")
        if self.how == "copy" and len(self.sources) != 1:
            raise PassError(f"lineage of {self.new_key!r}: a copy has exactly one source, got {list(self.sources)}")
        if self.how == "average" and not self.sources:
            raise PassError(f"lineage of {self.new_key!r}: an average needs at least one source")
        weights = tuple(float(w) for w in self.weights)
        if not weights and self.sources:
            weights = tuple(1.0 / len(self.sources) for _ in self.sources)
        if len(weights) != len(self.sources):
            raise PassError(f"lineage of {self.new_key!r}: {len(weights)} weights for {len(self.sources)} sources")
        object.__setattr__(self, "weights", weights)

    def __str__(self) -> str:
        if self.how == "fresh":
            return f"{self.new_key} <- fresh"
        uniform = all(abs(w - 1.0 / len(self.weights)) < 1e-12 for w in self.weights)
        parts = self.sources if uniform else tuple(f"{w:g}*{s}" for s, w in zip(self.sources, self.weights))
        return f"{self.new_key} <- {self.how}({', '.join(parts)})"


@dataclass(frozen=True)
class Lineage:
    """What a rewrite did to the weights: every new key's sources, and every old key that is gone.

    Keys that are neither new (``entries``) nor ``dropped`` carried over
    unchanged, under the same name, with the same module. A single pass never
    reuses a name, but a composed lineage (:meth:`then`) can list a key as
    both dropped and new: the old weights under that name are gone and new
    ones were made from the listed sources (split, then fuse back).

    Examples:
        >>> from mtgraph.passes import Lineage, LineageEntry
        >>> fuse = Lineage((LineageEntry("b1.S+D", ("b1.S", "b1.D"), "average"),), dropped=("b1.S", "b1.D"))
        >>> copy = Lineage((LineageEntry("b1.S+D-2", ("b1.S+D",), "copy"),))
        >>> print(fuse.then(copy))  # sources in terms of the first rewrite's inputs
        b1.S+D <- average(b1.S, b1.D)
        b1.S+D-2 <- average(b1.S, b1.D)
        b1.S <- dropped
        b1.D <- dropped
        >>> fuse.new_keys, "b1.S" in fuse
        (('b1.S+D',), False)
    """

    entries: tuple[LineageEntry, ...] = ()
    dropped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "dropped", tuple(self.dropped))

    def __getitem__(self, new_key: str) -> LineageEntry:
        for entry in self.entries:
            if entry.new_key == new_key:
                return entry
        raise KeyError(f"{new_key!r} is not a new key of this lineage; new keys: {[e.new_key for e in self.entries]}")

    def __contains__(self, new_key: object) -> bool:
        return any(e.new_key == new_key for e in self.entries)

    @property
    def new_keys(self) -> tuple[str, ...]:
        """The keys this rewrite created, in creation order."""
        return tuple(e.new_key for e in self.entries)

    def then(self, later: Lineage) -> Lineage:
        """The lineage of applying this rewrite and then ``later`` (sources expressed in this one's inputs).

        A source that was itself new is replaced by its own sources, with the
        mixing coefficients multiplied; fresh sources contribute nothing.
        """
        mine = {e.new_key: e for e in self.entries}
        entries: dict[str, LineageEntry] = {}
        for key, entry in mine.items():
            if key not in later.dropped and key not in later:
                entries[key] = entry
        for entry in later.entries:
            mix: dict[str, float] = {}
            for source, weight in zip(entry.sources, entry.weights):
                if source in mine:
                    for s, w in zip(mine[source].sources, mine[source].weights):
                        mix[s] = mix.get(s, 0.0) + weight * w
                else:
                    mix[source] = mix.get(source, 0.0) + weight
            if not mix:
                entries[entry.new_key] = LineageEntry(entry.new_key, (), "fresh")
                continue
            total = sum(mix.values())
            sources = tuple(mix)
            how = "copy" if len(sources) == 1 else "average"
            entries[entry.new_key] = LineageEntry(entry.new_key, sources, how, tuple(mix[s] / total for s in sources))
        dropped = list(self.dropped) + [k for k in later.dropped if k not in mine and k not in self.dropped]
        return Lineage(entries=tuple(entries.values()), dropped=tuple(dropped))

    def __str__(self) -> str:
        lines = [str(e) for e in self.entries] + [f"{k} <- dropped" for k in self.dropped]
        return "\n".join(lines) if lines else "(no weight changes)"
