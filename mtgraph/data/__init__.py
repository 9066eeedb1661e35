"""Datasets: generated multi-task scenes and loaders for preprocessed NYUv2 / Cityscapes.

Every dataset returns ``(image, {target_name: tensor})`` with the image a
float32 ``[3, H, W]`` tensor in ``[0, 1]`` and dense targets named ``seg``,
``depth``, ``edges``, ``normals``, ``image`` (see each module for shapes).
"""

from mtgraph.data.cityscapes import Cityscapes
from mtgraph.data.memory import InMemory
from mtgraph.data.npy_folder import IGNORE_INDEX, NpyFolderDataset
from mtgraph.data.nyuv2 import NYUV2_CLASSES, NYUv2
from mtgraph.data.scenes import (
    DESIGNED_CLUSTERS,
    DESIGNED_TASKS,
    PRESETS,
    SHAPES,
    Scene,
    SceneConfig,
    SceneDataset,
    designed_tasks,
    label_shares,
    render_scene,
)
from mtgraph.data.targets import backproject, normals_from_depth, semantic_edges

__all__ = [
    "SHAPES",
    "PRESETS",
    "DESIGNED_TASKS",
    "DESIGNED_CLUSTERS",
    "Scene",
    "SceneConfig",
    "SceneDataset",
    "render_scene",
    "designed_tasks",
    "label_shares",
    "IGNORE_INDEX",
    "NpyFolderDataset",
    "NYUV2_CLASSES",
    "NYUv2",
    "Cityscapes",
    "InMemory",
    "semantic_edges",
    "normals_from_depth",
    "backproject",
]
