"""NYUv2 (13-class segmentation, depth, surface normals) from preprocessed ``.npy`` files.

Expected tree (the layout of the preprocessed NYUv2 release used by MTAN and
many later multi-task repositories; 795 train and 654 val images at 288x384)::

    <root>/
      train/                      val/  (same sub-folders)
        image/0.npy ... N-1.npy   float (H, W, 3) RGB in [0, 1]
        label/<i>.npy             (H, W) class ids 0..12, -1 = unlabelled
        depth/<i>.npy             float (H, W, 1) metres, 0 = no measurement
        normal/<i>.npy            float (H, W, 3) unit normals in [-1, 1],
                                  0 = no measurement

Each sample is ``(image [3, H, W], {task: target})`` with task names
``seg`` (int64 [H, W]), ``depth`` (float32 [1, H, W]), ``normals``
(float32 [3, H, W]) and, on request, the derived ``edges`` (float32
[1, H, W]) and ``image`` (autoencoder target).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mtgraph.data.npy_folder import NpyFolderDataset

__all__ = ["NYUV2_CLASSES", "NYUv2"]

#: Number of segmentation classes of the 13-class NYUv2 labelling.
NYUV2_CLASSES = 13


class NYUv2(NpyFolderDataset):
    """NYUv2 split ``split`` under ``root`` (see the module docstring for the tree).

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"`` (any sub-folder name is accepted).
        tasks: targets to return, from ``seg``, ``depth``, ``normals``,
            ``edges``, ``image``.

    Raises:
        ConfigError: no task or an unknown one.
        DataError: the tree does not match the expected layout (see
            :class:`~mtgraph.data.NpyFolderDataset`).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from mtgraph.data import NYUv2
        >>> arrays = {"image": np.zeros((4, 6, 3)), "label": np.full((4, 6), 12), "depth": np.ones((4, 6, 1)),
        ...           "normal": np.zeros((4, 6, 3))}
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for folder, array in arrays.items():
        ...         Path(root, "val", folder).mkdir(parents=True)
        ...         np.save(Path(root, "val", folder, "0.npy"), array)
        ...     image, targets = NYUv2(root, "val")[0]
        >>> {k: tuple(v.shape) for k, v in targets.items()}
        {'seg': (4, 6), 'depth': (1, 4, 6), 'normals': (3, 4, 6)}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        tasks: Sequence[str] = ("seg", "depth", "normals"),
    ) -> None:
        super().__init__(root, split, tasks, num_classes=NYUV2_CLASSES, name="NYUv2")
