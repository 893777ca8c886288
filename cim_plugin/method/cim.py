"""CIM as one object that a training loop drives: the configuration, the compressed memory, the mask
branch (PAUs φ) with its optimiser, and the schedules (meta steps, box refreshes, compression
augmentation). It never sees a framework: it is given a network, stored images (uint8) and labels.

A phase, from the host loop's side: :meth:`CIM.start_phase`, :meth:`CIM.augmented` (new-class data) and
:meth:`CIM.replay` (decoded exemplars), :meth:`CIM.before_epoch` before each epoch of the host's own training,
:meth:`CIM.build_memory` after it, :meth:`CIM.report`; ``examples/plain_torch.py`` is a whole loop.

The network is seen through ``view(network)``: a module ``x -> {"logits" (B, K), "fmaps" [(B, C, h, w), ...]
(the last feature map of each backbone), "features" (B, D), "weight" (K, D) classifier rows}`` whose
forward makes the network's ReLU calls (the branch replaces them by PAUs). ``network(x)`` itself is the
θ of the inner step; ``logits_fn(network(x))`` its logits. CIM's own work never moves the host's random
streams (:func:`~cim_plugin.method.rng.random_streams_untouched`); its draws come from ``self.generator``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from .codec import degrade
from .data import CompressAugmentDataset, Concat, ExemplarDataset
from .defaults import CIM_DEFAULTS
from .herding import herding_order
from .masks import (
    CIMBranch,
    box_area_fraction,
    cam_from_feature_maps,
    cam_to_boxes,
    center_boxes,
    count_relu_sites,
    meta_step,
    random_boxes,
)
from .memory import CompressedMemory, augment_compressor, decoding_on, get_codec, make_memory, memory_from_state
from .memory.records import class_means, exemplar_record, phase_report
from .network import cam_of_output, copy_block, default_logits, default_to_input, evaluating, is_fast_weight
from .rng import random_streams_untouched
from .schedule import augment_probability, phase_cam_interval, refresh_due
from .timing import codec_seconds, timed

__all__ = ["CIM", "BudgetTooSmall", "CIM_KEYS", "PHI_WEIGHT_DECAY"]

CIM_KEYS = tuple(k for k in CIM_DEFAULTS if k != "cim")  # what CIM reads from a config
CAMS_KEPT = 4  # CAMs kept per class for the exemplar figure
PHI_WEIGHT_DECAY = 5e-4  # φ's weight decay when the host gives none (official default)
HOST_CALLABLES = ("view", "to_input", "inner_loss", "logits_fn")  # given by the host, never pickled


class BudgetTooSmall(ValueError):
    """A class's share of the budget cannot hold one exemplar."""


class CIM:
    """Class-Incremental exemplar compression, framework-free. See the module docstring for a phase.

    One JPEG decoder per run, whatever ``device``: JPEG exemplars decode with libjpeg on the CPU
    (:attr:`decode_device`), as the compression augmentation and ``"jpeg_quality": "auto"`` do, so the
    augmentation shows the look the memory replays and a run's pixels do not depend on the device it ran or
    resumed on (nvJPEG's IDCT and chroma upsampling differ from libjpeg's); CUDA also stays out of loader
    workers. Results name it (``jpeg_decoder``).

    Args:
        config: CIM keys (``CIM_KEYS``, defaults ``cim_plugin.method.defaults.CIM_DEFAULTS``); other keys ignored.
        seed: seeds CIM's own generator (meta batches, random boxes) and the augmentation coins.
        view, to_input, inner_loss, logits_fn: how CIM sees the host (also settable per phase in
            :meth:`start_phase`): ``view(network)`` (above; default the network itself), ``to_input(uint8
            images) -> float input on the device`` (default /255), ``inner_loss(out, y, x) -> scalar`` the
            host's training loss for the inner step (default CE), ``logits_fn(out)``.
        device: where network inputs go.
    """

    decode_device = "cpu"

    def __init__(self, config: Optional[Mapping[str, Any]] = None, *, seed: int = 0, view: Optional[Callable] = None,
                 to_input: Optional[Callable] = None, inner_loss: Optional[Callable] = None,
                 logits_fn: Callable = default_logits, device="cpu",
                 fast_weight_filter: Callable[[str], bool] = is_fast_weight):
        given = dict(config or {})
        self.config = {k: given.get(k, CIM_DEFAULTS[k]) for k in CIM_KEYS}
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.view, self.to_input, self.inner_loss, self.logits_fn = view, to_input, inner_loss, logits_fn
        self.device, self.fast_weight_filter = device, fast_weight_filter
        self.memory: Optional[CompressedMemory] = None
        self.image_bytes: Optional[int] = None  # bytes of one full stored image (3·H·W)
        self.branch: Optional[CIMBranch] = None  # the adaptive mask model (PAUs, φ)
        self.phi_optimizer: Optional[torch.optim.Optimizer] = None  # made anew every phase
        self.branch_task = -1
        self.phi_weight_decay = PHI_WEIGHT_DECAY
        self.sources: Dict[int, torch.Tensor] = {}  # class -> source indices of its exemplars, memory order
        self.cams: Dict[int, torch.Tensor] = {}  # class -> CAMs of its first exemplars (for figures)
        self.last_cams: Optional[torch.Tensor] = None
        self.replica = None  # a replicas.Replicas under data parallelism: meta batches shared, φ's grads averaged
        self.scaled_intervals_warned: set = set()  # (interval, epochs) pairs already warned about
        self.start_phase(-1, 0, 0, 0)

    # -- phases ------------------------------------------------------------------------------
    def start_phase(self, task: int, known_classes: int, total_classes: int, budget_images: int,
                    class_budget_images: Optional[int] = None, epochs: Optional[int] = None, **host) -> None:
        """A new phase learns classes [known_classes, total_classes) with ``budget_images`` full images' bytes
        in all, a class ``class_budget_images`` (default an equal share); ``epochs`` (when known) scales a too
        long ``cam_update_interval`` (:mod:`.schedule`); ``host``: view, to_input, inner_loss, logits_fn, device."""
        for key, value in host.items():
            if key not in HOST_CALLABLES + ("device",):
                raise TypeError(f"start_phase got an unexpected keyword {key!r}")
            setattr(self, key, value)
        if getattr(self, "memory", None) is not None:  # a restored memory may hold the writer's device
            self.memory = decoding_on(self.memory, self.decode_device)
        self.task, self.known, self.total, self.epoch = int(task), int(known_classes), int(total_classes), 0
        self.budget_images, self.class_budget_images = budget_images, class_budget_images
        self.train_new: Optional[CompressAugmentDataset] = None
        self.train_memory: Optional[ExemplarDataset] = None  # the phase loader's decoded memory
        self.meta_source: Optional[Dataset] = None  # new data + decoded memory, train transforms
        self.meta_log: List[Dict[str, float]] = []
        self.phi_optimizer = None  # φ's Adam is made anew each phase (as the official code)
        self.epoch_lr = self.phase_lr0 = self.meta_lr = None  # lr of: this epoch, the first, the last trained
        self.seconds = {"meta_steps": 0.0, "box_refresh": 0.0, "memory_build": 0.0, "meta_after_training": 0.0}
        self.calls = {key: 0 for key in self.seconds}
        self.codec_start = codec_seconds(self.memory) if getattr(self, "memory", None) is not None else 0.0
        self.cam_interval = phase_cam_interval(int(self.config["cam_update_interval"]), epochs,
                                               self.scaled_intervals_warned)

    def budget_bytes(self) -> int:
        return int(self.budget_images) * self.image_bytes

    def class_budget_bytes(self) -> int:
        """A class's byte share, less its part of what the memory holds once (JPEG tables)."""
        shared = -(-self.memory.shared_nbytes // self.total) if self.memory is not None else 0
        if self.class_budget_images is not None:
            return int(self.class_budget_images) * self.image_bytes - shared
        return int(self.budget_images) * self.image_bytes // self.total - shared

    # -- data --------------------------------------------------------------------------------
    def augmented(self, dataset, loader) -> CompressAugmentDataset:
        """This phase's new-class training data with CIM's compression augmentation (see
        :class:`CompressAugmentDataset`); CIM refreshes its boxes and probability on schedule."""
        self.train_new = CompressAugmentDataset(dataset, loader, self.config["compress_ratio"],
                                                seed=self.seed * 1009 + self.task, floor=self.config["codec_augment_prob"],
                                                compress_fn=augment_compressor(self.config, self.memory))
        return self.train_new

    def replay(self, trsf, training: bool = True) -> Optional[ExemplarDataset]:
        """The memory's exemplars, decoded once, through ``trsf`` (None while empty). ``training``: this
        is the phase's training replay, which the meta batches reuse."""
        if self.memory is None or len(self.memory) == 0:
            return None
        dataset = ExemplarDataset(self.memory, trsf)
        if training:
            self.train_memory = dataset
        return dataset

    # -- epochs ------------------------------------------------------------------------------
    def before_epoch(self, network: nn.Module, *, lr: float, weight_decay: float = PHI_WEIGHT_DECAY) -> None:
        """Before each epoch (``lr``: the host optimiser's lr for it): the mask model's meta steps (mask mode
        "cim", from the second epoch on, at the lr of the epoch just trained), then every
        ``cam_update_interval`` epochs new boxes for the new-class images and a higher augmentation
        probability. ``weight_decay``: that of the host optimiser, for φ's Adam."""
        with random_streams_untouched():
            epoch = self.epoch
            self.epoch += 1
            self.meta_lr, self.epoch_lr = self.epoch_lr, lr
            if self.phase_lr0 is None:
                self.phase_lr0 = self.epoch_lr
            self.phi_weight_decay = weight_decay
            dataset = self.train_new
            if dataset is None:
                return
            dataset.salt = epoch
            if self.config["cim_mask"] == "cim" and epoch > 0:
                self._meta_steps(network, dataset, lr)
            interval = self.cam_interval
            if not refresh_due(epoch, interval):
                return
            with self._timed("box_refresh"), evaluating(network):
                images = dataset.stored_images()
                labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.long)
                _, boxes = self._features_and_boxes(network, images, labels, need_features=False)
            dataset.boxes = boxes
            dataset.prob = augment_probability(epoch, interval, self.config["randombbxblur_prob_incre"])

    # -- the memory --------------------------------------------------------------------------
    def build_memory(self, network: nn.Module, classes: Iterable[Tuple[int, torch.Tensor, torch.Tensor]], *,
                     lr: float, weight_decay: float = PHI_WEIGHT_DECAY) -> np.ndarray:
        """After the last epoch: the last round of meta steps, then, per new class ``(label, stored uint8
        images (N, 3, H, W), source indices (N,))``, herding over compressed candidates into the class's
        byte share. Returns the L2-normalised class means (total_classes, D) of the decoded exemplars (NME)."""
        self.phi_weight_decay = weight_decay
        with random_streams_untouched():
            if self.config["cim_mask"] == "cim" and self.train_new is not None:  # at the last epoch's lr
                self.meta_lr = self.epoch_lr  # outside the learner's loop: timed apart too (also in meta_steps)
                with self._timed("meta_after_training"):
                    self._meta_steps(network, self.train_new, lr)
            with self._timed("memory_build"), evaluating(network):
                return self._build_memory(network, classes)

    def _build_memory(self, network: nn.Module, classes) -> np.ndarray:
        codec = get_codec(self.config["exemplar_codec"])
        if self.memory is None and codec.auto_quality(self.config):
            classes = self._choose_quality(network, list(classes), codec)
        for k, (label, images, source) in enumerate(classes):
            if self.memory is None:
                self.image_bytes = 3 * int(images.shape[-2]) * int(images.shape[-1])
                self.memory = make_memory(self.budget_bytes(), self.config, self.decode_device)
            memory = self.memory
            budget = self.class_budget_bytes()
            if k == 0:
                memory.budget_bytes = self.budget_bytes()  # grows with the classes under a per-class budget
                memory.reduce(budget)
            labels = torch.full((len(images),), label, dtype=torch.long)
            # Herding ranks the compressed candidates (what is stored is what is herded), as the
            # official code: boxes first, then features of the decoded images (raw or JPEG).
            _, boxes = self._features_and_boxes(network, images, labels, need_features=False)
            features, _ = self._forward_chunks(network, memory.compressed(images, boxes), labels)
            try:
                kept = memory.select_class(images, features, boxes, label, budget, replace=True)
            except ValueError as err:
                raise BudgetTooSmall(f"memory budget too small: {err}. The budget is {self.budget_images} images' "
                                     f"bytes ({self.image_bytes} B each) shared by {self.total} classes") from None
            order = herding_order(features, kept)  # the memory keeps this prefix, in this order
            self.sources[label] = source[order]
            if self.last_cams is not None:  # none in mask mode "full"
                self.cams[label] = self.last_cams[order[:CAMS_KEPT]].half()
        self.memory.check_budget()
        counts = self.memory.counts()
        for label in list(self.sources):
            self.sources[label] = self.sources[label][: counts.get(label, 0)]
        return self._class_means(network)

    def _choose_quality(self, network: nn.Module, classes: List, codec) -> List:
        """An "auto" quality (``"jpeg_quality": "auto"``): the codec's choice on the first phase's model (JPEG: MRDC's,
        :func:`cim_plugin.method.memory.jpeg.choose_quality`), then the memory."""
        self.image_bytes = 3 * int(classes[0][1].shape[-2]) * int(classes[0][1].shape[-1])
        boxed = [(c, im, self._features_and_boxes(network, im, torch.full((len(im),), c), False)[1])
                 for c, im, _ in classes]
        self.jpeg_auto = codec.choose_quality(boxed, self.class_budget_bytes(), self.total, self.config,
                                              lambda x, y: self._forward_chunks(network, x, y)[0])
        config = {**self.config, codec.quality_key: self.jpeg_auto["quality"]}
        self.memory = make_memory(self.budget_bytes(), config, self.decode_device)
        return classes

    def _class_means(self, network: nn.Module) -> np.ndarray:
        """L2-normalised class means (total_classes, D) of decoded exemplars (float64; zeros for none)."""
        return class_means(self.memory, self.total, lambda x, y: self._forward_chunks(network, x, y)[0])

    def _forward_chunks(self, network: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256):
        """Features (N, D) and the network's CAMs (N, H, W) for stored uint8 images, without grad."""
        view = self.view(network) if self.view is not None else network
        feats, cams = [], []
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                x = self._input(images[start : start + chunk])
                out = view(x)
                y = labels[start : start + chunk].to(self.device)
                cams.append(cam_from_feature_maps(out["fmaps"], out["weight"], y, out_size=tuple(x.shape[-2:])).cpu())
                feats.append(out["features"].cpu())
        return torch.cat(feats), torch.cat(cams)

    def _features_and_boxes(self, network: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            need_features: bool = True):
        """Herding features (N, D) (None unless `need_features`) and the boxes (N, 4) of the configured mask
        mode, for stored uint8 images (N, 3, H, W)."""
        mode = self.config["cim_mask"]
        if mode == "full":  # whole-image boxes, no CAM: the baseline's images (raw) or MRDC (jpeg)
            self.last_cams, box = None, torch.tensor([[0, 0, images.shape[-1], images.shape[-2]]])
            features = self._forward_chunks(network, images, labels)[0] if need_features else None
            return features, box.repeat(len(images), 1)
        learned = None
        if mode == "cim" and self.branch is not None:
            learned = self._branch_cams(network, images, labels)
        features = cams = None
        if need_features or learned is None:
            features, cams = self._forward_chunks(network, images, labels)
        if learned is not None:
            # A learned CAM that carries no location (constant or non-finite) falls back to the network's
            # CAM for that image, rather than to a whole-image box.
            flat = learned.flatten(1)
            bad = (~(torch.isfinite(flat).all(1) & ((flat.amax(1) - flat.amin(1)) > 0))).nonzero().squeeze(1)
            learned = learned.nan_to_num(0.0)
            if bad.numel():
                learned[bad] = cams[bad] if cams is not None else self._forward_chunks(network, images[bad],
                                                                                       labels[bad])[1]
            cams = learned
        boxes = cam_to_boxes(cams, self.config["mask_threshold"])
        H, W = images.shape[-2:]
        if mode in ("random", "center"):
            fraction = float(box_area_fraction(boxes, H, W).mean())
            boxes = (random_boxes(len(images), H, W, fraction, generator=self.generator)
                     if mode == "random" else center_boxes(len(images), H, W, fraction))
        self.last_cams = cams
        return features, boxes

    # -- the adaptive mask model (CIM steps 6-7) ----------------------------------------------
    def _ensure_branch(self, network: nn.Module, x: torch.Tensor) -> CIMBranch:
        """The CIM branch with one PAU per ReLU site of the current network, and the phase's φ optimiser.

        At the first call of a phase: PAUs are added for the sites of a new backbone and, as the official
        code (a new backbone is a copy of the previous one, PAUs included), start as a copy of the
        previous backbone's PAUs; φ's Adam is made anew with the host optimiser's weight decay."""
        if self.branch is not None and self.branch_task == self.task and self.phi_optimizer is not None:
            return self.branch
        if self.branch is None:
            self.branch = CIMBranch()
        branch = self.branch
        view = self.view(network) if self.view is not None else network
        with torch.no_grad():
            sites = count_relu_sites(view, x[:2])
        backbones = int(getattr(view, "num_backbones", 1))
        shared = int(view.shared_sites(x[:2])) if hasattr(view, "shared_sites") else 0  # MEMO's shared blocks
        branch.grow_to(sites, device=x.device)
        if self.branch_task != self.task and backbones >= 2 and (sites - shared) % backbones == 0:
            copy_block(branch, (sites - shared) // backbones, src=backbones - 2, dst=backbones - 1, offset=shared)
        branch.to(x.device)
        self.phi_optimizer = torch.optim.Adam(branch.parameters(), lr=self.config["phi_lr"],
                                              weight_decay=self.phi_weight_decay)
        self.branch_task = self.task
        return branch

    def _inner_loss(self, out, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The host's training loss on the hybrid input (default: CE on the logits)."""
        if self.inner_loss is None:
            return F.cross_entropy(self.logits_fn(out), y)
        return self.inner_loss(out, y, x)

    def _branch_mask(self, network, branch, x, y):
        out = branch(self.view(network) if self.view is not None else network, x)
        return cam_of_output(out, y, x.shape[-2:]), out["logits"]

    def _meta_dataset(self, dataset: CompressAugmentDataset) -> Dataset:
        """The official train-val set: new-class images (not compression-augmented) and the decoded
        memory, both through the training transforms. Made once per phase."""
        if self.meta_source is None:
            base = dataset.base
            parts = [base]
            if self.memory is not None and len(self.memory):
                memory = self.train_memory  # the loader's decoded memory (train transforms), if built
                parts.append(memory if memory is not None and memory.memory is self.memory
                             else ExemplarDataset(self.memory, base.trsf))
            self.meta_source = Concat(parts) if len(parts) > 1 else base
        return self.meta_source

    def _meta_batch(self, source: Dataset, pick: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Items `pick` of the train-val set as (x float (B, 3, H, W) on the device, y long (B,))."""
        items = [source[i] for i in pick.tolist()]
        x = torch.stack([item[1] for item in items]).to(self.device)
        y = torch.as_tensor([int(item[2]) for item in items], dtype=torch.long, device=self.device)
        return x, y

    def _meta_steps(self, network: nn.Module, dataset: CompressAugmentDataset, lr_now: float) -> None:
        """`num_meta_iters_per_cls` x new classes bilevel steps on batches of new data and memory."""
        with self._timed("meta_steps"):
            cfg = self.config
            iters = max(1, int(cfg["num_meta_iters_per_cls"] * (self.total - self.known)))  # official int(), at least 1
            batch = cfg["meta_batch_size"]
            source = self._meta_dataset(dataset)
            lr = self.meta_lr if self.meta_lr is not None else lr_now
            lr0 = self.phase_lr0 or lr
            for _ in range(iters):
                pick = torch.randperm(len(source), generator=self.generator)[: 2 * batch]
                half = len(pick) // 2
                if half == 0:
                    return
                inner, outer = pick[:half], pick[half : 2 * half]
                if self.replica is not None:  # this replica's share of both halves
                    inner, outer = self.replica.share(inner), self.replica.share(outer)
                chosen, half = torch.cat([inner, outer]), len(inner)
                x, y = self._meta_batch(source, chosen)
                x_in, x_out = x[:half], x[half:]
                branch = self._ensure_branch(network, x_in)
                follow = cfg.get("phi_lr_schedule", "host") == "host"  # φ follows the host's lr schedule
                for group in self.phi_optimizer.param_groups:
                    group["lr"] = cfg["phi_lr"] * (lr / lr0 if follow and lr0 > 0 else 1.0)
                stats = meta_step(
                    network=network, branch=branch, phi_optimizer=self.phi_optimizer,
                    x_inner=x_in, y_inner=y[:half], x_inner_degraded=degrade(x_in, cfg["compress_ratio"]),
                    x_outer=x_out, y_outer=y[half:], mask_fn=self._branch_mask,
                    logits_fn=self.logits_fn, inner_loss_fn=self._inner_loss,
                    fast_weight_filter=self.fast_weight_filter,
                    lr=lr, lr_ratio=cfg["lr_ratio"], div_coef=cfg["div_coef"], reg_coef=cfg["reg_coef"],
                    max_phi_grad_norm=cfg["max_phi_grad_norm"],
                    grad_through_mask=bool(cfg.get("inner_grad_through_mask", False)),
                    grad_reduce=None if self.replica is None else self.replica.average,
                )
                stats["memory_items"] = float((chosen >= len(dataset.base)).sum())
                stats["phi_lr"] = float(self.phi_optimizer.param_groups[0]["lr"])
                self.meta_log.append(stats)

    def _branch_cams(self, network: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     chunk: int = 256) -> torch.Tensor:
        """CAMs (N, H, W) of the CIM branch (the learned masks) for stored uint8 images."""
        cams = []
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                x = self._input(images[start : start + chunk])
                branch = self._ensure_branch(network, x)
                y = labels[start : start + chunk].to(self.device)
                cams.append(self._branch_mask(network, branch, x, y)[0].cpu())
        return torch.cat(cams)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return (self.to_input or default_to_input)(images).to(self.device)

    def _timed(self, key: str):
        """Adds the wall seconds of the block to ``seconds[key]`` and one to ``calls[key]``."""
        return timed(self.seconds, self.calls, key, self.device)

    # -- reporting and state -----------------------------------------------------------------
    def report(self) -> Dict[str, Any]:
        """The memory after a phase (exemplars, real bytes held, budget, box areas) and CIM's own work."""
        return phase_report(self)

    def exemplar_record(self) -> Dict[str, Any]:
        """Where each exemplar came from: labels, source index, box, and the CAMs kept for figures."""
        return exemplar_record(self.memory, self.sources, self.cams)

    def state_dict(self) -> Dict[str, Any]:
        """What carries over between phases, as tensors, numbers and dicts (``torch.save``-able)."""
        return {"config": dict(self.config), "seed": self.seed, "generator": self.generator.get_state(),
                "memory": None if self.memory is None else self.memory.state_dict(),
                "image_bytes": self.image_bytes, "task": self.task, "branch_task": self.branch_task,
                "branch": None if self.branch is None else {
                    "state": self.branch.state_dict(), "fit_range": self.branch.fit_range,
                    "zero_at_zero": self.branch.zero_at_zero},
                "sources": dict(self.sources), "cams": dict(self.cams)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config, self.seed = dict(state["config"]), int(state["seed"])
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        self.memory = None if state["memory"] is None else memory_from_state(state["memory"], self.decode_device)
        self.image_bytes, self.task, self.branch_task = state["image_bytes"], state["task"], state["branch_task"]
        self.branch = None
        if state["branch"] is not None:
            b = state["branch"]
            self.branch = CIMBranch(fit_range=b["fit_range"], zero_at_zero=b["zero_at_zero"])
            self.branch.load_state_dict(b["state"])
            self.branch.to(next(iter(b["state"].values())).device if b["state"] else "cpu")
        self.sources, self.cams = dict(state["sources"]), dict(state["cams"])

    def __getstate__(self) -> Dict[str, Any]:
        """Pickles (checkpoints) keep everything but the host's callables and this phase's datasets."""
        state = {k: v for k, v in self.__dict__.items()
                 if k not in HOST_CALLABLES + ("train_new", "train_memory", "meta_source", "replica")}
        state["generator"] = self.generator.get_state()
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        for key in HOST_CALLABLES + ("train_new", "train_memory", "meta_source", "replica"):
            self.__dict__.setdefault(key, default_logits if key == "logits_fn" else None)
