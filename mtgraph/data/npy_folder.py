"""A dataset of per-sample ``.npy`` files, one folder per modality.

This is the layout of the preprocessed NYUv2 and Cityscapes releases used by
much multi-task code (MTAN and its descendants)::

    <root>/<split>/image/<i>.npy     float (H, W, 3) in [0, 1] (uint8 is scaled)
    <root>/<split>/<label>/<i>.npy   (H, W) integer-valued class ids, -1 = ignore
    <root>/<split>/depth/<i>.npy     float (H, W, 1) or (H, W), 0 = no measurement
    <root>/<split>/normal/<i>.npy    float (H, W, 3) in [-1, 1], 0 = no measurement

Samples are the file stems of ``image/``, ordered numerically when they are
all integers. Every folder a requested task needs must hold the same stems.
Files are read lazily, one sample per ``__getitem__``, and every array is
checked (shape, dtype, value range) so a malformed file fails with its path.

Two targets are derived rather than read: ``edges`` (semantic boundaries of
the label map, :func:`mtgraph.data.targets.semantic_edges`) and ``image``
(the autoencoder target, a copy of the input).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mtgraph.data.targets import semantic_edges
from mtgraph.errors import ConfigError, DataError

__all__ = ["IGNORE_INDEX", "NpyFolderDataset"]

#: Label value of unlabelled pixels in the label maps.
IGNORE_INDEX = -1

# Which source folder (by role) each task reads; derived tasks read the
# folder they are derived from.
_TASK_SOURCE = {
    "seg": "label",
    "edges": "label",
    "depth": "depth",
    "normals": "normal",
    "image": "image",
}


class NpyFolderDataset(Dataset):
    """Per-sample ``.npy`` files in one folder per modality (see the module docstring).

    Args:
        root: dataset root holding one folder per split.
        split: split folder name, e.g. ``"train"`` or ``"val"``.
        tasks: targets to return, a subset of ``seg``, ``depth``, ``normals``,
            ``edges``, ``image``.
        num_classes: number of segmentation classes (labels ``0..num_classes-1``).
        folders: folder name of each role (``label``, ``depth``, ``normal``),
            for datasets that name them differently (e.g. ``label_7``).
        name: dataset name used in error messages.

    Raises:
        ConfigError: no task or an unknown one.
        DataError: a missing root, split or modality folder, an empty split,
            or a sample missing from a folder; (from ``__getitem__``) a file
            that cannot be read or holds a malformed array. The message names
            the path and the expected layout.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from mtgraph.data import NpyFolderDataset
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for folder, array in [("image", np.zeros((4, 6, 3))), ("seg_maps", np.ones((4, 6)))]:
        ...         Path(root, "val", folder).mkdir(parents=True)
        ...         np.save(Path(root, "val", folder, "0.npy"), array)
        ...     data = NpyFolderDataset(root, "val", ("seg", "edges"), num_classes=2, folders={"label": "seg_maps"})
        ...     image, targets = data[0]
        >>> len(data), tuple(image.shape), {k: tuple(v.shape) for k, v in targets.items()}
        (1, (3, 4, 6), {'seg': (4, 6), 'edges': (1, 4, 6)})
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        tasks: Sequence[str],
        num_classes: int,
        folders: Mapping[str, str] | None = None,
        name: str = "npy folder",
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        self.ignore_index = IGNORE_INDEX
        self.folders = {"image": "image", "label": "label", "depth": "depth", "normal": "normal"}
        self.folders.update(folders or {})
        unknown = [t for t in tasks if t not in _TASK_SOURCE]
        if unknown or not tasks:
            raise ConfigError(
                f"{name}: unknown or no task(s) {unknown or list(tasks)}; available: {', '.join(_TASK_SOURCE)}"
            )
        self.tasks = tuple(tasks)
        self.split_dir = self.root / split
        roles = ["image"] + sorted({_TASK_SOURCE[t] for t in self.tasks} - {"image"})
        self._stems = self._discover(roles)

    @property
    def layout(self) -> str:
        """The expected folder tree, one line per modality, for messages and docs.

        Examples:
            >>> import tempfile
            >>> from mtgraph.data import NpyFolderDataset
            >>> with tempfile.TemporaryDirectory() as root:
            ...     NpyFolderDataset(root, "train", ("seg",), num_classes=2)
            Traceback (most recent call last):
            ...
            mtgraph.errors.DataError: npy folder: split 'train' not found: ... Expected layout: <root>/<split>/image/...
        """
        return (
            f"<root>/<split>/{self.folders['image']}/<i>.npy (H,W,3) float in [0,1]; "
            f"<root>/<split>/{self.folders['label']}/<i>.npy (H,W) int, -1 = ignore; "
            f"<root>/<split>/{self.folders['depth']}/<i>.npy (H,W[,1]) float, 0 = invalid; "
            f"<root>/<split>/{self.folders['normal']}/<i>.npy (H,W,3) float in [-1,1]"
        )

    def _fail(self, problem: str, path: Path) -> DataError:
        return DataError(f"{self.name}: {problem}: {path}. Expected layout: {self.layout}")

    def _discover(self, roles: Sequence[str]) -> list[str]:
        """Check the folders of ``roles`` exist and hold the same samples; return the stems."""
        if not self.root.is_dir():
            raise self._fail("dataset root is not a folder", self.root)
        if not self.split_dir.is_dir():
            raise self._fail(f"split {self.split!r} not found", self.split_dir)
        stems_by_role = {}
        for role in roles:
            folder = self.split_dir / self.folders[role]
            if not folder.is_dir():
                raise self._fail(f"missing {role} folder", folder)
            stems_by_role[role] = {p.stem for p in folder.iterdir() if p.suffix == ".npy"}
        stems = stems_by_role["image"]
        if not stems:
            raise self._fail("empty split: no .npy files", self.split_dir / self.folders["image"])
        for role in roles[1:]:
            missing = sorted(stems - stems_by_role[role])
            if missing:
                folder = self.split_dir / self.folders[role]
                raise self._fail(
                    f"{len(missing)} sample(s) of image/ have no {role} file, first",
                    folder / f"{missing[0]}.npy",
                )
        numeric = all(s.isdigit() for s in stems)
        return sorted(stems, key=int) if numeric else sorted(stems)

    def __len__(self) -> int:
        return len(self._stems)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stem = self._stems[index]
        image = self._read_image(stem)
        size = image.shape[1:]
        targets: dict[str, np.ndarray] = {}
        label = self._read_label(stem, size) if "seg" in self.tasks or "edges" in self.tasks else None
        for task in self.tasks:
            if task == "seg" and label is not None:
                targets[task] = label
            elif task == "edges" and label is not None:
                targets[task] = semantic_edges(label, self.ignore_index)[None]
            elif task == "depth":
                targets[task] = self._read_depth(stem, size)
            elif task == "normals":
                targets[task] = self._read_normal(stem, size)
            else:  # "image": the autoencoder target
                targets[task] = image.copy()
        return torch.from_numpy(image), {k: torch.from_numpy(v) for k, v in targets.items()}

    def _load(self, role: str, stem: str) -> tuple[np.ndarray, Path]:
        path = self.split_dir / self.folders[role] / f"{stem}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise self._fail(f"cannot read {role} file ({exc})", path) from exc
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise self._fail(f"{role} file does not hold a numeric array", path)
        return array, path

    def _read_image(self, stem: str) -> np.ndarray:
        array, path = self._load("image", stem)
        if array.ndim != 3 or array.shape[2] != 3:
            raise self._fail(f"image has shape {array.shape}, expected (H, W, 3)", path)
        if array.dtype == np.uint8:
            array = array / 255.0
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise self._fail("image has non-finite values", path)
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))

    def _read_label(self, stem: str, size: tuple[int, ...]) -> np.ndarray:
        array, path = self._load("label", stem)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.shape != tuple(size):
            raise self._fail(f"label has shape {array.shape}, expected {tuple(size)} (H, W)", path)
        labels = array.astype(np.int64)
        # Labels are often stored as float; anything fractional is corruption.
        bad = (labels != array) | (labels < IGNORE_INDEX) | (labels >= self.num_classes)
        if bad.any():
            raise self._fail(
                f"label values must be integers in -1..{self.num_classes - 1}, found {array[bad][0]}",
                path,
            )
        return labels

    def _read_depth(self, stem: str, size: tuple[int, ...]) -> np.ndarray:
        array, path = self._load("depth", stem)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.shape != tuple(size):
            raise self._fail(f"depth has shape {array.shape}, expected {tuple(size)} (H, W[, 1])", path)
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or (array < 0).any():
            raise self._fail("depth must be finite and >= 0 (0 = no measurement)", path)
        return array[None]

    def _read_normal(self, stem: str, size: tuple[int, ...]) -> np.ndarray:
        array, path = self._load("normal", stem)
        if array.shape != (*size, 3):
            raise self._fail(f"normal has shape {array.shape}, expected {(*size, 3)} (H, W, 3)", path)
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or np.abs(array).max() > 1.0 + 1e-3:
            raise self._fail("normal components must be finite and in [-1, 1]", path)
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))
