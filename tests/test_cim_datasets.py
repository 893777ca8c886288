"""`"cim": true` end to end on every dataset kind the plug-in reads, for iCaRL, DER and FOSTER.

Each run: 4 classes as 2 + 2, 1 epoch per loop, generated data, CPU, through exps/run.py. The folder
datasets are path datasets: the memory stores each image after the test transform's geometric part
(none for Tiny-ImageNet, Resize(256) + CenterCrop(224) for ImageNet and Food-101), which
`adapter.ImagePipeline.load` must handle for both kinds. ImageNet and Food-101 train at 224 px, so
they use resnet18 (ImageNet stem, as PyCIL's ImageNet configs), 2 training and 1 test image per class.
"""

import json

import pytest
from conftest import requires_pycil, run_cli, tiny_learner_config, write_config
from generated_data import cifar_tree, food_tree, imagenet_tree, tiny_tree

pytestmark = requires_pycil

CLASSES = 4
SIDE = 32  # pixels of the generated folder images (Tiny-ImageNet and CIFAR keep it; ImageNet/Food resize to 224)
#: ImageNet and Food-101 train at 224 px: PyCIL's ImageNet convnet, and meta batches of 2 (+ 2) images.
LARGE_IMAGES = {"convnet_type": "resnet18", "meta_batch_size": 2}


def _synthetic(root):
    """The built-in dataset: no folder."""
    return {"dataset": "synthetic", "synthetic_num_classes": CLASSES, "synthetic_train_per_class": 6,
            "synthetic_test_per_class": 2, "synthetic_image_size": SIDE}


def _tinyimagenet(root):
    tiny_tree(root, wnids=[f"n{i:03d}" for i in range(CLASSES)], train_per_class=6, val_per_class=2,
              size=SIDE, textured=True)
    return {"dataset": "tinyimagenet", "data_root": str(root)}


def _imagenet100(root):
    imagenet_tree(root, classes=[f"n{i:02d}" for i in range(CLASSES)], per_class=2, val_per_class=1,
                  size=(SIDE, SIDE), textured=True)
    return {"dataset": "imagenet100", "data_root": str(root), **LARGE_IMAGES}


def _food101(root):
    food_tree(root, classes=["pizza", "apple_pie", "sushi", "ramen"], train_per_class=2, test_per_class=1,
              size=(SIDE, SIDE), textured=True)
    return {"dataset": "food101", "data_root": str(root), **LARGE_IMAGES}


def _imagefolder(root):
    """A plain train/val tree read at a chosen resolution: decoded once to 24 x 24 arrays (CIFAR stem)."""
    imagenet_tree(root, classes=[f"c{i}" for i in range(CLASSES)], per_class=6, val_per_class=2,
                  size=(SIDE, SIDE), textured=True)
    return {"dataset": "imagefolder", "data_root": str(root), "resolution": 24, "resolution_cache": False,
            "train_per_class": 5}


def _cifar100(root):
    cifar_tree(root, n_train=6 * CLASSES, n_test=2 * CLASSES, n_classes=CLASSES, textured=True)
    return {"dataset": "cifar100", "data_root": str(root)}


DATASET_KINDS = {"synthetic": _synthetic, "tinyimagenet": _tinyimagenet, "imagenet100": _imagenet100,
                 "food101": _food101, "cifar100": _cifar100, "imagefolder": _imagefolder}

#: CIM settings that keep a run tiny: one meta iteration per epoch (0.5 x 2 new classes) on 4 + 4 images.
CIM_KEYS = {"cim": True, "cim_mask": "cim", "meta_batch_size": 4, "cam_update_interval": 1}


def _config(learner, dataset_keys):
    """tiny_learner_config for ``learner`` on 4 classes (2 + 2), 1 epoch per loop, 2 images of budget per class."""
    config = tiny_learner_config(learner, init_cls=2, increment=2, memory_size=2 * CLASSES, batch_size=8,
                                 **CIM_KEYS)
    for key in [k for k in config if k.startswith("synthetic_")]:
        config.pop(key)
    config.update(dataset_keys)
    return config


@pytest.mark.parametrize("learner", ["icarl", "der", "foster"])
@pytest.mark.parametrize("kind", sorted(DATASET_KINDS))
def test_cim_runs_end_to_end_on_every_dataset_kind(tmp_path, kind, learner):
    config = _config(learner, DATASET_KINDS[kind](tmp_path / "data"))
    out = tmp_path / "out"
    result = run_cli([write_config(tmp_path / "c.json", config), "--out", out], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] is True and results["cim"] is True and results["dataset"] == kind
    assert [p["classes"] for p in results["phases"]] == [2, 4]
    for phase in results["phases"]:
        assert phase["exemplars"] > 0
        assert 0 < phase["memory_bytes"] <= phase["memory_budget_bytes"]
    assert (out / "memory.pt").is_file()


@pytest.mark.parametrize("dataset,size,convnet,kernel", [
    ("food101", None, "resnet18", 7),  # images of varying size, trained at 224 px: ImageNet stem
    ("synthetic", (48, 48), "resnet18", 3),  # small images: CIFAR stem
    ("food101", None, "resnet32", None),  # CIFAR resnet: global average pool instead of AvgPool2d(8)
])
def test_pycil_convnets_build_for_plugin_datasets(dataset, size, convnet, kernel):
    """PyCIL's resnet18 builds no first layer for a dataset named neither "cifar*" nor "imagenet*", and its
    resnet32 pools 8x8 (32 px inputs only): the run's patches make both work on the plug-in's datasets."""
    import torch

    from cim_plugin.pycil import patched

    config = {"model_name": "icarl", "dataset": dataset, "convnet_type": convnet, "init_cls": 2, "increment": 2,
              "_image_size": size}
    with patched(config):
        from utils.inc_net import get_convnet

        net = get_convnet(config).eval()
        with torch.no_grad():
            features = net(torch.zeros(2, 3, 64, 64))["features"]
    assert features.shape == (2, net.out_dim)
    if kernel is not None:
        assert net.conv1[0].kernel_size == (kernel, kernel)
