"""Dense targets derived from other targets: semantic edges and surface normals.

Both the generated scenes and the real-dataset loaders use these functions, so
that "edges" always means the same thing (pixels on a boundary between two
labelled classes) and generated normals are, by construction, the normals of the
returned depth map.
"""

from __future__ import annotations

import numpy as np

__all__ = ["semantic_edges", "backproject", "normals_from_depth"]


def semantic_edges(seg: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Return a float32 ``[H, W]`` map that is 1 where ``seg`` differs from a 4-neighbour.

    Both pixels of a differing pair are marked, so a boundary is two pixels
    wide. Pixels labelled ``ignore_index`` are never edges and never make their
    neighbours edges: whether a boundary exists next to an unlabelled region is
    unknown.

    Args:
        seg: ``[H, W]`` label map.
        ignore_index: label of unlabelled pixels (None: every pixel is labelled).

    Returns:
        The ``[H, W]`` float32 edge map, 1 on boundaries and 0 elsewhere.

    Examples:
        >>> import numpy as np
        >>> from mtgraph.data import semantic_edges
        >>> semantic_edges(np.array([[0, 0, 1, 1], [0, 0, 1, 1]]))
        array([[0., 1., 1., 0.],
               [0., 1., 1., 0.]], dtype=float32)
        >>> semantic_edges(np.array([[0, -1, 1]]), ignore_index=-1)  # no boundary next to unlabelled pixels
        array([[0., 0., 0.]], dtype=float32)
    """
    seg = np.asarray(seg)
    edge = np.zeros(seg.shape, dtype=bool)
    valid = np.ones(seg.shape, dtype=bool) if ignore_index is None else seg != ignore_index
    # Horizontal neighbours (axis 1), then vertical neighbours (axis 0).
    differ = (seg[:, 1:] != seg[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[:, 1:] |= differ
    edge[:, :-1] |= differ
    differ = (seg[1:, :] != seg[:-1, :]) & valid[1:, :] & valid[:-1, :]
    edge[1:, :] |= differ
    edge[:-1, :] |= differ
    return edge.astype(np.float32)


def backproject(depth: np.ndarray, focal: float) -> np.ndarray:
    """Return the camera-frame 3-D points ``[3, H, W]`` of a depth map.

    Pinhole camera with the principal point at the image centre and ``focal``
    in pixels; the frame is x right, y down, z forward (depth = z).

    Args:
        depth: ``[H, W]`` depth map (z of each pixel).
        focal: focal length in pixels.

    Returns:
        A float64 ``[3, H, W]`` array of the x, y, z coordinates of each pixel.

    Examples:
        >>> import numpy as np
        >>> from mtgraph.data import backproject
        >>> points = backproject(np.full((2, 2), 2.0), focal=1.0)
        >>> points.shape, points[:, 0, 0].tolist()  # top-left pixel: left of and above the axis
        ((3, 2, 2), [-1.0, -1.0, 2.0])
    """
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float64) + 0.5 - w / 2) / focal
    v = (np.arange(h, dtype=np.float64) + 0.5 - h / 2) / focal
    return np.stack([depth * u[None, :], depth * v[:, None], depth])


def normals_from_depth(depth: np.ndarray, focal: float) -> np.ndarray:
    """Return unit surface normals ``[3, H, W]`` (float32) of a depth map.

    The normal at a pixel is the cross product of the two tangent vectors of
    the back-projected surface (:func:`backproject`): central differences
    along columns and along rows (one-sided on the image border), oriented
    towards the camera. The output frame is x right, y up, z towards the
    viewer, so a surface facing the camera is ``(0, 0, 1)`` and a floor seen
    from above is roughly ``(0, 1, 0)``.

    Because the normal is computed from the depth map itself it is exactly
    orthogonal to the depth map's tangents; across a depth discontinuity it
    describes the (steep) surface joining the two sides.

    Args:
        depth: ``[H, W]`` depth map, positive.
        focal: focal length in pixels.

    Returns:
        A float32 ``[3, H, W]`` array of unit normals.

    Examples:
        >>> import numpy as np
        >>> from mtgraph.data import normals_from_depth
        >>> normals = normals_from_depth(np.full((4, 4), 3.0), focal=4.0)  # a wall facing the camera
        >>> normals.shape, bool(np.allclose(normals[2], 1.0))
        ((3, 4, 4), True)
    """
    points = backproject(depth, focal)
    # Only directions matter, so the differences are left unscaled.
    along_cols = _central_difference(points, axis=2)
    along_rows = _central_difference(points, axis=1)
    # rows x cols points towards the camera (negative z) for a visible surface.
    ax, ay, az = along_rows
    bx, by, bz = along_cols
    normal = np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])
    # Depth is positive, so the tangents never vanish; the floor only guards
    # against a degenerate (parallel) pair at a sharp discontinuity.
    normal /= np.maximum(np.sqrt(np.einsum("chw,chw->hw", normal, normal)), 1e-12)
    # Camera frame (x right, y down, z forward) -> (x right, y up, z to viewer).
    normal[1:] *= -1.0
    return normal.astype(np.float32)


def _central_difference(values: np.ndarray, axis: int) -> np.ndarray:
    """``values[i+1] - values[i-1]`` along ``axis``, one-sided at both ends."""
    moved = np.moveaxis(values, axis, -1)
    out = np.empty_like(moved)
    out[..., 1:-1] = moved[..., 2:] - moved[..., :-2]
    out[..., 0] = moved[..., 1] - moved[..., 0]
    out[..., -1] = moved[..., -1] - moved[..., -2]
    return np.moveaxis(out, -1, axis)
