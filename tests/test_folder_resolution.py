"""Folder datasets at a chosen "resolution": decoded once to S x S uint8 arrays, cached, subsampled per class,
transforms scaled to S, the stem chosen from S, and every bad value a clear error before training."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, requires_pycil, run_cli, tiny_learner_config, write_config
from generated_data import food_tree, imagenet_tree, save_image, tiny_tree
from PIL import Image
from torchvision import transforms

from cim_plugin.datasets import DatasetLayoutError, build_idata
from cim_plugin.datasets import resolution as resolution_module
from cim_plugin.datasets.resolution import decode_at, keep_first_per_class, resolution_options


def _tree(root, per_class=3, size=(40, 30), classes=("a", "b", "c")):
    imagenet_tree(root, classes=classes, per_class=per_class, size=size, textured=False)
    return str(root)


def _loaded(name, root, **keys):
    idata = build_idata(name, {"data_root": root, "resolution_cache": False, **keys})
    idata.download_data()
    return idata


@pytest.mark.parametrize("name", ["imagefolder", "imagenette", "imagewoof", "miniimagenet", "imagenet100"])
def test_resolution_decodes_once_to_square_uint8_arrays(tmp_path, name):
    idata = _loaded(name, _tree(tmp_path), resolution=16)
    assert idata.use_path is False and idata.image_size == (16, 16) and idata.resolution == 16
    assert idata.train_data.shape == (9, 16, 16, 3) and idata.train_data.dtype == np.uint8
    assert idata.test_data.shape == (9, 16, 16, 3)
    assert idata.train_targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # transforms scaled to S: padded crop + flip for training, the stored image itself for test
    crop = [t for t in idata.train_trsf if isinstance(t, transforms.RandomCrop)]
    assert len(crop) == 1 and crop[0].size == (16, 16) and crop[0].padding == 2
    assert idata.test_trsf == []
    image = Image.fromarray(idata.train_data[0])
    for first in (idata.train_trsf, idata.test_trsf):
        out = transforms.Compose([*first, *idata.common_trsf])(image)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_without_resolution_the_files_keep_pycil_224_transforms(tmp_path):
    idata = _loaded("imagefolder", _tree(tmp_path))
    assert idata.use_path is True and idata.image_size is None
    assert any(isinstance(t, transforms.RandomResizedCrop) and t.size == (224, 224) for t in idata.train_trsf)


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    """A 40x20 image (left half red, right half blue, a green band in the middle) at S=10: resized to 20x10,
    the centre 10x10 kept: its left columns red-ish, right columns blue-ish, the band in the middle."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    img[:, 18:22] = (0, 255, 0)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    out = decode_at([str(path)], 10)[0]
    assert out.shape == (10, 10, 3)
    assert out[:, 0, 0].min() > 200 and out[:, -1, 2].min() > 200  # red left edge, blue right edge
    assert out[:, 4:6, 1].min() > 100  # the green band sits at the centre


def test_upsampling_refused_when_asked(tmp_path):
    root = _tree(tmp_path, size=(12, 10))
    assert _loaded("imagefolder", root, resolution=16).train_data.shape[1:] == (16, 16, 3)  # allowed by default
    with pytest.raises(DatasetLayoutError, match=r'12x10 px, smaller than "resolution" 16.*at most 10'):
        _loaded("imagefolder", root, resolution=16, resolution_upsample=False)


def test_per_class_limits_keep_the_first_images_in_sorted_order(tmp_path):
    idata = _loaded("imagefolder", _tree(tmp_path, per_class=4), resolution=8, train_per_class=2, test_per_class=1)
    assert idata.train_targets.tolist() == [0, 0, 1, 1, 2, 2] and idata.test_targets.tolist() == [0, 1, 2]
    targets = np.array([2, 0, 2, 1, 0, 2, 0])
    assert keep_first_per_class(np.arange(7), targets, 2).tolist() == [0, 1, 2, 3, 4]
    assert keep_first_per_class(np.arange(7), targets, None).tolist() == list(range(7))


def test_decoded_arrays_are_cached_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first = build_idata("imagefolder", {"data_root": root, "resolution": 8, "resolution_cache": str(cache)})
    first.download_data()
    assert len(list(cache.glob("*_8px.npy"))) == 2  # train and test

    def no_decode(*args):
        raise AssertionError("decoded again although the cache holds the arrays")

    monkeypatch.setattr(resolution_module, "_load_one", no_decode)
    again = build_idata("imagefolder", {"data_root": root, "resolution": 8, "resolution_cache": str(cache)})
    again.download_data()
    np.testing.assert_array_equal(first.train_data, again.train_data)
    np.testing.assert_array_equal(first.test_data, again.test_data)
    monkeypatch.undo()

    changed = os.path.join(root, "train", "a", "a_0.JPEG")
    save_image(changed, size=(40, 30), colour=(0, 255, 0))
    os.utime(changed, ns=(1, 1))
    fresh = build_idata("imagefolder", {"data_root": root, "resolution": 8, "resolution_cache": str(cache)})
    fresh.download_data()
    assert fresh.train_data[0, 4, 4].tolist() != first.train_data[0, 4, 4].tolist()
    assert fresh.train_data[0, 4, 4, 1] > 200


def test_test_folder_when_there_is_no_val_folder(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for c in ("x", "y"):
            for j in range(n):
                save_image(os.path.join(tmp_path, split, c, f"{j}.png"), size=(10, 10))
    idata = _loaded("imagefolder", str(tmp_path), resolution=8)
    assert idata.test_targets.tolist() == [0, 1] and idata.class_names == ["x", "y"]


def test_food101_at_a_resolution(tmp_path):
    food_tree(tmp_path, classes=("pizza", "sushi"), train_per_class=2, test_per_class=1, size=(30, 20))
    idata = _loaded("food101", str(tmp_path), resolution=12)
    assert idata.train_data.shape == (4, 12, 12, 3) and idata.test_data.shape == (2, 12, 12, 3)


@pytest.mark.parametrize("value", [0, -3, 2.5, "64", True, [64], 5000])
def test_bad_resolution_is_a_clear_error(tmp_path, value):
    with pytest.raises(ValueError, match=r'"resolution" must be'):
        build_idata("imagefolder", {"data_root": str(tmp_path), "resolution": value})


@pytest.mark.parametrize("keys,pattern", [
    ({"train_per_class": 10}, r'need "resolution"'),
    ({"resolution": 32, "train_per_class": 0}, r'"train_per_class" must be a positive integer'),
    ({"resolution": 32, "resolution_upsample": "no"}, r'"resolution_upsample" must be true or false'),
    ({"resolution": 32, "resolution_cache": 3}, r'"resolution_cache" must be a folder path or false'),
])
def test_bad_resolution_keys_are_clear_errors(tmp_path, keys, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolution_options({"data_root": str(tmp_path), **keys})
        build_idata("imagefolder", {"data_root": str(tmp_path), **keys})


def test_datasets_read_at_their_own_size_refuse_a_resolution(tmp_path):
    tiny_tree(tmp_path, wnids=["n001", "n002"], train_per_class=1, val_per_class=1, size=16)
    with pytest.raises(ValueError, match='"tinyimagenet" has no "resolution" option'):
        build_idata("tinyimagenet", {"data_root": str(tmp_path), "resolution": 32})


@requires_pycil
@pytest.mark.parametrize("dataset,resolution,kernel", [
    ("imagenet100", 32, 3),  # an ImageNet-named dataset at 32 px: the CIFAR stem (3x3 conv, no stride)
    ("imagefolder", 64, 3),
    ("imagefolder", 112, 7),  # above 64 px: the ImageNet stem
    ("imagenet100", 112, 7),
])
def test_stem_follows_the_resolution(dataset, resolution, kernel):
    from cim_plugin.pycil import patched  # PyCIL on the path only when it is present

    config = {"model_name": "icarl", "dataset": dataset, "convnet_type": "resnet18", "init_cls": 2, "increment": 2,
              "resolution": resolution, "_image_size": (resolution, resolution)}
    with patched(config):
        from utils.inc_net import get_convnet

        net = get_convnet(config).eval()
    assert net.conv1[0].kernel_size == (kernel, kernel)


@requires_pycil
@pytest.mark.parametrize("value", [0, 1.5])
def test_bad_resolution_stops_the_run_before_training(tmp_path, value):
    config = tiny_learner_config("icarl", dataset="imagefolder", data_root=_tree(tmp_path / "data"),
                                 resolution=value)
    result = run_cli([write_config(tmp_path / "c.json", config), "--out", tmp_path / "out"], timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'error: config key "resolution" must be a positive integer' in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "results.json").exists()


def test_prepare_photos20_links_both_sources_into_one_tree(tmp_path):
    _tree(tmp_path / "nette", classes=("n1", "n2"), per_class=1)
    _tree(tmp_path / "woof", classes=("n3",), per_class=1)
    dest = tmp_path / "photos"
    cmd = [sys.executable, str(REPO / "exps" / "data" / "prepare_photos20.py"), str(tmp_path / "nette"),
           str(tmp_path / "woof"), "--dest", str(dest)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert sorted(os.listdir(dest / "train")) == ["n1", "n2", "n3"] == sorted(os.listdir(dest / "val"))
    assert _loaded("imagefolder", str(dest), resolution=8).train_targets.tolist() == [0, 1, 2]
    clash = subprocess.run(cmd[:3] + [str(tmp_path / "nette"), "--dest", str(dest)], capture_output=True, text=True)
    assert clash.returncode == 2 and "is in both" in clash.stderr
