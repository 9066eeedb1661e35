"""Tasks: heads, losses, metric meters and Δ_MTL.

A :class:`Task` is a frozen value built by a factory (``segmentation``,
``depth``, ``edges``, ``normals``, ``autoencoder``, ``regression``,
``classification``); its ``new_meter()`` accumulates metrics over batches and
``higher_is_better`` gives their directions for :func:`delta_mtl`.
"""

from mtgraph.tasks.delta import delta_mtl, task_deltas
from mtgraph.tasks.heads import ClassificationHead, DenseHead, HeadFactory, classification_head, dense_head
from mtgraph.tasks.losses import (
    classification_loss,
    depth_loss,
    edge_loss,
    mse_loss,
    normals_loss,
    segmentation_loss,
)
from mtgraph.tasks.metrics import (
    AccuracyMeter,
    DepthMeter,
    EdgeMeter,
    Meter,
    MSEMeter,
    NormalsMeter,
    SegmentationMeter,
)
from mtgraph.tasks.task import (
    Task,
    autoencoder,
    classification,
    dense_tasks,
    depth,
    edges,
    normals,
    regression,
    segmentation,
)

__all__ = [
    "Task",
    "segmentation",
    "depth",
    "edges",
    "normals",
    "autoencoder",
    "regression",
    "classification",
    "dense_tasks",
    "HeadFactory",
    "DenseHead",
    "ClassificationHead",
    "dense_head",
    "classification_head",
    "Meter",
    "SegmentationMeter",
    "DepthMeter",
    "EdgeMeter",
    "NormalsMeter",
    "MSEMeter",
    "AccuracyMeter",
    "segmentation_loss",
    "depth_loss",
    "edge_loss",
    "normals_loss",
    "mse_loss",
    "classification_loss",
    "delta_mtl",
    "task_deltas",
]
