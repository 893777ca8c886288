"""Generated dataset folders in the layouts the plug-in reads (see cim_plugin/datasets/folders.py).

Every generator writes a tiny but valid tree under ``root`` and returns nothing that a caller must
keep. Images are RGB: a flat background with, for ``textured`` images, a class-coloured square at a
random place, so that classes differ and a CAM has an object to find. Shared by test_datasets.py
(layout tests) and test_cim_datasets.py (end-to-end CIM runs on every dataset kind).
"""

import os
import pickle

import numpy as np
from PIL import Image

#: Class colours (RGB), cycled when there are more classes.
PALETTE = ((220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 200, 30), (200, 40, 200), (30, 200, 200))


def save_image(path, size=(12, 10), colour=(200, 30, 30)):
    """Write a flat-colour image of ``size`` (width, height) pixels to ``path`` (folders made)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def object_image(rng, side, class_idx):
    """uint8 (side, side, 3): a grey background with a square of the class's colour at a random place."""
    image = np.full((side, side, 3), 110, np.uint8) + rng.integers(0, 30, size=(side, side, 3), dtype=np.uint8)
    obj = max(2, side // 3)
    y, x = rng.integers(0, side - obj + 1, size=2)
    image[y:y + obj, x:x + obj] = PALETTE[class_idx % len(PALETTE)]
    return image


def _write(path, size, colour, textured, rng, class_idx):
    """One image file: flat ``colour`` of ``size`` (w, h), or (``textured``) an object image of side w."""
    if not textured:
        save_image(path, size=size, colour=colour)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(object_image(rng, size[0], class_idx)).save(path)


def imagenet_tree(root, classes=("n01", "n02", "n03"), per_class=2, size=(12, 10), textured=False,
                  val_per_class=None):
    """ImageFolder layout: root/{train,val}/<class>/<class>_<j>.JPEG, ``per_class`` train images per class
    and ``val_per_class`` (default: the same) val images."""
    rng = np.random.default_rng(0)
    counts = {"train": per_class, "val": per_class if val_per_class is None else val_per_class}
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            for j in range(counts[split]):
                _write(os.path.join(root, split, c, f"{c}_{j}.JPEG"), size, (40 * i % 256, 10 * j % 256, 0),
                       textured, rng, i)


def food_tree(root, classes=("pizza", "apple_pie", "sushi"), train_per_class=1, test_per_class=1,
              with_classes_txt=True, size=(12, 10), textured=False):
    """Food-101 layout: root/images/<class>/<j><initial>.jpg and root/meta/{train,test,classes}.txt.

    Image ids 0..train_per_class-1 of each class are listed in train.txt, the next test_per_class
    ones in test.txt; classes.txt (optional) keeps the given, unsorted class order.
    """
    rng = np.random.default_rng(0)
    train, test = [], []
    for i, c in enumerate(classes):
        for j in range(train_per_class + test_per_class):
            _write(os.path.join(root, "images", c, f"{j}{c[0]}.jpg"), size, (200, 30, 30), textured, rng, i)
            (train if j < train_per_class else test).append(f"{c}/{j}{c[0]}\n")
    os.makedirs(os.path.join(root, "meta"))
    with open(os.path.join(root, "meta", "train.txt"), "w") as fh:
        fh.write("".join(train))
    with open(os.path.join(root, "meta", "test.txt"), "w") as fh:
        fh.write("".join(test))
    if with_classes_txt:
        with open(os.path.join(root, "meta", "classes.txt"), "w") as fh:
            fh.write("\n".join(classes) + "\n")


def tiny_tree(root, wnids=("n002", "n001"), train_per_class=2, val_per_class=1, size=16, textured=False):
    """tiny-imagenet-200 layout with boxes: wnids.txt, train/<wnid>/images/, <wnid>_boxes.txt, val/.

    Train image j of a class has the inclusive box (j, 1, 5 + j, size - 1) (the last row at the
    edge); every val image has (2, 3, size + 5, 9) (x1 beyond the image: the reader clips it).
    """
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "wnids.txt"), "w") as fh:
        fh.write("\n".join(wnids) + "\n")
    for i, w in enumerate(wnids):
        lines = []
        for j in range(train_per_class):
            name = f"{w}_{j}.JPEG"
            _write(os.path.join(root, "train", w, "images", name), (size, size), (200, 30, 30), textured, rng, i)
            lines.append(f"{name}\t{j}\t1\t{5 + j}\t{size - 1}\n")
        with open(os.path.join(root, "train", w, f"{w}_boxes.txt"), "w") as fh:
            fh.writelines(lines)
    ann = []
    for i, w in enumerate(wnids):
        for j in range(val_per_class):
            name = f"val_{i}.JPEG" if val_per_class == 1 else f"val_{i}_{j}.JPEG"
            _write(os.path.join(root, "val", "images", name), (size, size), (200, 30, 30), textured, rng, i)
            ann.append(f"{name}\t{w}\t2\t3\t{size + 5}\t9\n")
    os.makedirs(os.path.join(root, "val"), exist_ok=True)
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as fh:
        fh.writelines(ann)


def cifar_tree(root, n_train=5, n_test=3, n_classes=3, textured=False):
    """root/cifar-100-python/{train,test,meta} pickles; image i has fine label i % n_classes.

    Images are uniform noise, or (``textured``) object images. Returns the cifar-100-python folder.
    """
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % n_classes for i in range(n)]
        if textured:  # (N, 32, 32, 3) -> CIFAR rows [R plane | G plane | B plane]
            images = np.stack([object_image(rng, 32, y) for y in labels])
            data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        else:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {"data": data, "fine_labels": labels, "coarse_labels": [0] * n}
        with open(os.path.join(folder, split), "wb") as fh:
            pickle.dump(entry, fh)
    with open(os.path.join(folder, "meta"), "wb") as fh:
        pickle.dump({"fine_label_names": [chr(ord("a") + i) for i in range(n_classes)]}, fh)
    return folder
