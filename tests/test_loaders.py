"""NYUv2 / Cityscapes loaders on tiny fixtures in the preprocessed .npy layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtgraph.data import Cityscapes, NYUv2
from mtgraph.errors import ConfigError, DataError

H, W = 6, 8


def _write_split(root: Path, split: str, n: int, label_dirs=("label",), normals=True) -> None:
    """Write ``n`` samples whose content encodes their index (image value i / 100)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        for folder in ("image", *label_dirs, "depth", *(("normal",) if normals else ())):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        np.save(root / split / "image" / f"{i}.npy", np.full((H, W, 3), i / 100, dtype=np.float32))
        label = rng.integers(0, 7, (H, W)).astype(np.float32)  # stored as float, like the releases
        label[0, 0] = -1
        for folder in label_dirs:
            np.save(root / split / folder / f"{i}.npy", label)
        depth = rng.uniform(0.5, 5, (H, W, 1)).astype(np.float32)
        depth[1, 1] = 0
        np.save(root / split / "depth" / f"{i}.npy", depth)
        if normals:
            normal = rng.normal(size=(H, W, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            np.save(root / split / "normal" / f"{i}.npy", normal.astype(np.float32))


@pytest.fixture
def nyu_root(tmp_path: Path) -> Path:
    _write_split(tmp_path, "train", 12)
    _write_split(tmp_path, "val", 2)
    return tmp_path


def test_nyuv2_returns_the_documented_contract(nyu_root):
    dataset = NYUv2(nyu_root, "train")
    assert len(dataset) == 12 and len(NYUv2(nyu_root, "val")) == 2
    image, targets = dataset[3]
    assert (image.shape, image.dtype) == ((3, H, W), torch.float32)
    assert set(targets) == {"seg", "depth", "normals"}
    assert (targets["seg"].shape, targets["seg"].dtype) == ((H, W), torch.int64)
    assert targets["depth"].shape == (1, H, W) and targets["normals"].shape == (3, H, W)
    assert targets["seg"][0, 0] == -1 and targets["depth"][0, 1, 1] == 0
    raw = np.load(nyu_root / "train" / "normal" / "3.npy")
    np.testing.assert_allclose(targets["normals"].numpy(), np.moveaxis(raw, -1, 0))


def test_samples_are_ordered_numerically(nyu_root):
    dataset = NYUv2(nyu_root, "train")
    # Lexicographic order would put "10" before "2".
    assert [round(dataset[i][0][0, 0, 0].item() * 100) for i in range(12)] == list(range(12))


def test_derived_edges_and_autoencoder_targets(nyu_root):
    image, targets = NYUv2(nyu_root, "val", tasks=("seg", "edges", "image"))[0]
    seg = targets["seg"]
    edges = targets["edges"][0]
    assert torch.equal(targets["image"], image)
    assert edges[0, 0] == 0  # ignored pixels are never edges
    right_differs = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] >= 0) & (seg[:, :-1] >= 0)
    assert bool(edges[:, 1:][right_differs].all()) and bool(edges[:, :-1][right_differs].all())


def test_uint8_images_are_scaled(tmp_path):
    _write_split(tmp_path, "train", 1)
    np.save(tmp_path / "train" / "image" / "0.npy", np.full((H, W, 3), 255, dtype=np.uint8))
    image, _ = NYUv2(tmp_path, "train")[0]
    assert torch.allclose(image, torch.ones(3, H, W))


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(DataError) as info:
        NYUv2(tmp_path / "nowhere", "train")
    message = str(info.value)
    assert "nowhere" in message and "<root>/<split>/image/<i>.npy" in message
    assert "<root>/<split>/normal/<i>.npy" in message


def test_missing_split_and_folder_name_the_path(nyu_root):
    with pytest.raises(DataError, match="split 'test' not found"):
        NYUv2(nyu_root, "test")
    for npy in (nyu_root / "val" / "depth").iterdir():
        npy.unlink()
    (nyu_root / "val" / "depth").rmdir()
    with pytest.raises(DataError, match=r"missing depth folder: .*val.depth"):
        NYUv2(nyu_root, "val")
    # A task that does not need the folder still loads.
    assert len(NYUv2(nyu_root, "val", tasks=("seg", "normals"))) == 2


def test_missing_sample_file_is_named(nyu_root):
    (nyu_root / "train" / "label" / "7.npy").unlink()
    with pytest.raises(DataError, match=r"no label file, first: .*label.7\.npy"):
        NYUv2(nyu_root, "train")


def test_empty_split_is_an_error(tmp_path):
    for folder in ("image", "label", "depth", "normal"):
        (tmp_path / "val" / folder).mkdir(parents=True)
    with pytest.raises(DataError, match="empty split"):
        NYUv2(tmp_path, "val")


@pytest.mark.parametrize(
    ("folder", "array", "match"),
    [
        ("image", np.zeros((H, W), np.float32), r"image has shape \(6, 8\)"),
        ("label", np.full((H, W), 13.0, np.float32), "label values must be integers in -1..12"),
        ("label", np.full((H, W), 0.5, np.float32), "label values must be integers"),
        ("label", np.zeros((H + 1, W), np.float32), "label has shape"),
        ("depth", -np.ones((H, W, 1), np.float32), "depth must be finite and >= 0"),
        ("normal", np.full((H, W, 3), 2.0, np.float32), r"in \[-1, 1\]"),
    ],
)
def test_malformed_sample_names_its_file(nyu_root, folder, array, match):
    path = nyu_root / "val" / folder / "1.npy"
    np.save(path, array)
    dataset = NYUv2(nyu_root, "val")
    dataset[0]  # other samples are fine
    with pytest.raises(DataError, match=match) as info:
        dataset[1]
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_data_error(nyu_root):
    (nyu_root / "val" / "depth" / "0.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read depth file"):
        NYUv2(nyu_root, "val")[0]


def test_unknown_task_is_a_config_error(nyu_root):
    with pytest.raises(ConfigError, match="available: seg"):
        NYUv2(nyu_root, "val", tasks=("seg", "keypoints"))


def test_cityscapes_reads_the_label_folder_of_its_class_count(tmp_path):
    _write_split(tmp_path, "train", 3, label_dirs=("label_7", "label_19"), normals=False)
    image, targets = Cityscapes(tmp_path, "train", num_classes=19)[2]
    assert set(targets) == {"seg", "depth"} and image.shape == (3, H, W)
    expected = np.load(tmp_path / "train" / "label_19" / "2.npy").astype(np.int64)
    np.testing.assert_array_equal(targets["seg"].numpy(), expected)
    assert len(Cityscapes(tmp_path, "train", num_classes=7)) == 3
    with pytest.raises(ConfigError, match="7 or 19"):
        Cityscapes(tmp_path, "train", num_classes=5)
    with pytest.raises(DataError, match="missing normal folder"):
        Cityscapes(tmp_path, "train", tasks=("seg", "normals"))


def test_cityscapes_missing_label_folder_names_it(tmp_path):
    _write_split(tmp_path, "val", 2, label_dirs=("label_7",), normals=False)
    with pytest.raises(DataError, match=r"missing label folder: .*label_19.*label_19/<i>\.npy"):
        Cityscapes(tmp_path, "val", num_classes=19)
