"""A dataset held in memory: every sample read once, then served from a list."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class InMemory(Dataset):
    """Every item of ``data``, read once and kept in a list.

    Generated scenes are rendered on every read (about a millisecond each at
    64 pixels); training reads each sample once per epoch, so a small dataset
    used for many epochs is cheaper rendered once. Items are returned as
    stored: a caller editing one in place edits it for later reads.

    Args:
        data: a map-style dataset (``len`` and integer indexing).

    Examples:
        >>> from mtgraph.data import InMemory, SceneDataset
        >>> scenes = SceneDataset(3, size=32, seed=1)
        >>> held = InMemory(scenes)
        >>> len(held), bool((held[2][0] == scenes[2][0]).all())
        (3, True)
    """

    def __init__(self, data: Dataset) -> None:
        self.items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]
