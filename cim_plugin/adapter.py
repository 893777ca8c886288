"""The CIM adapter over PyCIL's learners: a mixin that swaps the exemplar buffer for a
CompressedMemory and hooks CIM's per-epoch work into the learner's own training loop.

Nothing of PyCIL is edited. The mixin:
- hands PyCIL a data-manager proxy, so `get_dataset(..., appendent=self._get_memory())` yields
  new-class images (with compression augmentation) plus decoded exemplars, through the same
  train/test transforms as everything else;
- wraps the train loader passed to `_train` so that every epoch start runs CIM's hook (box
  refresh, augmentation schedule, and the bilevel meta steps of the mask model);
- replaces `build_rehearsal_memory` by byte-budgeted herding over compressed exemplars and
  recomputes the class means for NME from decoded exemplars.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset
from torchvision import transforms

from .bilevel import meta_step
from .boxes import box_area_fraction, cam_to_boxes, center_boxes, random_boxes
from .cam import cam_from_feature_maps
from .cim_branch import CIMBranch, count_relu_sites
from .codec import compress, degrade
from .config import ConfigError
from .herding import herding_order
from .inner_losses import inner_loss_for
from .memory import CompressedMemory
from .pycil import learner_modules
from .rng import random_streams_untouched

log = logging.getLogger("cim_plugin")

CAMS_KEPT = 4  # CAMs kept per class for the exemplar figure

# Learners whose memory flow the adapter has been tested with end to end.
SUPPORTED = ("icarl", "der", "foster", "wa", "replay", "der_p")

# The learners' epoch loops that receive the phase's CIL optimiser as an argument: the mixin reads the
# current learning rate and weight decay from it (inner step size, φ's schedule and weight decay).
TRAIN_LOOPS = ("_init_train", "_update_representation", "_feature_boosting", "_der_p_fit")

PHI_WEIGHT_DECAY = 5e-4  # φ's weight decay when the learner's optimiser is not visible (official default)


def is_fast_weight(name: str) -> bool:
    """Parameters the inner step updates: every trainable one but the classifier heads (fc, aux_fc,
    fe_fc, oldfc), as the official code (`'fc' not in name`), so the outer loss improves through the masks."""
    return "fc" not in name


# ----------------------------------------------------------------------------- network access
def unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, nn.DataParallel) else network


def classifier_weight(fc: nn.Module) -> torch.Tensor:
    """Classifier rows (K, D) of PyCIL's linear heads (SimpleLinear, CosineLinear, SplitCosineLinear)."""
    if hasattr(fc, "fc1") and hasattr(fc, "fc2"):  # SplitCosineLinear
        return F.normalize(torch.cat([fc.fc1.weight, fc.fc2.weight], 0), dim=1)
    weight = fc.weight
    if type(fc).__name__.startswith("Cosine"):
        weight = F.normalize(weight, dim=1)
    return weight


def fmaps_and_features(network: nn.Module, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One pass of a PyCIL network: ([last feature map per backbone], features (B, D), fc weight (K, D)).

    Single-backbone nets (IncrementalNet, CosineIncrementalNet) and multi-backbone nets (DERNet,
    FOSTERNet: features are the concatenation over `convnets`) are both handled.
    """
    net = unwrap(network)
    convnets = list(net.convnets) if hasattr(net, "convnets") else [net.convnet]
    outs = [convnet(x) for convnet in convnets]
    fmaps = [o["fmaps"][-1] for o in outs]
    features = torch.cat([o["features"] for o in outs], 1)
    return fmaps, features, classifier_weight(net.fc)


class FmapView(nn.Module):
    """A PyCIL network seen as `x -> {"logits", "fmaps", "features", "weight"}` for CAMs.

    Runs every backbone once (the same activation calls, in the same order, as the network's own
    forward), so the CIM branch's PAU sites are the network's ReLU sites.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.net = unwrap(network)

    def forward(self, x: torch.Tensor) -> Dict[str, Any]:
        fmaps, features, weight = fmaps_and_features(self.net, x)
        logits = self.net.fc(features)
        logits = logits["logits"] if isinstance(logits, dict) else logits
        return {"logits": logits, "fmaps": fmaps, "features": features, "weight": weight}


def cam_of_output(out: Dict[str, Any], labels: torch.Tensor, size) -> torch.Tensor:
    """CAM (B, H, W) in [0, 1] of class `labels` from an FmapView output (weight detached)."""
    return cam_from_feature_maps(out["fmaps"], out["weight"].detach(), labels, out_size=tuple(size))


def copy_block(branch: CIMBranch, size: int, src: int, dst: int) -> None:
    """Copy the PAUs of backbone `src` onto those of backbone `dst` (blocks of `size` sites, call order)."""
    with torch.no_grad():
        for k in range(size):
            branch.paus[dst * size + k].load_state_dict(branch.paus[src * size + k].state_dict())


# ----------------------------------------------------------------------------- image pipeline
def _split_test_transform(data_manager) -> Tuple[List[Any], List[Any]]:
    """PyCIL's test transform split into (PIL->PIL geometric part, tensor part incl. Normalize)."""
    trsf = list(data_manager._test_trsf) + list(data_manager._common_trsf)
    for i, t in enumerate(trsf):
        if isinstance(t, transforms.ToTensor):
            return trsf[:i], trsf[i:]
    raise ConfigError("the dataset's test transforms have no ToTensor(); the plug-in needs one")


class ImagePipeline:
    """Raw dataset items <-> stored uint8 images <-> network inputs, for one data manager.

    Stored images are what the memory compresses: the raw arrays (CIFAR, synthetic), or for
    path datasets (ImageNet, Food-101) the image after the test transform's geometric part
    (Resize(256) + CenterCrop(224)), so that exemplars no longer need the original files.
    """

    def __init__(self, data_manager):
        self.use_path = bool(data_manager.use_path)
        geometric, tensor_part = _split_test_transform(data_manager)
        self.geometric = transforms.Compose(geometric) if geometric else None
        self.tensor_part = transforms.Compose(tensor_part)
        self.train_trsf = transforms.Compose([*data_manager._train_trsf, *data_manager._common_trsf])
        norm = [t for t in tensor_part if isinstance(t, transforms.Normalize)]
        simple = len(tensor_part) == 2 and isinstance(tensor_part[0], transforms.ToTensor) and len(norm) == 1
        self._norm = (torch.tensor(norm[0].mean).view(1, 3, 1, 1), torch.tensor(norm[0].std).view(1, 3, 1, 1)) \
            if simple else None

    def load(self, item) -> torch.Tensor:
        """One raw item (HxWx3 uint8 array or a path) -> stored uint8 Tensor(3, H, W)."""
        if self.use_path:
            with open(item, "rb") as handle:
                img = Image.open(handle).convert("RGB")
        elif self.geometric is None:  # raw array, nothing to resize: store it as it is
            return torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)
        else:
            img = Image.fromarray(item)
        if self.geometric is not None:
            img = self.geometric(img)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def load_many(self, items) -> torch.Tensor:
        """Raw items -> uint8 Tensor(N, 3, H, W) (one image size required)."""
        if not self.use_path and self.geometric is None and isinstance(items, np.ndarray) and items.ndim == 4:
            return torch.from_numpy(np.ascontiguousarray(items)).permute(0, 3, 1, 2).contiguous()
        images = [self.load(item) for item in items]
        sizes = {tuple(t.shape) for t in images}
        if len(sizes) != 1:
            raise ValueError(f"images of one class have different sizes after the test transform: {sorted(sizes)[:3]}")
        return torch.stack(images)

    def to_input(self, images: torch.Tensor, device) -> torch.Tensor:
        """uint8 Tensor(N, 3, H, W) -> normalised float network input (N, 3, H, W) on `device`."""
        if self._norm is not None:
            mean, std = self._norm
            x = images.to(device, non_blocking=True).float().div_(255)
            return (x - mean.to(device)) / std.to(device)
        pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        return torch.stack([self.tensor_part(p) for p in pil]).to(device)

    @staticmethod
    def to_pil(image: torch.Tensor) -> Image.Image:
        return Image.fromarray(image.permute(1, 2, 0).numpy())


# ----------------------------------------------------------------------------- datasets
class ExemplarDataset(Dataset):
    """Decoded exemplars of a CompressedMemory as PyCIL items (idx, image tensor, label).

    The exemplars are decoded once, in one batch per image size, when the dataset is made (once per
    phase): a per-item decode costs about 1 ms of fixed overhead, 70x the batched cost, and would sit
    on the loader's hot path. The decoded copies are transient working memory for this phase's loader
    (PyCIL keeps raw exemplars in RAM the same way); what the budget counts is the stored memory.
    Above `cache_bytes` of decoded pixels the dataset decodes per item instead.
    """

    CACHE_BYTES = 2 << 30

    def __init__(self, memory: CompressedMemory, trsf, cache_bytes: Optional[int] = None):
        self.memory = memory
        self.trsf = trsf
        self.labels = memory.labels.numpy()
        limit = self.CACHE_BYTES if cache_bytes is None else cache_bytes
        sizes = memory.sizes
        decoded_bytes = int((3 * sizes[:, 0] * sizes[:, 1]).sum()) if len(memory) else 0
        self._decoded: Optional[List[torch.Tensor]] = (
            memory.decode_list() if 0 < decoded_bytes <= limit else None)

    def __len__(self) -> int:
        return len(self.memory)

    def __getitem__(self, idx):
        decoded = self.memory.decode_one(idx) if self._decoded is None else self._decoded[idx]
        return idx, self.trsf(ImagePipeline.to_pil(decoded)), int(self.labels[idx])


class CompressAugmentDataset(Dataset):
    """New-class training images, each compressed with its current box with probability `prob`
    (CIM's compression augmentation). Boxes are in stored-image coordinates.

    Whether item `idx` is compressed in pass `salt` is a pure function of (seed, salt, idx), drawn from a
    generator of its own: the host's random stream (shuffling, crops, flips) is the same as without CIM,
    and the draws are the same in every loader worker."""

    def __init__(self, base, pipeline: ImagePipeline, compress_ratio: float, seed: int = 0):
        self.base = base
        self.pipeline = pipeline
        self.ratio = compress_ratio
        self.boxes: Optional[torch.Tensor] = None
        self.prob = 0.0
        self.seed = int(seed)
        self.salt = 0  # set before each pass over the data
        self.images, self.labels = base.images, base.labels

    def _coin(self, idx: int) -> float:
        key = ((self.seed * 1_000_003 + self.salt) * 1_000_003 + int(idx)) % (1 << 62)
        return float(torch.rand((), generator=torch.Generator().manual_seed(key)))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx):
        if self.boxes is None or self.prob <= 0 or self._coin(idx) >= self.prob:
            return self.base[idx]
        stored = self.pipeline.load(self.base.images[idx])
        image = compress(stored.unsqueeze(0), self.boxes[idx : idx + 1], self.ratio)[0]
        return idx, self.base.trsf(ImagePipeline.to_pil(image)), self.base.labels[idx]


class MemoryAppendent:
    """What `_get_memory()` returns under CIM: a marker the data-manager proxy expands."""

    def __init__(self, memory: CompressedMemory):
        self.memory = memory

    def __len__(self) -> int:
        return len(self.memory)


class DataManagerProxy:
    """A PyCIL DataManager whose `get_dataset` understands MemoryAppendent; all else delegates."""

    def __init__(self, data_manager, learner):
        self._dm = data_manager
        self._learner = learner

    def __getattr__(self, name):
        return getattr(self._dm, name)

    def get_dataset(self, indices, source, mode, appendent=None, ret_data=False, m_rate=None):
        learner = self._learner
        memory_part = appendent if isinstance(appendent, MemoryAppendent) else None
        if memory_part is not None:
            appendent = None
        if len(indices) == 0 and memory_part is not None:
            if ret_data:
                raise NotImplementedError("ret_data with compressed memory only: the exemplars are not raw data")
            return ExemplarDataset(memory_part.memory, self._trsf(mode))
        result = self._dm.get_dataset(indices, source, mode, appendent=appendent, ret_data=ret_data, m_rate=m_rate)
        dataset = result[2] if ret_data else result
        if source == "train" and mode == "train":
            dataset = CompressAugmentDataset(dataset, learner._cim_pipeline, learner._cim_cfg["compress_ratio"],
                                             seed=int(learner.args.get("seed", 0)) * 1009 + learner._cur_task)
            learner._cim_train_new = dataset
        if memory_part is not None and len(memory_part):
            exemplars = ExemplarDataset(memory_part.memory, dataset.trsf if hasattr(dataset, "trsf")
                                        else dataset.base.trsf)
            if source == "train" and mode == "train":
                learner._cim_train_memory = exemplars  # decoded once per phase; the meta batches reuse it
            dataset = _Concat([dataset, exemplars])
        return (*result[:2], dataset) if ret_data else dataset

    def _trsf(self, mode):
        dm = self._dm
        if mode == "train":
            return transforms.Compose([*dm._train_trsf, *dm._common_trsf])
        if mode == "flip":
            return transforms.Compose([*dm._test_trsf, transforms.RandomHorizontalFlip(p=1.0), *dm._common_trsf])
        return transforms.Compose([*dm._test_trsf, *dm._common_trsf])


class _Concat(ConcatDataset):
    """ConcatDataset that keeps PyCIL's `labels` attribute and returns global indices."""

    def __init__(self, datasets):
        super().__init__(datasets)
        self.labels = np.concatenate([np.asarray(d.labels) for d in datasets])

    def __getitem__(self, idx):
        _, image, label = super().__getitem__(idx)
        return idx, image, label


class _EpochHookLoader:
    """A train loader that calls `hook()` before every pass (= every epoch) over the data."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def __iter__(self):
        self._hook()
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


# ----------------------------------------------------------------------------- the mixin
def keeps_memory(cls) -> bool:
    """Does a PyCIL learner build a rehearsal memory (calls build_rehearsal_memory)?"""
    for klass in cls.__mro__:
        if klass.__name__ in ("BaseLearner", "object"):
            continue
        try:
            if "build_rehearsal_memory" in inspect.getsource(klass):
                return True
        except (OSError, TypeError):
            continue
    return False


class CIMMixin:
    """Mixed in front of a PyCIL learner class (see `cim_learner_class`)."""

    def __init__(self, args):
        super().__init__(args)
        self._cim_cfg = {k: args[k] for k in (
            "cim_mask", "compress_ratio", "mask_threshold", "cam_update_interval", "randombbxblur_prob_incre",
            "phi_lr", "lr_ratio", "max_phi_grad_norm", "meta_batch_size", "num_meta_iters_per_cls",
            "div_coef", "reg_coef")}
        self._cim_memory: Optional[CompressedMemory] = None
        self._cim_paused = False  # True while a stage without CIM work runs (FOSTER's compression)
        self._cim_pipeline: Optional[ImagePipeline] = None
        self._cim_train_new: Optional[CompressAugmentDataset] = None
        self._cim_epoch = 0
        self._cim_image_bytes: Optional[int] = None
        self._cim_generator = torch.Generator().manual_seed(int(args.get("seed", 0)))
        self._cim_branch: Optional[CIMBranch] = None  # the adaptive mask model (PAUs, phi)
        self._cim_phi_optimizer: Optional[torch.optim.Optimizer] = None  # made anew every phase
        self._cim_branch_task = -1
        self._cim_inner_loss_fn = inner_loss_for(str(args.get("model_name", "")))
        self._cim_cil_optimizer: Optional[torch.optim.Optimizer] = None  # the phase's optimiser of θ
        self._cim_epoch_lr: Optional[float] = None  # lr of the epoch now running
        self._cim_phase_lr0: Optional[float] = None  # lr of the phase's first epoch
        self._cim_meta_lr: Optional[float] = None  # lr of the epoch just trained (used by the meta steps)
        self._cim_meta_source: Optional[Dataset] = None  # new data + decoded memory, train transforms
        self._cim_train_memory: Optional[ExemplarDataset] = None  # the phase loader's decoded memory
        self._cim_meta_log: List[Dict[str, float]] = []
        self._cim_sources: Dict[int, torch.Tensor] = {}  # class -> train indices of its exemplars, memory order
        self._cim_cams: Dict[int, torch.Tensor] = {}  # class -> CAMs of its first exemplars (for figures)
        self._cim_last_cams: Optional[torch.Tensor] = None
        self._cim_seconds: Dict[str, float] = {}  # this phase's wall seconds per CIM component
        self._cim_calls: Dict[str, int] = {}  # and how often each ran

    @contextmanager
    def _cim_timed(self, key: str):
        """Adds the wall seconds of the block to `_cim_seconds[key]` (CUDA work synchronised)."""
        sync = torch.cuda.synchronize if torch.device(self._device).type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self._cim_seconds[key] = self._cim_seconds.get(key, 0.0) + time.perf_counter() - start
            self._cim_calls[key] = self._cim_calls.get(key, 0) + 1

    # -- PyCIL entry points ------------------------------------------------------------------
    def incremental_train(self, data_manager):
        if self._cim_pipeline is None:
            self._cim_pipeline = ImagePipeline(data_manager)
        self._cim_epoch = 0
        self._cim_train_new = None
        self._cim_meta_log = []
        self._cim_phi_optimizer = None  # φ's Adam is made anew each phase (as the official code)
        self._cim_cil_optimizer = None
        self._cim_epoch_lr = self._cim_phase_lr0 = self._cim_meta_lr = None
        self._cim_meta_source = None
        self._cim_train_memory = None
        self._cim_seconds = {"meta_steps": 0.0, "box_refresh": 0.0, "memory_build": 0.0}
        self._cim_calls = {key: 0 for key in self._cim_seconds}
        return super().incremental_train(DataManagerProxy(data_manager, self))

    def _train(self, train_loader, *rest, **kwargs):
        return super()._train(_EpochHookLoader(train_loader, self._cim_on_epoch), *rest, **kwargs)

    def _feature_compression(self, *args, **kwargs):
        """FOSTER's compression stage distils a student from the frozen teacher. As in the official CIM
        code, no meta steps or box refreshes run in its epochs (they follow the boosting epochs only)."""
        self._cim_paused = True
        try:
            return super()._feature_compression(*args, **kwargs)
        finally:
            self._cim_paused = False

    def _get_memory(self):
        if self._cim_memory is None or len(self._cim_memory) == 0:
            return None
        return MemoryAppendent(self._cim_memory)

    @property
    def exemplar_size(self) -> int:
        return 0 if self._cim_memory is None else len(self._cim_memory)

    @property
    def samples_old_class(self):
        """FOSTER's per-old-class sample count, from the compressed memory."""
        if self._cim_memory is None or self._known_classes == 0:
            return super().samples_old_class
        return max(1, len(self._cim_memory) // max(1, self._known_classes))

    def build_rehearsal_memory(self, data_manager, per_class):
        """Byte-budgeted herding over compressed exemplars; class means from decoded exemplars."""
        dm = data_manager._dm if isinstance(data_manager, DataManagerProxy) else data_manager
        with random_streams_untouched():
            if self._cim_cfg["cim_mask"] == "cim" and self._cim_train_new is not None:
                self._cim_meta_lr = self._cim_epoch_lr  # the last epoch's lr
                self._cim_meta_steps(self._cim_train_new)  # the meta steps that follow the last epoch
            with self._cim_timed("memory_build"):
                self._cim_build_memory(dm)

    def _cim_build_memory(self, dm) -> None:
        pipeline = self._cim_pipeline
        network = unwrap(self._network)
        was_training = {m: m.training for m in network.modules()}
        network.eval()
        try:
            for class_idx in range(self._known_classes, self._total_classes):
                images = pipeline.load_many(self._class_items(dm, class_idx))
                if self._cim_memory is None:
                    self._cim_image_bytes = 3 * int(images.shape[-2]) * int(images.shape[-1])
                    self._cim_memory = CompressedMemory(self._budget_bytes(), self._cim_cfg["compress_ratio"])
                memory = self._cim_memory
                budget = self._class_budget()
                if class_idx == self._known_classes:
                    memory.budget_bytes = self._budget_bytes()  # grows with classes under fixed_memory
                    memory.reduce(budget)
                labels = torch.full((len(images),), class_idx, dtype=torch.long)
                # Herding ranks the compressed candidates (what is stored is what is herded), as the
                # official code: boxes first, then features of the decoded images.
                _, boxes = self._features_and_boxes(images, labels, need_features=False)
                decoded = compress(images, boxes, self._cim_cfg["compress_ratio"])
                features, _ = self._forward_chunks(decoded, labels)
                source = torch.from_numpy(np.where(dm._train_targets == class_idx)[0])
                try:
                    kept = memory.select_class(images, features, boxes, class_idx, budget, replace=True)
                except ValueError as err:
                    raise ConfigError(
                        f"memory budget too small: {err}. The budget is memory_size x one image's bytes "
                        f"({self._cim_image_bytes} B) shared by {self._total_classes} classes; raise memory_size "
                        f"(or memory_per_class with fixed_memory)"
                    ) from None
                order = herding_order(features, kept)  # the memory keeps this prefix, in this order
                self._cim_sources[class_idx] = source[order]
                self._cim_cams[class_idx] = self._cim_last_cams[order[:CAMS_KEPT]].half()
                log.debug("CIM memory: class %d keeps %d exemplars (%d bytes budget)", class_idx, kept, budget)
            memory.check_budget()
            counts = memory.counts()
            for label in list(self._cim_sources):
                self._cim_sources[label] = self._cim_sources[label][: counts.get(label, 0)]
            self._class_means = self._memory_class_means()
        finally:
            for module, flag in was_training.items():
                module.train(flag)

    # -- memory ------------------------------------------------------------------------------
    def _class_budget(self) -> int:
        """Bytes one class may hold now: PyCIL's per-class share of the memory, in bytes."""
        if self._fixed_memory:
            return int(self._memory_per_class) * self._cim_image_bytes
        return int(self._memory_size) * self._cim_image_bytes // self._total_classes

    def _budget_bytes(self) -> int:
        if self._fixed_memory:
            return int(self._memory_per_class) * self._total_classes * self._cim_image_bytes
        return int(self._memory_size) * self._cim_image_bytes

    @staticmethod
    def _class_items(dm, class_idx):
        idx = np.where(dm._train_targets == class_idx)[0]
        data = dm._train_data
        return data[idx] if isinstance(data, np.ndarray) else [data[i] for i in idx]

    def _forward_chunks(self, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256):
        """Features (N, D) and CIL-model CAMs (N, H, W) for stored uint8 images, without grad."""
        network = self._network
        feats, cams = [], []
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                x = self._cim_pipeline.to_input(images[start : start + chunk], self._device)
                fmaps, features, weight = fmaps_and_features(network, x)
                y = labels[start : start + chunk].to(self._device)
                cams.append(cam_from_feature_maps(fmaps, weight, y, out_size=tuple(x.shape[-2:])).cpu())
                feats.append(features.cpu())
        return torch.cat(feats), torch.cat(cams)

    def _features_and_boxes(self, images: torch.Tensor, labels: torch.Tensor, need_features: bool = True):
        """Herding features (N, D) (None unless `need_features`) and the boxes (N, 4) of the configured mask
        mode, for stored uint8 images (N, 3, H, W)."""
        mode = self._cim_cfg["cim_mask"]
        learned = None
        if mode == "cim" and self._cim_branch is not None:
            learned = self._branch_cams(images, labels)
        features = cams = None
        if need_features or learned is None:
            features, cams = self._forward_chunks(images, labels)
        if learned is not None:
            # A learned CAM that carries no location (constant or non-finite) falls back to the CIL
            # model's CAM for that image, rather than to a whole-image box.
            flat = learned.flatten(1)
            bad = (~(torch.isfinite(flat).all(1) & ((flat.amax(1) - flat.amin(1)) > 0))).nonzero().squeeze(1)
            learned = learned.nan_to_num(0.0)
            if bad.numel():
                learned[bad] = cams[bad] if cams is not None else self._forward_chunks(images[bad], labels[bad])[1]
            cams = learned
        boxes = cam_to_boxes(cams, self._cim_cfg["mask_threshold"])
        H, W = images.shape[-2:]
        if mode in ("random", "center"):
            fraction = float(box_area_fraction(boxes, H, W).mean())
            boxes = (random_boxes(len(images), H, W, fraction, generator=self._cim_generator)
                     if mode == "random" else center_boxes(len(images), H, W, fraction))
        self._cim_last_cams = cams
        return features, boxes

    def _memory_class_means(self) -> np.ndarray:
        """L2-normalised class means (total_classes, D) of decoded exemplars (PyCIL's NME)."""
        memory = self._cim_memory
        means = np.zeros((self._total_classes, self.feature_dim))
        labels = memory.labels
        for class_idx in range(self._total_classes):
            idx = (labels == class_idx).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            images = memory.decode(idx)
            features, _ = self._forward_chunks(images, labels[idx])
            vectors = F.normalize(features.double(), dim=1)
            mean = vectors.mean(0)
            means[class_idx] = (mean / mean.norm()).numpy()
        return means

    # -- per-epoch hook ----------------------------------------------------------------------
    def _cim_on_epoch(self):
        """Before each epoch: the mask model's meta steps (CIM mode), then, on schedule, refresh the
        boxes of the new-class images and raise the compression-augmentation probability. Runs on the
        host's random streams without moving them (see `rng`)."""
        if self._cim_paused:
            return
        with random_streams_untouched():
            self._cim_on_epoch_untouched()

    def _cim_on_epoch_untouched(self):
        epoch = self._cim_epoch
        self._cim_epoch += 1
        self._cim_meta_lr = self._cim_epoch_lr  # meta steps now follow the epoch just trained, at its lr
        self._cim_epoch_lr = self._cim_current_lr()
        if self._cim_phase_lr0 is None:
            self._cim_phase_lr0 = self._cim_epoch_lr
        dataset = self._cim_train_new
        if dataset is None:
            return
        dataset.salt = epoch
        if self._cim_cfg["cim_mask"] == "cim" and epoch > 0:
            self._cim_meta_steps(dataset)
        interval = self._cim_cfg["cam_update_interval"]
        if epoch == 0 or epoch % interval:
            return
        network = unwrap(self._network)
        was_training = {m: m.training for m in network.modules()}
        network.eval()
        try:
            with self._cim_timed("box_refresh"):
                images = self._cim_pipeline.load_many(dataset.images)
                labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)
                _, boxes = self._features_and_boxes(images, labels, need_features=False)
        finally:
            for module, flag in was_training.items():
                module.train(flag)
        dataset.boxes = boxes
        dataset.prob = min(1.0, self._cim_cfg["randombbxblur_prob_incre"] * (epoch // interval))

    # -- the adaptive mask model (SPEC steps 6-7) ----------------------------------------------
    def _cim_configured_lr(self) -> float:
        """The phase's initial CIL learning rate as configured (used when no optimiser is visible)."""
        names = ("init_lr",) if self._cur_task == 0 else ("lrate", "lr")
        for name in names:
            if name in self.args:
                return float(self.args[name])
            for module in learner_modules(type(self)):
                if isinstance(getattr(module, name, None), (int, float)):
                    return float(getattr(module, name))
        return 0.1

    def _cim_current_lr(self) -> float:
        """The CIL optimiser's current learning rate (after the scheduler's steps so far)."""
        if self._cim_cil_optimizer is not None:
            return float(self._cim_cil_optimizer.param_groups[0]["lr"])
        return self._cim_configured_lr()

    def _cim_phi_weight_decay(self) -> float:
        if self._cim_cil_optimizer is not None:
            return float(self._cim_cil_optimizer.param_groups[0].get("weight_decay", PHI_WEIGHT_DECAY))
        return PHI_WEIGHT_DECAY

    def _ensure_branch(self, x: torch.Tensor) -> CIMBranch:
        """The CIM branch with one PAU per ReLU site of the current network, and the phase's φ optimiser.

        At the first call of a phase: PAUs are added for the sites of a new backbone and, as the official
        code (a new backbone is a copy of the previous one, PAUs included), start as a copy of the
        previous backbone's PAUs; φ's Adam is made anew with the CIL optimiser's weight decay."""
        if self._cim_branch is not None and self._cim_branch_task == self._cur_task \
                and self._cim_phi_optimizer is not None:
            return self._cim_branch
        if self._cim_branch is None:
            self._cim_branch = CIMBranch()
        branch = self._cim_branch
        with torch.no_grad():
            sites = count_relu_sites(FmapView(self._network), x[:2])
        net = unwrap(self._network)
        backbones = len(net.convnets) if hasattr(net, "convnets") else 1
        branch.grow_to(sites, device=x.device)
        if self._cim_branch_task != self._cur_task and backbones >= 2 and sites % backbones == 0:
            copy_block(branch, sites // backbones, src=backbones - 2, dst=backbones - 1)
        branch.to(x.device)
        self._cim_phi_optimizer = torch.optim.Adam(branch.parameters(), lr=self._cim_cfg["phi_lr"],
                                                   weight_decay=self._cim_phi_weight_decay())
        self._cim_branch_task = self._cur_task
        return branch

    def _cim_inner_loss(self, out: Dict[str, Any], y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The learner's own training loss of this phase on the hybrid input (see inner_losses)."""
        return self._cim_inner_loss_fn(self, out, y, x)

    def _branch_mask(self, network, branch, x, y):
        out = branch(FmapView(network), x)
        return cam_of_output(out, y, x.shape[-2:]), out["logits"]

    def _cim_meta_steps(self, dataset: "CompressAugmentDataset") -> None:
        """`num_meta_iters_per_cls` x new classes bilevel steps on batches of new data and memory."""
        with self._cim_timed("meta_steps"):
            self._cim_meta_steps_untimed(dataset)

    def _cim_meta_dataset(self, dataset: "CompressAugmentDataset") -> Dataset:
        """The official train-val set: new-class images (not compression-augmented) and the decoded
        memory, both through the training transforms. Made once per phase."""
        if self._cim_meta_source is None:
            base = dataset.base
            parts = [base]
            if self._cim_memory is not None and len(self._cim_memory):
                memory = self._cim_train_memory  # the loader's decoded memory (train transforms), if built
                parts.append(memory if memory is not None and memory.memory is self._cim_memory
                             else ExemplarDataset(self._cim_memory, base.trsf))
            self._cim_meta_source = _Concat(parts) if len(parts) > 1 else base
        return self._cim_meta_source

    def _cim_meta_batch(self, source: Dataset, pick: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Items `pick` of the train-val set as (x float (B, 3, H, W) on the device, y long (B,))."""
        items = [source[i] for i in pick.tolist()]
        x = torch.stack([item[1] for item in items]).to(self._device)
        y = torch.as_tensor([int(item[2]) for item in items], dtype=torch.long, device=self._device)
        return x, y

    def _cim_meta_steps_untimed(self, dataset: "CompressAugmentDataset") -> None:
        cfg = self._cim_cfg
        n_new = self._total_classes - self._known_classes
        iters = max(1, math.ceil(cfg["num_meta_iters_per_cls"] * n_new))
        batch = cfg["meta_batch_size"]
        source = self._cim_meta_dataset(dataset)
        network = unwrap(self._network)
        lr = self._cim_meta_lr if self._cim_meta_lr is not None else self._cim_current_lr()
        lr0 = self._cim_phase_lr0 or lr
        for _ in range(iters):
            pick = torch.randperm(len(source), generator=self._cim_generator)[: 2 * batch]
            half = len(pick) // 2
            if half == 0:
                return
            x, y = self._cim_meta_batch(source, pick[: 2 * half])
            x_in, x_out = x[:half], x[half:]
            branch = self._ensure_branch(x_in)
            for group in self._cim_phi_optimizer.param_groups:  # φ follows the CIL schedule
                group["lr"] = cfg["phi_lr"] * (lr / lr0 if lr0 > 0 else 1.0)
            stats = meta_step(
                network=network, branch=branch, phi_optimizer=self._cim_phi_optimizer,
                x_inner=x_in, y_inner=y[:half], x_inner_degraded=degrade(x_in, cfg["compress_ratio"]),
                x_outer=x_out, y_outer=y[half:], mask_fn=self._branch_mask,
                logits_fn=lambda out: out["logits"], inner_loss_fn=self._cim_inner_loss,
                fast_weight_filter=is_fast_weight,
                lr=lr, lr_ratio=cfg["lr_ratio"], div_coef=cfg["div_coef"], reg_coef=cfg["reg_coef"],
                max_phi_grad_norm=cfg["max_phi_grad_norm"],
            )
            stats["memory_items"] = float((pick[: 2 * half] >= len(dataset.base)).sum())
            self._cim_meta_log.append(stats)

    def _branch_cams(self, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """CAMs (N, H, W) of the CIM branch (the learned masks) for stored uint8 images."""
        cams = []
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                x = self._cim_pipeline.to_input(images[start : start + chunk], self._device)
                branch = self._ensure_branch(x)
                y = labels[start : start + chunk].to(self._device)
                cams.append(self._branch_mask(unwrap(self._network), branch, x, y)[0].cpu())
        return torch.cat(cams)

    # -- reporting ---------------------------------------------------------------------------
    def cim_save_artifacts(self, out_dir) -> None:
        """memory.pt (the compressed memory, real bytes) and exemplars.pt (where each came from)."""
        from pathlib import Path

        out_dir = Path(out_dir)
        memory = self._cim_memory
        memory.save(out_dir / "memory.pt")
        labels = memory.labels
        source = torch.full((len(memory),), -1, dtype=torch.long)
        cam_index, cams = [], []
        for label, src in self._cim_sources.items():
            pos = (labels == label).nonzero().squeeze(1)[: len(src)]
            source[pos] = src[: len(pos)]
            kept = self._cim_cams.get(label)
            if kept is not None:
                k = min(len(kept), len(pos))
                cam_index.append(pos[:k])
                cams.append(kept[:k])
        payload = {
            "labels": labels.clone(), "source_index": source, "boxes": memory.boxes.long().clone(),
            "cam_index": torch.cat(cam_index) if cam_index else torch.zeros(0, dtype=torch.long),
            "cams": torch.cat(cams) if cams else None,
        }
        from .checkpoint import save

        save(out_dir / "exemplars.pt", payload)

    def cim_memory_report(self) -> Dict[str, Any]:
        memory = self._cim_memory
        counts = torch.bincount(memory.labels, minlength=self._total_classes)[: self._total_classes]
        sizes = memory.sizes.double()
        areas = (memory.boxes[:, 2] - memory.boxes[:, 0]).double() * (memory.boxes[:, 3] - memory.boxes[:, 1]).double()
        full = sizes[:, 0] * sizes[:, 1]
        return {
            "exemplars": len(memory),
            "memory_bytes": int(memory.nbytes),
            "memory_budget_bytes": self._budget_bytes(),
            "image_bytes": self._cim_image_bytes,
            "exemplars_per_class": {"min": int(counts.min()), "mean": float(counts.double().mean()),
                                    "max": int(counts.max())},
            "exemplars_per_class_counts": [int(c) for c in counts],
            "mean_box_fraction": float((areas / full).mean()),
            "mean_exemplar_cost": float((memory.exemplar_nbytes().double() / (3 * full)).mean()),
            "cim_mask": self._cim_cfg["cim_mask"],
            "meta_steps": len(self._cim_meta_log),
            "mask_mean": (float(np.mean([m["mask_mean"] for m in self._cim_meta_log]))
                          if self._cim_meta_log else None),
            "seconds": {k: round(v, 3) for k, v in self._cim_seconds.items()},
            "calls": dict(self._cim_calls),
        }


def cim_learner_class(base_cls, args: Dict[str, Any]):
    """`base_cls` with CIMMixin in front; ConfigError for learners that keep no memory."""
    name = args["model_name"].lower()
    if not keeps_memory(base_cls):
        raise ConfigError(
            f'learner "{name}" keeps no exemplar memory, so CIM has nothing to compress; remove "cim": true '
            f"or use a rehearsal learner ({', '.join(SUPPORTED)})"
        )
    if name not in SUPPORTED:
        raise ConfigError(
            f'"cim": true is not supported for learner "{name}" yet (its memory flow is untested with the plug-in); '
            f"supported: {', '.join(SUPPORTED)}"
        )
    cls = type(f"CIM{base_cls.__name__}", (CIMMixin, base_cls), {})
    for loop in TRAIN_LOOPS:
        if hasattr(base_cls, loop):
            setattr(cls, loop, _optimiser_capturing(cls, loop))
    return cls


def _optimiser_capturing(cls, name: str):
    """`cls.name` that records the CIL optimiser it is given (the first torch Optimizer argument), then
    runs the learner's own loop."""

    def loop(self, *args, **kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.optim.Optimizer):
                self._cim_cil_optimizer = value
                break
        return getattr(super(cls, self), name)(*args, **kwargs)

    loop.__name__ = name
    return loop
