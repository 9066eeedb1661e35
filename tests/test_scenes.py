"""Generated multi-task scenes: determinism, target consistency, knobs, cache."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtgraph.data import (
    DESIGNED_CLUSTERS,
    DESIGNED_TASKS,
    IGNORE_INDEX,
    SceneConfig,
    SceneDataset,
    backproject,
    designed_tasks,
    render_scene,
    semantic_edges,
)
from mtgraph.errors import ConfigError, DataError

SMALL = SceneConfig(size=32)


def _arrays(scene):
    return {"image": scene.image, **scene.targets()}


def _assert_same(a, b):
    left, right = _arrays(a), _arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def test_same_seed_gives_identical_samples():
    _assert_same(render_scene(SMALL, 5, 3), render_scene(SMALL, 5, 3))


def test_sample_depends_only_on_seed_and_index():
    alone = render_scene(SMALL, 7, 4)
    # Render other samples first, in another order, through a dataset of another length.
    dataset = SceneDataset(9, size=32, seed=7)
    for i in (8, 0, 5):
        dataset[i]
    _assert_same(dataset.scene(4), alone)
    np.testing.assert_array_equal(dataset[4][0].numpy(), alone.image)


def test_different_seed_or_index_differs():
    base = render_scene(SMALL, 0, 0)
    assert not np.array_equal(base.image, render_scene(SMALL, 1, 0).image)
    assert not np.array_equal(base.image, render_scene(SMALL, 0, 1).image)


@pytest.mark.parametrize("size", [32, 77, 256])
def test_shapes_dtypes_and_ranges(size):
    config = SceneConfig(size=size, num_classes=6, unrelated_strength=0.05)
    dataset = SceneDataset.from_config(3, config, seed=2)
    image, targets = dataset[1]
    expected = {
        "seg": ((size, size), torch.int64),
        "depth": ((1, size, size), torch.float32),
        "edges": ((1, size, size), torch.float32),
        "normals": ((3, size, size), torch.float32),
        "image": ((3, size, size), torch.float32),
        "count": ((), torch.int64),
        "dominant": ((), torch.int64),
        "unrelated": ((1, size, size), torch.float32),
    }
    assert (tuple(image.shape), image.dtype) == ((3, size, size), torch.float32)
    assert set(targets) == set(expected) == set(config.target_names)
    for name, (shape, dtype) in expected.items():
        assert (tuple(targets[name].shape), targets[name].dtype) == (shape, dtype), name
    assert 0 <= image.min() and image.max() <= 1
    assert torch.equal(targets["image"], image)
    assert targets["seg"].min() >= 0 and targets["seg"].max() <= config.num_classes
    assert (targets["depth"] > 0).all()
    assert set(targets["edges"].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(targets["normals"].norm(dim=0), torch.ones(size, size), atol=1e-5)
    assert targets["unrelated"].abs().max() < 1


@pytest.mark.parametrize("size", [31, 257, 0])
def test_size_outside_range_is_refused(size):
    with pytest.raises(ConfigError, match="32..256"):
        SceneDataset(2, size=size)


@pytest.mark.parametrize(
    "options",
    [
        {"num_classes": 0},
        {"num_classes": 7},
        {"min_objects": 3, "max_objects": 2},
        {"shading": 1.5},
        {"unrelated_strength": 0.5},
        {"colour": 1.0},  # not a field
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ConfigError):
        SceneDataset(2, **options)


def test_edges_lie_exactly_on_segmentation_boundaries():
    scene = render_scene(SceneConfig(size=32, max_objects=6), 0, 11)
    seg, edges = scene.seg, scene.edges[0]
    h, w = seg.shape
    expected = np.zeros_like(edges)
    for r in range(h):
        for c in range(w):
            neighbours = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
            expected[r, c] = any(0 <= y < h and 0 <= x < w and seg[y, x] != seg[r, c] for y, x in neighbours)
    assert expected.any()
    np.testing.assert_array_equal(edges, expected)


def test_semantic_edges_skip_ignored_pixels():
    seg = np.array([[0, 0, -1], [0, 1, 1]])
    np.testing.assert_array_equal(semantic_edges(seg, ignore_index=-1), [[0, 1, 0], [1, 1, 0]])


@pytest.mark.parametrize("index", range(4))
def test_normals_are_orthogonal_to_the_depth_surface(index):
    config = SceneConfig(size=48, max_objects=5)
    scene = render_scene(config, 3, index)
    # Independent recomputation: back-project the returned depth and take
    # central differences along columns and rows (interior pixels).
    points = backproject(scene.depth[0], config.focal)
    tangents = [
        points[:, 1:-1, 2:] - points[:, 1:-1, :-2],
        points[:, 2:, 1:-1] - points[:, :-2, 1:-1],
    ]
    normals = scene.normals[:, 1:-1, 1:-1].astype(np.float64)
    flip = np.array([1.0, -1.0, -1.0])[:, None, None]  # camera frame -> (x right, y up, z to viewer)
    for tangent in tangents:
        unit = flip * tangent / np.linalg.norm(tangent, axis=0)
        assert np.abs((normals * unit).sum(axis=0)).max() < 1e-4


def test_sky_faces_the_camera_and_the_ground_is_one_plane():
    config = SceneConfig(size=64, min_objects=0, max_objects=0)
    scene = render_scene(config, 0, 2)
    depth, normals = scene.depth[0], scene.normals
    sky = depth == config.max_depth
    interior = np.zeros_like(sky)
    interior[2:-2, 2:-2] = True
    sky_inside = sky & interior & ~np.roll(~sky, 1, 0) & ~np.roll(~sky, -1, 0)
    np.testing.assert_allclose(normals[:, sky_inside].T, [[0, 0, 1]] * int(sky_inside.sum()), atol=1e-6)
    ground = interior & (depth < 0.5 * config.max_depth)
    spread = normals[:, ground].std(axis=1)
    assert spread.max() < 1e-3  # a plane has one normal
    assert normals[1, ground].mean() > 0.8  # and it points up


def test_ground_depth_decreases_down_the_image_and_objects_are_in_front():
    seed, index = 4, 9
    empty = render_scene(SceneConfig(size=64, min_objects=0, max_objects=0), seed, index)
    full = render_scene(SceneConfig(size=64, min_objects=4, max_objects=4), seed, index)
    ground = empty.depth[0]
    # The layout before the objects is shared, so `empty` is the ground behind `full`.
    np.testing.assert_array_equal(full.depth[0][full.seg == 0], ground[full.seg == 0])
    assert (np.diff(ground, axis=0) <= 1e-5).all()  # nearer towards the bottom row
    assert (ground[-1] < ground[0]).all()
    objects = full.seg > 0
    assert objects.any()
    assert (full.depth[0][objects] < ground[objects]).all()


def test_count_and_dominant_match_the_segmentation():
    config = SceneConfig(size=48, num_classes=5, max_objects=6)
    for index in range(10):
        scene = render_scene(config, 1, index)
        per_class = np.bincount(scene.seg.ravel(), minlength=6)[1:]
        assert scene.dominant == (int(np.argmax(per_class)) + 1 if per_class.any() else 0)
        assert (per_class > 0).sum() <= scene.count <= config.max_objects


def test_unrelated_target_is_hidden_in_the_image_and_independent_of_the_scene():
    strength = 0.06
    plain = render_scene(SceneConfig(size=32), 8, 1)
    mixed = render_scene(SceneConfig(size=32, unrelated_strength=strength), 8, 1)
    assert plain.unrelated is None
    for name in ("seg", "depth", "edges", "normals"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(mixed, name), err_msg=name)
    assert plain.count == mixed.count and plain.dominant == mixed.dominant
    # The image carries exactly strength * F * checkerboard on top of the (clipped) scene.
    rows, cols = np.indices((32, 32))
    carrier = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    expected = np.clip(plain.image, strength, 1 - strength) + strength * mixed.unrelated * carrier
    np.testing.assert_allclose(mixed.image, expected, atol=1e-6)
    # The field does not depend on the scene's content or knobs.
    other = render_scene(SceneConfig(size=32, num_classes=2, shading=0.0, unrelated_strength=0.01), 8, 1)
    np.testing.assert_array_equal(other.unrelated, mixed.unrelated)


def test_appearance_knobs_do_not_move_objects():
    base = render_scene(SceneConfig(size=32), 6, 2)
    restyled = render_scene(SceneConfig(size=32, colour_by_class=0.0, texture=0.0, shading=0.0, pixel_noise=0.0), 6, 2)
    np.testing.assert_array_equal(base.seg, restyled.seg)
    assert not np.array_equal(base.image, restyled.image)


def test_cache_round_trip_is_bit_identical(tmp_path):
    config = SceneConfig(size=32, unrelated_strength=0.05)
    cached = SceneDataset.from_config(5, config, seed=3, cache=tmp_path)
    assert cached.cache_path is not None and cached.cache_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [cached.cache_path.name]  # no temp file left
    reloaded = SceneDataset.from_config(5, config, seed=3, cache=tmp_path)
    for index in range(5):
        _assert_same(reloaded.scene(index), render_scene(config, 3, index))
    other = SceneDataset.from_config(5, dataclasses.replace(config, num_classes=2), seed=3, cache=tmp_path)
    assert other.cache_path != cached.cache_path


def test_corrupt_cache_is_a_data_error(tmp_path):
    dataset = SceneDataset(2, size=32, cache=tmp_path)
    dataset.cache_path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="delete it"):
        SceneDataset(2, size=32, cache=tmp_path)


def test_dataloader_batches_the_target_dict():
    loader = DataLoader(SceneDataset(6, size=32), batch_size=4)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 32, 32)
    assert targets["seg"].shape == (4, 32, 32)
    assert targets["count"].shape == (4,)
    with pytest.raises(IndexError):
        SceneDataset(3, size=32)[3]


# --- the designed preset -------------------------------------------------------------------------------------------

DESIGNED = SceneConfig.designed()


def test_designed_preset_is_deterministic_per_seed():
    first, second = SceneDataset(6, seed=4, preset="designed"), SceneDataset(6, seed=4, preset="designed")
    assert first.config == DESIGNED
    for index in range(6):
        (image_a, targets_a), (image_b, targets_b) = first[index], second[index]
        assert torch.equal(image_a, image_b)
        assert targets_a.keys() == targets_b.keys()
        for name in targets_a:
            assert torch.equal(targets_a[name], targets_b[name]), name
    assert not torch.equal(first[0][0], SceneDataset(1, seed=5, preset="designed")[0][0])


def test_designed_clusters_partition_the_designed_tasks():
    assert sorted(t for cluster in DESIGNED_CLUSTERS for t in cluster) == sorted(DESIGNED_TASKS)
    assert DESIGNED_CLUSTERS == (("seg", "edges"), ("depth", "normals"), ("unrelated",))
    tasks = designed_tasks(DESIGNED)
    assert tuple(tasks) == DESIGNED_TASKS
    assert {task.target for task in tasks.values()} <= set(DESIGNED.target_names)
    assert tasks["seg"].make_head(8, (32, 32))(torch.zeros(1, 8, 4, 4)).shape == (1, DESIGNED.seg_classes, 32, 32)


def test_designed_targets_have_their_shapes_and_ranges():
    dataset = SceneDataset(32, seed=0, preset="designed")
    size, hidden_seg = DESIGNED.size, 0
    for index in range(len(dataset)):
        image, targets = dataset[index]
        assert image.shape == (3, size, size) and 0 <= image.min() and image.max() <= 1
        assert set(targets) == set(DESIGNED.target_names)
        seg = targets["seg"]
        assert seg.shape == (size, size) and seg.max() <= DESIGNED.num_classes
        if (seg == IGNORE_INDEX).all():
            hidden_seg += 1  # the preset hides segmentation on most training images
        else:
            assert seg.min() >= 0
        assert (targets["depth"] > 0).all() and targets["depth"].max() <= DESIGNED.max_depth
        assert torch.allclose(targets["normals"].norm(dim=0), torch.ones(size, size), atol=1e-5)
        assert set(targets["edges"].unique().tolist()) <= {0.0, 1.0}
        assert targets["unrelated"].abs().max() < 1
    assert 0 < hidden_seg < len(dataset)


@pytest.mark.parametrize("hide", ["seg_labelled", "depth_labelled", "normals_labelled"])
def test_hidden_labels_change_no_scene_and_derived_targets_stay_complete(hide):
    config = dataclasses.replace(DESIGNED.fully_labelled, **{hide: 0.5})
    hidden_count = 0
    for index in range(12):
        shown, hidden = render_scene(config.fully_labelled, 2, index), render_scene(config, 2, index)
        for name in ("image", "edges", "unrelated"):
            np.testing.assert_array_equal(getattr(shown, name), getattr(hidden, name), err_msg=name)
        # Edges come from the complete segmentation, normals from the complete depth.
        np.testing.assert_array_equal(hidden.edges[0], semantic_edges(shown.seg))
        assert np.array_equal(hidden.seg, shown.seg) or (hidden.seg == IGNORE_INDEX).all()
        assert np.array_equal(hidden.depth, shown.depth) or not hidden.depth.any()
        assert np.array_equal(hidden.normals, shown.normals) or not hidden.normals.any()
        target = {"seg_labelled": "seg", "depth_labelled": "depth", "normals_labelled": "normals"}[hide]
        hidden_count += not np.array_equal(getattr(hidden, target), getattr(shown, target))
        for other in {"seg", "depth", "normals"} - {target}:
            np.testing.assert_array_equal(getattr(shown, other), getattr(hidden, other), err_msg=other)
    assert 0 < hidden_count < 12


@pytest.mark.parametrize("fraction", [0.125, 0.5])
def test_label_fractions_hold_over_many_images(fraction):
    config = SceneConfig(size=32, max_objects=0, min_objects=0, seg_labelled=fraction, depth_labelled=fraction,
                         normals_labelled=fraction)
    n = 400
    scenes = [render_scene(config, 0, i) for i in range(n)]
    kept = {
        "seg": [s.seg.min() >= 0 for s in scenes],
        "depth": [s.depth.any() for s in scenes],
        "normals": [s.normals.any() for s in scenes],
    }
    for name, flags in kept.items():
        # A binomial(400, p) count lies within 4 standard deviations of 400 p with probability > 0.9999; the
        # draws are seeded, so the test is deterministic, and the bound says how far off a broken draw must be.
        assert abs(sum(flags) - n * fraction) <= 4 * math.sqrt(n * fraction * (1 - fraction)), name
    # Each target is hidden on its own draw: the three label sets differ.
    assert kept["seg"] != kept["depth"] != kept["normals"] != kept["seg"]


def test_designed_segmentation_is_learnable_beyond_background():
    # Class balance the preset relies on, measured on 200 fully labelled training scenes: objects cover a
    # fifth of the pixels on average, every image but a few shows one, and every class covers >= 3 % of the pixels.
    scenes = [render_scene(DESIGNED.fully_labelled, 0, i) for i in range(200)]
    counts = np.bincount(np.concatenate([s.seg.ravel() for s in scenes]), minlength=DESIGNED.seg_classes)
    share = counts / counts.sum()
    assert 0.15 <= 1 - share[0] <= 0.35
    assert share[1:].min() >= 0.03
    assert np.mean([(s.seg > 0).any() for s in scenes]) >= 0.95


def test_cache_keeps_labels_hidden_and_edges_complete(tmp_path):
    cached = SceneDataset.from_config(8, DESIGNED, seed=1, cache=tmp_path)
    reloaded = SceneDataset.from_config(8, DESIGNED, seed=1, cache=tmp_path)
    for index in range(8):
        _assert_same(reloaded.scene(index), render_scene(DESIGNED, 1, index))
        _assert_same(cached.scene(index), render_scene(DESIGNED, 1, index))


def test_presets_and_overrides_are_checked():
    assert SceneDataset(2, size=48, preset="designed").config == SceneConfig.designed(size=48)
    assert SceneDataset(2, seed=0).config == SceneConfig()  # no preset: the plain defaults
    with pytest.raises(ConfigError, match="unknown scene preset 'hard'; known: designed"):
        SceneDataset(2, preset="hard")
    with pytest.raises(ConfigError, match="unknown scene option"):
        SceneConfig.designed(colour=1.0)
    with pytest.raises(ConfigError, match="pitch"):
        SceneConfig(pitch=(0.3, 0.2))
    with pytest.raises(ConfigError, match="seg_labelled"):
        SceneConfig(seg_labelled=1.5)
    with pytest.raises(ConfigError, match="unrelated_strength > 0"):
        designed_tasks(SceneConfig())


def test_flat_objects_are_painted_on_the_ground():
    empty = render_scene(SceneConfig(size=48, min_objects=0, max_objects=0), 3, 1)
    painted = render_scene(SceneConfig(size=48, min_objects=4, max_objects=4, flat_objects=True), 3, 1)
    assert (painted.seg > 0).any()
    # Depth and normals are the empty ground's: the objects are paint, not geometry.
    np.testing.assert_array_equal(painted.depth, empty.depth)
    np.testing.assert_array_equal(painted.normals, empty.normals)
    sky = empty.depth[0] == SceneConfig().max_depth
    assert not (painted.seg[sky] > 0).any()  # no paint on the sky


def test_relief_height_zero_makes_objects_face_the_camera():
    config = SceneConfig(size=64, min_objects=1, max_objects=1, relief_height=0.0)  # one object: one plate
    scene = render_scene(config, 0, 5)
    inside = scene.seg > 0
    # Interior pixels: the object and its four neighbours (central differences stay on the plate).
    for axis in (0, 1):
        inside &= np.roll(inside, 1, axis) & np.roll(inside, -1, axis)
    assert inside.sum() > 20
    np.testing.assert_allclose(scene.normals[:, inside].T, [[0.0, 0.0, 1.0]] * int(inside.sum()), atol=1e-6)
    assert not np.allclose(render_scene(dataclasses.replace(config, relief_height=1.0), 0, 5).normals[:, inside], 0.0)


def test_pitch_moves_the_horizon():
    def sky_share(pitch: float) -> float:
        config = SceneConfig(size=32, min_objects=0, max_objects=0, max_roll_deg=0.0, pitch=(pitch, pitch))
        return float((render_scene(config, 0, 0).depth[0] == config.max_depth).mean())

    # Sky is where the ground would lie beyond max_depth (20): rows with cos(p) v + sin(p) <= 1.5 / 20, v being
    # the row's coordinate in -0.5..0.5 (roll 0). At p = 0.1 that is 47.5 % of the rows, within one row.
    expected = 0.5 + (1.5 / 20 - math.sin(0.1)) / math.cos(0.1)
    assert sky_share(0.1) == pytest.approx(expected, abs=1 / 32)
    assert sky_share(0.1) > sky_share(0.3) > sky_share(0.45)


def test_integer_options_render_like_floats():
    # An int max_depth once made the ground's depth an integer staircase (numpy kept the fill value's dtype).
    as_int = SceneConfig(size=32, max_depth=8, object_radius=(1, 2), pitch=(0, 1))
    as_float = SceneConfig(size=32, max_depth=8.0, object_radius=(1.0, 2.0), pitch=(0.0, 1.0))
    assert as_int == as_float and isinstance(as_int.max_depth, float)
    _assert_same(render_scene(as_int, 0, 3), render_scene(as_float, 0, 3))
    with pytest.raises(ConfigError, match="max_depth must be a number"):
        SceneConfig(max_depth="deep")
