"""Real datasets read from the folder named by the config's "data_root" (no PyCIL code involved).

- "imagenet100" / "imagenet1000": ImageFolder layout ``train/<class>/*.JPEG`` and ``val/<class>/*``.
- "imagefolder" (also "imagenette", "imagewoof", "miniimagenet"): any ``train/<class>/*`` and
  ``val/<class>/*`` (or ``test/<class>/*``) tree, e.g. Imagenette2, Imagewoof2 or Mini-ImageNet.
- "food101": the official Food-101 layout ``images/<class>/<id>.jpg`` + ``meta/{train,test}.txt``.
- "tinyimagenet": the official Tiny-ImageNet-200 layout, with its object boxes.

Classes are numbered in sorted order of their folder names / ids (as torchvision's ImageFolder
does), except Food-101, which follows ``meta/classes.txt`` when present. Path datasets hold numpy
arrays of absolute path strings (``use_path`` True); PyCIL opens them with PIL when it loads a batch.
With ``"resolution"`` (imagenet100/1000, imagefolder, food101) every image is instead decoded once at that
size and held in memory (``use_path`` False; see :mod:`cim_plugin.datasets.resolution`).
Every layout problem raises :class:`DatasetLayoutError` naming the path and the expected layout.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torchvision import transforms

from .base import DatasetLayoutError, IData, require_data_root
from .resolution import RESOLUTION_KEYS, decode_at, keep_first_per_class, resolution_options, set_resolution_transforms

__all__ = ["IMAGE_EXTENSIONS", "ImageNet100", "ImageNet1000", "ImageFolder", "Imagenette", "Imagewoof",
           "MiniImageNet", "Food101", "TinyImageNet"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: str) -> List[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _images_in(path: str) -> List[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image(e.name))


def _need_dir(path: str, expected: str) -> None:
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"expected {expected} but {path} does not exist"
                                 + (" (it is a file, not a folder)" if os.path.exists(path) else ""))


def _need_file(path: str, expected: str) -> None:
    if not os.path.isfile(path):
        raise DatasetLayoutError(f"expected {expected} but {path} does not exist")


def _read_lines(path: str) -> List[str]:
    with open(path, "r", encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _paths(items: Sequence[str]) -> np.ndarray:
    """Path strings as a numpy array of str (N,) (what PyCIL indexes with numpy index arrays)."""
    return np.array(list(items), dtype=str) if len(items) else np.zeros(0, dtype=str)


def _imagenet_transforms(idata: IData) -> None:
    idata.train_trsf = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    idata.test_trsf = [transforms.Resize(256), transforms.CenterCrop(224)]
    idata.common_trsf = [transforms.ToTensor(), transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]


class _RootedIData(IData):
    """A dataset read from ``data_root``; ``layout`` describes the folder (for error messages)."""

    option_keys = ("data_root",)
    use_path = True
    layout = ""

    def __init__(self, data_root: str) -> None:
        super().__init__()
        self.data_root = require_data_root({"data_root": data_root}, self.name, self.layout)

    @classmethod
    def from_options(cls, options: Dict[str, Any]):
        """Build from a run config: reads only "data_root" (DatasetLayoutError when missing)."""
        given = [k for k in RESOLUTION_KEYS if k in options and k != "resolution_cache"]
        if given:
            raise ValueError(f'dataset "{cls.name}" has no "resolution" option (config key(s) {given}); it is '
                             f"read at its own size. Remove the key(s), or use imagenet100, imagenet1000, "
                             f"imagefolder or food101")
        return cls(require_data_root(options, cls.name, cls.layout))

    def _check_root(self) -> None:
        _need_dir(self.data_root, f'"data_root" to be a folder holding {self.layout}')


class _ResizableIData(_RootedIData):
    """A path dataset that can instead be decoded once at the config's "resolution" (see module doc)."""

    option_keys = ("data_root",) + RESOLUTION_KEYS
    resolution = None  # S when decoded at S x S, else None (PyCIL's 224 px transforms on the files)

    def __init__(self, data_root: str, **resolution) -> None:
        super().__init__(data_root)
        self._resolution = resolution_options(resolution)
        self.resolution = self._resolution.size
        _imagenet_transforms(self)

    @classmethod
    def from_options(cls, options: Dict[str, Any]):
        """Build from a run config: "data_root" (DatasetLayoutError when missing) and the resolution keys
        (ValueError naming a bad one)."""
        return cls(require_data_root(options, cls.name, cls.layout),
                   **{k: options[k] for k in RESOLUTION_KEYS if k in options})

    def _read_paths(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def download_data(self) -> None:
        self._check_root()
        self._read_paths()
        opts = self._resolution
        if opts.size is None:
            return
        for split, per_class in (("train", opts.train_per_class), ("test", opts.test_per_class)):
            paths, targets = getattr(self, f"{split}_data"), getattr(self, f"{split}_targets")
            keep = keep_first_per_class(paths, targets, per_class)
            setattr(self, f"{split}_data", decode_at(paths[keep], opts.size, opts.upsample, opts.cache))
            setattr(self, f"{split}_targets", targets[keep])
        self.use_path = False
        self.image_size = (opts.size, opts.size)
        set_resolution_transforms(self, opts.size, IMAGENET_MEAN, IMAGENET_STD)


def scan_image_folder(split_dir: str, rel: str, classes: Optional[List[str]] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read an ImageFolder split ``split_dir/<class>/<image>``.

    Args:
        split_dir: absolute folder of the split; rel: its name relative to data_root (for messages).
        classes: the class folder names defining the labels (None: the sorted sub-folders found here).
            Sub-folders not in ``classes`` are an error; classes without a folder here are allowed.
    Returns:
        paths (N,) str array of absolute paths, targets (N,) int64, and the class list.
    """
    expected = f"data_root/{rel}/<class>/*.JPEG (ImageFolder layout)"
    _need_dir(split_dir, expected)
    found = _subdirs(split_dir)
    if not found:
        loose = _images_in(split_dir)
        hint = (f"; it holds {len(loose)} images directly: sort them into one sub-folder per class "
                f"(named like the train/ folders)" if loose else "")
        raise DatasetLayoutError(f"expected {expected} but {split_dir} has no class sub-folders{hint}")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetLayoutError(
                f"{split_dir} has class folders that train/ does not have: {extra[:5]}"
                f"{' ...' if len(extra) > 5 else ''}; the class folders of {rel}/ must match those of train/")
    index = {c: i for i, c in enumerate(classes)}
    paths: List[str] = []
    targets: List[int] = []
    for c in found:
        names = _images_in(os.path.join(split_dir, c))
        if not names:
            raise DatasetLayoutError(f"expected {expected} but {os.path.join(split_dir, c)} holds no image "
                                     f"files (extensions {', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(os.path.join(split_dir, c, n) for n in names)
        targets.extend([index[c]] * len(names))
    return _paths(paths), np.asarray(targets, dtype=np.int64), classes


class _ImageNetFolder(_ResizableIData):
    """ImageNet subsets in ImageFolder layout: data_root/train/<class>/*.JPEG, data_root/val/<class>/*.

    Labels follow the sorted train/ class folders; val/ must use the same folder names. No boxes;
    images vary in size (``image_size`` None). PyCIL's 224 px transforms (no colour jitter), or with
    "resolution" S the images decoded once at S x S.
    """

    layout = "train/<class>/*.JPEG and val/<class>/*.JPEG (ImageFolder layout)"
    test_splits = ("val",)

    def _read_paths(self) -> None:
        self.train_data, self.train_targets, classes = scan_image_folder(
            os.path.join(self.data_root, "train"), "train")
        test = next((s for s in self.test_splits if os.path.isdir(os.path.join(self.data_root, s))),
                    self.test_splits[0])
        self.test_data, self.test_targets, _ = scan_image_folder(os.path.join(self.data_root, test), test, classes)
        self.class_names = classes
        self.class_order = list(range(len(classes)))


class ImageNet100(_ImageNetFolder):
    __doc__ = _ImageNetFolder.__doc__
    name = "imagenet100"


class ImageNet1000(_ImageNetFolder):
    __doc__ = _ImageNetFolder.__doc__
    name = "imagenet1000"


class ImageFolder(_ImageNetFolder):
    """Any class-folder tree: data_root/train/<class>/* and data_root/val/<class>/* (or test/<class>/*), e.g.
    Imagenette2, Imagewoof2 or Mini-ImageNet. Labels follow the sorted train/ class folders. PyCIL's 224 px
    transforms on the files, or with "resolution" S the images decoded once at S x S (see the module doc)."""

    name = "imagefolder"
    layout = "train/<class>/<image> and val/<class>/<image> (or test/<class>/<image>)"
    test_splits = ("val", "test")


class Imagenette(ImageFolder):
    __doc__ = ImageFolder.__doc__
    name = "imagenette"


class Imagewoof(ImageFolder):
    __doc__ = ImageFolder.__doc__
    name = "imagewoof"


class MiniImageNet(ImageFolder):
    __doc__ = ImageFolder.__doc__
    name = "miniimagenet"


class Food101(_ResizableIData):
    """Food-101, official layout: data_root/images/<class>/<id>.jpg, data_root/meta/{train,test}.txt
    (lines "<class>/<id>"), class order from data_root/meta/classes.txt if present, else the sorted
    folders of images/. No boxes; images vary in size. 224 px ImageNet-style transforms, or with
    "resolution" S the images decoded once at S x S.
    """

    name = "food101"
    layout = "images/<class>/<id>.jpg and meta/train.txt, meta/test.txt (official Food-101 layout)"

    def _split(self, split: str, classes: List[str], listing: Dict[str, set]) -> Tuple[np.ndarray, np.ndarray]:
        meta = os.path.join(self.data_root, "meta", f"{split}.txt")
        _need_file(meta, f'data_root/meta/{split}.txt (lines "<class>/<id>", official Food-101 layout)')
        index = {c: i for i, c in enumerate(classes)}
        paths, targets, missing = [], [], []
        for n, line in enumerate(_read_lines(meta), 1):
            cls, sep, stem = line.partition("/")
            if not sep or not stem or cls not in index:
                raise DatasetLayoutError(f'{meta} line {n} is {line!r}; expected "<class>/<id>" with <class> '
                                         f"one of the classes ({', '.join(classes[:3])}, ...)")
            fname = stem if _is_image(stem) else stem + ".jpg"
            if fname not in listing[cls]:
                missing.append(os.path.join(self.data_root, "images", cls, fname))
            paths.append(os.path.join(self.data_root, "images", cls, fname))
            targets.append(index[cls])
        if missing:
            raise DatasetLayoutError(f"{meta} lists {len(missing)} images that do not exist, e.g. {missing[0]} "
                                     f"(expected data_root/images/<class>/<id>.jpg)")
        if not paths:
            raise DatasetLayoutError(f'{meta} is empty; expected lines "<class>/<id>"')
        return _paths(paths), np.asarray(targets, dtype=np.int64)

    def _read_paths(self) -> None:
        images = os.path.join(self.data_root, "images")
        _need_dir(images, "data_root/images/<class>/<id>.jpg (official Food-101 layout)")
        folders = _subdirs(images)
        classes_txt = os.path.join(self.data_root, "meta", "classes.txt")
        classes = _read_lines(classes_txt) if os.path.isfile(classes_txt) else folders
        if not classes:
            raise DatasetLayoutError(f"expected data_root/images/<class>/<id>.jpg but {images} has no class folders")
        absent = [c for c in classes if c not in set(folders)]
        if absent:
            raise DatasetLayoutError(f"class {absent[0]!r} (from {classes_txt}) has no folder "
                                     f"{os.path.join(images, absent[0])}")
        listing = {c: set(_images_in(os.path.join(images, c))) for c in classes}
        self.train_data, self.train_targets = self._split("train", classes, listing)
        self.test_data, self.test_targets = self._split("test", classes, listing)
        self.class_names = classes
        self.class_order = list(range(len(classes)))


def _parse_box(fields: Sequence[str], where: str, width: int, height: int) -> List[int]:
    """Inclusive (x0, y0, x1, y1) box text -> exclusive ints clipped to the image."""
    try:
        x0, y0, x1, y1 = (int(round(float(f))) for f in fields)
    except ValueError:
        raise DatasetLayoutError(f"{where}: expected four box numbers x0 y0 x1 y1, got {list(fields)}") from None
    x0, y0 = min(max(x0, 0), width), min(max(y0, 0), height)
    x1, y1 = min(max(x1 + 1, x0), width), min(max(y1 + 1, y0), height)
    return [x0, y0, x1, y1]


class TinyImageNet(_RootedIData):
    """Tiny-ImageNet-200, official layout, with object boxes (``train_boxes`` / ``test_boxes``).

    data_root/wnids.txt; data_root/train/<wnid>/images/*.JPEG with data_root/train/<wnid>/<wnid>_boxes.txt
    (lines "<file> x0 y0 x1 y1", inclusive pixels); data_root/val/images/*.JPEG with
    data_root/val/val_annotations.txt (lines "<file> <wnid> x0 y0 x1 y1"). The labelled val split is the
    test split. Labels follow the sorted wnids. Boxes are made exclusive (x1 + 1, y1 + 1) and clipped.
    ``use_path`` True; ``image_size`` is read from the first training image (64x64 for the official
    files) and assumed for all. Transforms: RandomCrop(S, padding=S//8) + flip, Normalize.
    """

    name = "tinyimagenet"
    layout = ("wnids.txt, train/<wnid>/images/*.JPEG, train/<wnid>/<wnid>_boxes.txt, val/images/*.JPEG and "
              "val/val_annotations.txt (official tiny-imagenet-200 layout)")

    def __init__(self, data_root: str) -> None:
        super().__init__(data_root)
        self._set_transforms(64)

    def _set_transforms(self, size: int) -> None:
        self.train_trsf = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip(),
                           transforms.ToTensor()]
        self.test_trsf = [transforms.ToTensor()]
        self.common_trsf = [transforms.Normalize(mean=(0.480, 0.448, 0.398), std=(0.277, 0.269, 0.282))]

    def download_data(self) -> None:
        from PIL import Image  # only to write the downloaded photos

        self._check_root()
        root = self.data_root
        wnids_txt = os.path.join(root, "wnids.txt")
        _need_file(wnids_txt, "data_root/wnids.txt (one class id per line, official tiny-imagenet-200 layout)")
        wnids = sorted(set(_read_lines(wnids_txt)))
        if not wnids:
            raise DatasetLayoutError(f"{wnids_txt} is empty; expected one class id (wnid) per line")
        index = {w: i for i, w in enumerate(wnids)}
        _need_dir(os.path.join(root, "train"), "data_root/train/<wnid>/images/*.JPEG")
        train: List[Tuple[str, int, List[str], str]] = []  # (path, label, box fields, boxes file)
        for w in wnids:
            img_dir = os.path.join(root, "train", w, "images")
            _need_dir(img_dir, f"data_root/train/{w}/images/*.JPEG (class {w} from wnids.txt)")
            names = _images_in(img_dir)
            if not names:
                raise DatasetLayoutError(f"expected data_root/train/{w}/images/*.JPEG but {img_dir} holds no images")
            boxes_txt = os.path.join(root, "train", w, f"{w}_boxes.txt")
            _need_file(boxes_txt, f'data_root/train/{w}/{w}_boxes.txt (lines "<file> x0 y0 x1 y1")')
            table = {}
            for line in _read_lines(boxes_txt):
                parts = line.split()
                if len(parts) != 5:
                    raise DatasetLayoutError(f'{boxes_txt}: line {line!r} is not "<file> x0 y0 x1 y1"')
                table[parts[0]] = parts[1:]
            for n in names:
                if n not in table:
                    raise DatasetLayoutError(f"{boxes_txt} has no box for {os.path.join(img_dir, n)}")
                train.append((os.path.join(img_dir, n), index[w], table[n], boxes_txt))
        with Image.open(train[0][0]) as im:  # the image size (boxes are clipped to it)
            width, height = im.size
        self.image_size = (height, width)
        self._set_transforms(height if height == width else min(height, width))

        val_dir = os.path.join(root, "val", "images")
        _need_dir(val_dir, "data_root/val/images/*.JPEG (official tiny-imagenet-200 layout)")
        ann = os.path.join(root, "val", "val_annotations.txt")
        _need_file(ann, 'data_root/val/val_annotations.txt (lines "<file> <wnid> x0 y0 x1 y1")')
        on_disk = set(_images_in(val_dir))
        test = []
        for line in _read_lines(ann):
            parts = line.split()
            if len(parts) != 6:
                raise DatasetLayoutError(f'{ann}: line {line!r} is not "<file> <wnid> x0 y0 x1 y1"')
            if parts[1] not in index:
                raise DatasetLayoutError(f"{ann}: class {parts[1]!r} of {parts[0]} is not in {wnids_txt}")
            if parts[0] not in on_disk:
                raise DatasetLayoutError(f"{ann} lists {parts[0]} but {os.path.join(val_dir, parts[0])} does not exist")
            test.append((os.path.join(val_dir, parts[0]), index[parts[1]], parts[2:], ann))
        if not test:
            raise DatasetLayoutError(f"{ann} is empty; expected lines \"<file> <wnid> x0 y0 x1 y1\"")

        for split, items in (("train", train), ("test", test)):
            boxes = [_parse_box(f, src, width, height) for _, _, f, src in items]
            setattr(self, f"{split}_data", _paths([p for p, _, _, _ in items]))
            setattr(self, f"{split}_targets", np.asarray([y for _, y, _, _ in items], dtype=np.int64))
            setattr(self, f"{split}_boxes", np.asarray(boxes, dtype=np.int64).reshape(-1, 4))
        self.class_names = wnids
        self.class_order = list(range(len(wnids)))
