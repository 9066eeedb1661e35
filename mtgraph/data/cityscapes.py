"""Cityscapes (7- or 19-class segmentation, depth) from preprocessed ``.npy`` files.

Expected tree (the layout of the preprocessed Cityscapes release used by MTAN
and many later multi-task repositories; 2975 train and 500 val images at
128x256)::

    <root>/
      train/                      val/  (same sub-folders)
        image/0.npy ... N-1.npy   float (H, W, 3) RGB in [0, 1]
        label_7/<i>.npy           (H, W) class ids 0..6, -1 = unlabelled
        label_19/<i>.npy          (H, W) class ids 0..18, -1 = unlabelled
                                  (only the folder of the chosen class count
                                  is needed)
        depth/<i>.npy             float (H, W, 1), values as released (derived
                                  from disparity in the MTAN release), 0 = no
                                  measurement
        normal/<i>.npy            optional: float (H, W, 3) in [-1, 1]; only
                                  read when ``normals`` is requested

Each sample is ``(image [3, H, W], {task: target})`` with task names
``seg`` (int64 [H, W]) and ``depth`` (float32 [1, H, W]) and, on request,
``normals``, the derived ``edges`` and ``image`` (autoencoder target).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mtgraph.data.npy_folder import NpyFolderDataset
from mtgraph.errors import ConfigError

__all__ = ["Cityscapes"]


class Cityscapes(NpyFolderDataset):
    """Cityscapes split ``split`` under ``root`` (see the module docstring for the tree).

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"`` (any sub-folder name is accepted).
        num_classes: 7 or 19; labels are read from ``label_<num_classes>/``.
        tasks: targets to return, from ``seg``, ``depth``, ``normals``,
            ``edges``, ``image``.

    Raises:
        ConfigError: ``num_classes`` is not 7 or 19, or a task is unknown.
        DataError: the tree does not match the expected layout (see
            :class:`~mtgraph.data.NpyFolderDataset`).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from mtgraph.data import Cityscapes
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for folder, array in [("image", np.zeros((4, 8, 3))), ("label_7", np.full((4, 8), -1)),
        ...                           ("depth", np.ones((4, 8, 1)))]:
        ...         Path(root, "train", folder).mkdir(parents=True)
        ...         np.save(Path(root, "train", folder, "0.npy"), array)
        ...     image, targets = Cityscapes(root)[0]
        >>> tuple(image.shape), sorted(targets), int(targets["seg"].min())
        ((3, 4, 8), ['depth', 'seg'], -1)
        >>> Cityscapes("anywhere", num_classes=8)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: Cityscapes num_classes must be 7 or 19, got 8
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        num_classes: int = 7,
        tasks: Sequence[str] = ("seg", "depth"),
    ) -> None:
        if num_classes not in (7, 19):
            raise ConfigError(f"Cityscapes num_classes must be 7 or 19, got {num_classes}")
        super().__init__(
            root,
            split,
            tasks,
            num_classes=num_classes,
            folders={"label": f"label_{num_classes}"},
            name=f"Cityscapes-{num_classes}",
        )
