"""A generated dataset held in memory, shared by tests: rendering every sample once keeps them fast."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class InMemory(Dataset):
    """Every item of ``data``, rendered once and kept in a list."""

    def __init__(self, data: Dataset) -> None:
        self.items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]
