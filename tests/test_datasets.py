"""The plug-in's datasets: synthetic (determinism, boxes, clutter) and folder layouts (load + errors)."""

import os
import pickle

import numpy as np
import pytest
import torch
from generated_data import cifar_tree, food_tree, imagenet_tree, save_image, tiny_tree
from PIL import Image
from torchvision import transforms

from cim_plugin.datasets import DATASETS, DatasetLayoutError, build_idata, dataset_names
from cim_plugin.datasets.cifar import CIFAR100Folder
from cim_plugin.datasets.folders import Food101, ImageNet100, TinyImageNet
from cim_plugin.datasets.synthetic import (
    SCALE_GROUPS,
    SyntheticShapes,
    class_specs,
    make_split,
    max_classes,
    render_objects,
)

SMALL = {"synthetic_image_size": 32, "synthetic_num_classes": 6, "synthetic_train_per_class": 3,
         "synthetic_test_per_class": 2, "synthetic_seed": 0}


def _built(**overrides):
    idata = build_idata("synthetic", {**SMALL, **overrides})
    idata.download_data()
    return idata


def _count(trsf, kind):
    return sum(isinstance(t, kind) for t in trsf)


def _check_transforms(idata, image):
    """PyCIL composes [*train_trsf, *common_trsf] on a PIL image: ToTensor once, Normalize in common."""
    for first in (idata.train_trsf, idata.test_trsf):
        pipeline = [*first, *idata.common_trsf]
        assert _count(pipeline, transforms.ToTensor) == 1
        assert _count(idata.common_trsf, transforms.Normalize) == 1
        out = transforms.Compose(pipeline)(image)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape[0] == 3
    return out


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_from_its_own_seed():
    a, b = _built(), _built(seed=123)  # the run's "seed" must not matter
    for key in ("train_data", "train_targets", "train_boxes", "test_data", "test_targets", "test_boxes"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    c = _built(synthetic_seed=1)
    assert not np.array_equal(a.train_data, c.train_data)
    assert not np.array_equal(a.train_boxes, c.train_boxes)
    assert not np.array_equal(a.train_data, a.test_data[: len(a.train_data)])  # splits are different draws


def test_synthetic_shapes_dtypes_and_attributes():
    d = _built()
    assert d.name == "synthetic" and d.use_path is False and d.image_size == (32, 32)
    assert d.train_data.shape == (18, 32, 32, 3) and d.train_data.dtype == np.uint8
    assert d.test_data.shape == (12, 32, 32, 3) and d.test_data.dtype == np.uint8
    assert d.train_targets.dtype == np.int64 and d.train_boxes.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(d.train_targets), [3] * 6)
    np.testing.assert_array_equal(np.bincount(d.test_targets), [2] * 6)
    assert d.class_order == list(range(6))
    assert set(SMALL) == set(d.option_keys)
    out = _check_transforms(d, Image.fromarray(d.train_data[0]))
    assert out.shape == (3, 32, 32)
    crop = d.train_trsf[0]
    assert isinstance(crop, transforms.RandomCrop) and crop.padding == 4  # size // 8


def test_synthetic_boxes_are_tight_and_inside():
    S = 40
    split = make_split(num_classes=8, per_class=6, image_size=S, seed=3, split=0, return_masks=True)
    boxes, masks = split["boxes"], split["masks"]
    x0, y0, x1, y1 = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= S).all() and (y1 <= S).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    n = np.arange(len(boxes))
    rows, cols = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
    inside = (cols >= x0[:, None, None]) & (cols < x1[:, None, None]) & (rows >= y0[:, None, None]) & (
        rows < y1[:, None, None])
    assert not (masks & ~inside).any()  # every object pixel is in its box
    # tight: the object touches all four sides of its box
    assert masks[n, :, x0].any(1).all() and masks[n, :, x1 - 1].any(1).all()
    assert masks[n, y0, :].any(1).all() and masks[n, y1 - 1, :].any(1).all()


def test_synthetic_pixels_outside_the_object_are_the_background():
    specs = class_specs(4, seed=0)
    targets = np.arange(4).repeat(3)
    out = render_objects(targets, specs, 32, np.random.default_rng(5), return_backgrounds=True)
    off = ~out["masks"]
    np.testing.assert_array_equal(out["images"][off], out["backgrounds"][off])
    assert (out["images"][out["masks"]] != out["backgrounds"][out["masks"]]).any()
    again = render_objects(targets, specs, 32, np.random.default_rng(5))
    np.testing.assert_array_equal(again["images"], out["images"])


def test_synthetic_default_size_mostly_background_with_small_and_large_classes():
    d = build_idata("synthetic", {})  # the defaults
    assert (d.size, d.n_classes, d.train_per_class, d.test_per_class, d.seed) == (64, 20, 100, 20, 0)
    d = build_idata("synthetic", {"synthetic_train_per_class": 40, "synthetic_test_per_class": 1})
    d.download_data()
    assert d.train_data.shape == (800, 64, 64, 3) and d.test_data.shape == (20, 64, 64, 3)
    b = d.train_boxes
    frac = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / 64.0 ** 2
    assert frac.mean() < 0.2
    group = d.specs()["scale_group"][d.train_targets]
    small, large = list(SCALE_GROUPS).index("small"), list(SCALE_GROUPS).index("large")
    assert frac[group == small].mean() * 2 < frac[group == large].mean()
    assert frac.min() > 0 and frac.max() < 0.6
    # clutter: no image is a flat colour field outside its object
    assert d.train_data.reshape(800, -1).std(axis=1).min() > 5


def test_class_specs_are_distinct_and_spread_over_shapes():
    for c in (6, 20, 48, 96, max_classes()):
        sp = class_specs(c, seed=0)
        triples = set(zip(sp["shape"].tolist(), sp["colour"].tolist(), sp["texture"].tolist()))
        assert len(triples) == c
        counts = np.bincount(sp["shape"], minlength=8)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="num_classes"):
        class_specs(max_classes() + 1, 0)


@pytest.mark.parametrize("key,value,err", [
    ("synthetic_num_classes", 0, ValueError), ("synthetic_num_classes", 10_000, ValueError),
    ("synthetic_image_size", 8, ValueError), ("synthetic_image_size", "64", TypeError),
    ("synthetic_train_per_class", True, TypeError), ("synthetic_seed", 1.5, TypeError),
])
def test_synthetic_bad_options(key, value, err):
    with pytest.raises(err, match=key):
        build_idata("synthetic", {key: value})


# ---------------------------------------------------------------- registry

def test_registry_and_fallbacks(tmp_path):
    assert set(dataset_names()) == {"synthetic", "imagenet100", "imagenet1000", "food101", "tinyimagenet",
                                    "cifar100", "imagefolder", "imagenette", "imagewoof", "miniimagenet"}
    assert build_idata("cifar10", {}) is None and build_idata("no-such", {"data_root": "/x"}) is None
    assert build_idata("cifar100", {}) is None  # PyCIL's own CIFAR-100
    assert isinstance(build_idata("cifar100", {"data_root": str(tmp_path)}), CIFAR100Folder)
    assert isinstance(build_idata("Synthetic", SMALL), SyntheticShapes)
    for name, cls in DATASETS.items():
        assert cls.name == name and isinstance(cls.option_keys, tuple) and cls.option_keys
    for name in ("imagenet100", "imagenet1000", "food101", "tinyimagenet", "imagefolder", "miniimagenet"):
        with pytest.raises(DatasetLayoutError, match='add "data_root"'):
            build_idata(name, {})
    with pytest.raises(TypeError):
        build_idata("synthetic", [("synthetic_seed", 1)])


# ---------------------------------------------------------------- folder datasets

def test_imagenet_folder_loads(tmp_path):
    imagenet_tree(tmp_path)
    d = build_idata("imagenet100", {"data_root": str(tmp_path)})
    d.download_data()
    assert d.use_path is True and d.train_boxes is None and d.test_boxes is None and d.image_size is None
    assert d.train_data.shape == (6,) and d.test_data.shape == (6,)
    assert all(os.path.isfile(p) for p in d.train_data) and all(os.path.isfile(p) for p in d.test_data)
    np.testing.assert_array_equal(d.train_targets, [0, 0, 1, 1, 2, 2])
    assert d.train_targets.dtype == np.int64 and d.class_order == [0, 1, 2]
    assert [os.path.basename(os.path.dirname(p)) for p in d.test_data] == ["n01"] * 2 + ["n02"] * 2 + ["n03"] * 2
    out = _check_transforms(d, Image.open(d.train_data[0]).convert("RGB"))
    assert out.shape == (3, 224, 224)


def test_imagenet_folder_layout_errors(tmp_path):
    d = ImageNet100(str(tmp_path / "missing"))
    with pytest.raises(DatasetLayoutError, match="missing"):
        d.download_data()
    os.makedirs(tmp_path / "val")
    with pytest.raises(DatasetLayoutError, match=r"train/<class>/\*\.JPEG \(ImageFolder layout\).*train does not exist"):
        ImageNet100(str(tmp_path)).download_data()
    imagenet_tree(tmp_path, classes=("a", "b"))
    save_image(str(tmp_path / "val" / "flat.JPEG"))
    os.rename(tmp_path / "val", tmp_path / "val_old")
    os.makedirs(tmp_path / "val")
    save_image(str(tmp_path / "val" / "ILSVRC_val_1.JPEG"))
    with pytest.raises(DatasetLayoutError, match="no class sub-folders.*holds 1 images directly"):
        ImageNet100(str(tmp_path)).download_data()
    save_image(str(tmp_path / "val" / "zzz" / "x.JPEG"))
    with pytest.raises(DatasetLayoutError, match=r"class folders that train/ does not have: \['zzz'\]"):
        ImageNet100(str(tmp_path)).download_data()
    os.makedirs(tmp_path / "train" / "empty")
    with pytest.raises(DatasetLayoutError, match="empty holds no image"):
        ImageNet100(str(tmp_path)).download_data()


def test_food101_loads_with_and_without_classes_txt(tmp_path):
    food_tree(tmp_path / "a")
    d = build_idata("food101", {"data_root": str(tmp_path / "a")})
    d.download_data()
    assert d.use_path and d.train_boxes is None and d.class_names == ["pizza", "apple_pie", "sushi"]
    np.testing.assert_array_equal(d.train_targets, [0, 1, 2])
    assert d.test_data[1].endswith(os.path.join("images", "apple_pie", "1a.jpg"))
    assert all(os.path.isfile(p) for p in [*d.train_data, *d.test_data])
    _check_transforms(d, Image.open(d.test_data[0]).convert("RGB"))
    food_tree(tmp_path / "b", with_classes_txt=False)
    d = Food101(str(tmp_path / "b"))
    d.download_data()
    assert d.class_names == ["apple_pie", "pizza", "sushi"]
    np.testing.assert_array_equal(d.train_targets, [1, 0, 2])


def test_food101_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"images/<class>/<id>\.jpg.*images does not exist"):
        os.makedirs(tmp_path / "meta")
        Food101(str(tmp_path)).download_data()
    os.rmdir(tmp_path / "meta")
    food_tree(tmp_path)
    os.remove(tmp_path / "meta" / "test.txt")
    with pytest.raises(DatasetLayoutError, match=r"meta/test\.txt.*does not exist"):
        Food101(str(tmp_path)).download_data()
    with open(tmp_path / "meta" / "test.txt", "w") as fh:
        fh.write("sushi/404\n")
    with pytest.raises(DatasetLayoutError, match=r"lists 1 images that do not exist.*404\.jpg"):
        Food101(str(tmp_path)).download_data()
    with open(tmp_path / "meta" / "test.txt", "w") as fh:
        fh.write("burger/1b\n")
    with pytest.raises(DatasetLayoutError, match="line 1 is 'burger/1b'"):
        Food101(str(tmp_path)).download_data()


def test_tinyimagenet_loads_with_exclusive_boxes(tmp_path):
    tiny_tree(tmp_path)
    d = build_idata("tinyimagenet", {"data_root": str(tmp_path)})
    d.download_data()
    assert d.use_path and d.image_size == (16, 16) and d.class_names == ["n001", "n002"]
    assert all(os.path.isfile(p) for p in [*d.train_data, *d.test_data])
    np.testing.assert_array_equal(d.train_targets, [0, 0, 1, 1])  # sorted wnids, not wnids.txt order
    assert [os.path.basename(p)[:4] for p in d.train_data] == ["n001", "n001", "n002", "n002"]
    np.testing.assert_array_equal(d.test_targets, [1, 0])
    assert d.train_boxes.dtype == np.int64 and d.train_boxes.shape == (4, 4)
    np.testing.assert_array_equal(d.train_boxes[:2], [[0, 1, 6, 16], [1, 1, 7, 16]])
    np.testing.assert_array_equal(d.test_boxes, [[2, 3, 16, 10], [2, 3, 16, 10]])
    out = _check_transforms(d, Image.open(d.train_data[0]).convert("RGB"))
    assert out.shape == (3, 16, 16) and d.train_trsf[0].padding == 2


def test_tinyimagenet_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"wnids\.txt.*does not exist"):
        os.makedirs(tmp_path / "train")
        TinyImageNet(str(tmp_path)).download_data()
    os.rmdir(tmp_path / "train")
    tiny_tree(tmp_path)
    os.remove(tmp_path / "train" / "n001" / "n001_boxes.txt")
    with pytest.raises(DatasetLayoutError, match=r"n001_boxes\.txt.*does not exist"):
        TinyImageNet(str(tmp_path)).download_data()
    with open(tmp_path / "train" / "n001" / "n001_boxes.txt", "w") as fh:
        fh.write("n001_0.JPEG\t0\t0\t3\t3\n")
    with pytest.raises(DatasetLayoutError, match=r"has no box for .*n001_1\.JPEG"):
        TinyImageNet(str(tmp_path)).download_data()
    with open(tmp_path / "train" / "n001" / "n001_boxes.txt", "w") as fh:
        fh.write("n001_0.JPEG\t0\t0\t3\t3\nn001_1.JPEG\t0\t0\t3\t3\n")
    os.remove(tmp_path / "val" / "images" / "val_0.JPEG")
    with pytest.raises(DatasetLayoutError, match=r"lists val_0\.JPEG but .*val_0\.JPEG does not exist"):
        TinyImageNet(str(tmp_path)).download_data()


def test_cifar100_from_extracted_folder(tmp_path):
    folder = cifar_tree(tmp_path)
    d = build_idata("cifar100", {"data_root": str(tmp_path)})
    d.download_data()
    assert d.use_path is False and d.image_size == (32, 32) and d.train_boxes is None
    assert d.train_data.shape == (5, 32, 32, 3) and d.train_data.dtype == np.uint8
    np.testing.assert_array_equal(d.train_targets, [0, 1, 2, 0, 1])
    assert d.test_data.shape == (3, 32, 32, 3) and d.class_order == [0, 1, 2]
    with open(os.path.join(folder, "train"), "rb") as fh:
        raw = pickle.load(fh)["data"]
    # CIFAR rows are [R plane | G plane | B plane], each 32x32 row-major
    np.testing.assert_array_equal(d.train_data[2, :, :, 1], raw[2, 1024:2048].reshape(32, 32))
    out = _check_transforms(d, Image.fromarray(d.train_data[0]))
    assert out.shape == (3, 32, 32)


def test_cifar100_missing_folder_says_where(tmp_path):
    d = CIFAR100Folder(str(tmp_path), download=False)
    with pytest.raises(DatasetLayoutError, match=r"cifar-100-python .*does not exist.*downloading is off"):
        d.download_data()
    folder = cifar_tree(tmp_path)
    with open(os.path.join(folder, "test"), "wb") as fh:
        fh.write(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="not a readable CIFAR-100"):
        d.download_data()
