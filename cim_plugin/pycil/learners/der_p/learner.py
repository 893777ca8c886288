"""DER as its paper describes it (Yan et al., CVPR 2021), as a plug-in learner: "model_name": "der_p".

Built on PyCIL's DER (expansion, frozen old extractors, auxiliary classifier over the new classes
plus one "old" output, memory) and adds what PyCIL's DER leaves out:

- channel masks m_l = sigmoid(s * e_l) on every conv of the NEW extractor (cim_plugin.pycil.learners.der_p.channel_masks),
  s annealed within each epoch from 1/s_max to s_max, and a sparsity loss (fraction of the
  extractor's conv parameters in use) weighted by ``sparsity_weight`` in the loss;
- after the phase's training the masks are binarised (m > 0.5) and the new extractor is pruned
  for real (cim_plugin.pycil.learners.der_p.pruning); the pruned extractor is checked against the masked one;
- classifier re-training on a class-balanced subset (memory + as many images per new class as the
  memory holds per old class), backbones frozen (``classifier_retrain``: "balanced"), or PyCIL's
  weight alignment ("weight_align").

Per phase, ``self.der_p_report`` holds the extractors' parameters before / after pruning, the
network's total parameters and the multiply-adds of one forward at the dataset's image size.

Hyper-parameters are the module constants below (and PyCIL's models.der ones: epochs, lrate, ...);
a top-level JSON key of the same name overrides them for a run. One device (no DataParallel).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import nn, optim
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from ....config import ConfigError
from ...host import import_pycil
from .channel_masks import (
    MASKS_ATTR,
    anneal_scale,
    attach_channel_masks,
    check_s_max,
    find_conv_bn_pairs,
    remove_channel_masks,
)
from .pruning import count_flops, count_parameters, output_difference_and_scale, prune_masked

import_pycil()  # PyCIL's packages (models, utils) are importable only once this put them on sys.path
from models import der as _der  # noqa: E402  (PyCIL's DER module: its constants are read at call time)
from models.der import DER  # noqa: E402
from utils import inc_net as _inc_net  # noqa: E402

__all__ = ["DERP", "DERPNet", "settings", "check_maskable", "RETRAIN_MODES"]

log = logging.getLogger("cim_plugin")

# --- hyper-parameters (top-level JSON keys of the same name override them) -------------------
s_max = 400.0                  # mask scale at the end of each epoch (DER paper: 400)
sparsity_weight = 0.5          # weight of the sparsity loss (fraction of conv params in use)
mask_init = 6.0                # initial s_max * e: m = sigmoid(6) = 0.9975 at s_max, all channels on
mask_clamp = 8.0               # |s_max * e| is clamped to this after each step (HAT's clamp)
mask_first_task = True         # also mask and prune the first phase's extractor
classifier_retrain = "balanced"  # "balanced" (DER paper) or "weight_align" (PyCIL's DER)
ft_epochs = 30                 # epochs of the balanced classifier re-training
ft_lrate = 0.05                # its learning rate (SGD, momentum 0.9, cosine schedule)
ft_weight_decay = 0.0          # its weight decay
prune_tolerance = 1e-4         # pruned vs masked extractor: max |diff| <= tol * (1 + max |output|)

RETRAIN_MODES = ("balanced", "weight_align")


def _number(name: str, value: Any, *, low: float, low_open: bool = False, integer: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if integer:
        ok = ok and isinstance(value, int)
    if ok:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f'"{name}" must be {kind} {bound}, got {value!r}')
    return value


def settings() -> Dict[str, Any]:
    """This module's hyper-parameters as now set (after JSON overrides), validated.

    Raises ConfigError naming the key: sparsity_weight < 0, s_max <= 1, unknown classifier_retrain, ...
    """
    if classifier_retrain not in RETRAIN_MODES:
        raise ConfigError(f'"classifier_retrain" must be one of {list(RETRAIN_MODES)}, got {classifier_retrain!r}')
    if not isinstance(mask_first_task, bool):
        raise ConfigError(f'"mask_first_task" must be true or false, got {mask_first_task!r}')
    return {
        "s_max": check_s_max(s_max, "s_max"),
        "sparsity_weight": float(_number("sparsity_weight", sparsity_weight, low=0.0)),
        "mask_init": float(_number("mask_init", mask_init, low=-math.inf)),
        "mask_clamp": float(_number("mask_clamp", mask_clamp, low=0.0, low_open=True)),
        "mask_first_task": mask_first_task,
        "classifier_retrain": classifier_retrain,
        "ft_epochs": int(_number("ft_epochs", ft_epochs, low=0, integer=True)),
        "ft_lrate": float(_number("ft_lrate", ft_lrate, low=0.0, low_open=True)),
        "ft_weight_decay": float(_number("ft_weight_decay", ft_weight_decay, low=0.0)),
        "prune_tolerance": float(_number("prune_tolerance", prune_tolerance, low=0.0, low_open=True)),
    }


def check_maskable(args: Dict[str, Any], example_shape=(2, 3, 32, 32)) -> None:
    """ConfigError naming "convnet_type" unless PyCIL's convnet of `args` can be channel-masked."""
    name = args.get("convnet_type")
    try:
        convnet = _inc_net.get_convnet(args)
    except Exception as err:  # PyCIL raises NotImplementedError / AttributeError for nets it cannot build
        raise ConfigError(f'"convnet_type" {name!r}: PyCIL cannot build this convnet ({type(err).__name__}: {err})') from None
    if not isinstance(convnet, nn.Module):
        raise ConfigError(f'"convnet_type" {name!r} cannot be masked by der_p: it is not one network '
                          f"(use resnet32, resnet18, resnet34 or resnet50)")
    try:
        find_conv_bn_pairs(convnet, example_shape)
    except ConfigError as err:
        raise ConfigError(f'"convnet_type" {name!r} cannot be masked by der_p: {err}') from None


class DERPNet(_inc_net.DERNet):
    """PyCIL's DERNet whose new extractor starts from the previous extractor's unpruned weights.

    `unpruned_state`: state_dict of the last extractor before pruning, with the BN scale and shift
    of its pruned channels set to 0 (so it computes what the pruned extractor computes), or None.
    """

    def __init__(self, args, pretrained):
        super().__init__(args, pretrained)
        self.unpruned_state = None

    def update_fc(self, nb_classes):
        if not len(self.convnets) or self.unpruned_state is None:
            return super().update_fc(nb_classes)
        pruned = self.convnets[-1]
        full = _inc_net.get_convnet(self.args)
        full.load_state_dict(self.unpruned_state)
        self.convnets[-1] = full.to(next(pruned.parameters()).device)
        try:
            super().update_fc(nb_classes)  # appends a new extractor initialised from convnets[-2] = full
        finally:
            self.convnets[-2] = pruned


class DERP(DER):
    """DER with channel masks, sparsity loss, real pruning and balanced classifier re-training."""

    def __init__(self, args):
        super().__init__(args)
        self._der_p = settings()
        check_maskable(args)
        self._network = DERPNet(args, False)
        self._der_p_dm = None
        self._der_p_seed = int(args.get("seed", 0))
        self.der_p_report: Dict[str, Any] = {"extractor_params_before": [], "extractor_params_after": [],
                                             "total_params": 0, "flops": 0}

    # -- PyCIL entry points ------------------------------------------------------------------
    def incremental_train(self, data_manager):
        if len(self._multiple_gpus) > 1:
            raise ConfigError('der_p runs on one device; give one entry in "device"')
        self._der_p_dm = data_manager  # under CIM, the plug-in's data-manager proxy
        try:
            return super().incremental_train(data_manager)
        finally:
            self._der_p_dm = None

    def _train(self, train_loader, test_loader):
        cfg = self._der_p
        net = self._network
        net.to(self._device)
        shape = self._input_shape(test_loader)
        new = net.convnets[-1]
        masks = None
        if self._cur_task > 0 or cfg["mask_first_task"]:
            masks = attach_channel_masks(new, (2, *shape[1:]), s_max=cfg["s_max"], init=cfg["mask_init"])
        first = self._cur_task == 0
        lr = _der.init_lr if first else _der.lrate
        wd = _der.init_weight_decay if first else _der.weight_decay
        mask_params = list(masks.parameters()) if masks is not None else []
        mask_ids = {id(p) for p in mask_params}
        others = [p for p in net.parameters() if p.requires_grad and id(p) not in mask_ids]
        groups = [{"params": others}] + ([{"params": mask_params, "weight_decay": 0.0}] if mask_params else [])
        optimizer = optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd)
        scheduler = optim.lr_scheduler.MultiStepLR(
            optimizer,
            milestones=_der.init_milestones if first else _der.milestones,
            gamma=_der.init_lr_decay if first else _der.lrate_decay,
        )
        n_epochs = _der.init_epoch if first else _der.epochs
        self._der_p_fit(train_loader, test_loader, optimizer, scheduler, n_epochs, masks)

        before = count_parameters(new) - (count_parameters(masks) if masks is not None else 0)
        if masks is not None:
            self._der_p_prune(shape)
        after = count_parameters(net.convnets[-1])
        if self._cur_task > 0:
            if cfg["classifier_retrain"] == "balanced":
                self._der_p_balanced_retrain(test_loader)
            else:
                net.weight_align(self._total_classes - self._known_classes)
        report = self.der_p_report
        report["extractor_params_before"].append(int(before))
        report["extractor_params_after"].append(int(after))
        report["total_params"] = count_parameters(net)
        report["flops"] = count_flops(net, shape)
        log.info("der_p: extractor %d params %d -> %d (%.1f%%); network %d params, %d multiply-adds per image",
                 self._cur_task, before, after, 100.0 * after / max(before, 1), report["total_params"], report["flops"])

    # -- training ----------------------------------------------------------------------------
    def _der_p_fit(self, train_loader, test_loader, optimizer, scheduler, n_epochs, masks):
        """DER's loss (CE + auxiliary CE after the first phase) + sparsity_weight * sparsity."""
        cfg = self._der_p
        info = ""
        for epoch in range(n_epochs):
            self.train()
            n_batches = max(len(train_loader), 1)
            sums = np.zeros(4)  # loss, clf, aux, sparsity
            correct, total = 0, 0
            for i, (_, inputs, targets) in enumerate(train_loader):
                inputs, targets = inputs.to(self._device), targets.to(self._device)
                if masks is not None:
                    masks.s = anneal_scale(min(i, n_batches - 1), n_batches, cfg["s_max"])
                outputs = self._network(inputs)
                logits = outputs["logits"]
                loss_clf = F.cross_entropy(logits, targets)
                loss = loss_clf
                loss_aux = loss_sp = torch.zeros((), device=logits.device)
                if self._cur_task > 0:
                    aux_targets = torch.where(targets >= self._known_classes, targets - self._known_classes + 1,
                                              torch.zeros_like(targets))
                    loss_aux = F.cross_entropy(outputs["aux_logits"], aux_targets)
                    loss = loss + loss_aux
                if masks is not None:
                    loss_sp = masks.sparsity()
                    loss = loss + cfg["sparsity_weight"] * loss_sp
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if masks is not None:
                    masks.clamp_(cfg["mask_clamp"])
                sums += [loss.item(), loss_clf.item(), loss_aux.item(), loss_sp.item()]
                correct += int((logits.argmax(1) == targets).sum())
                total += len(targets)
            if masks is not None:
                masks.s = cfg["s_max"]
            scheduler.step()
            sums /= n_batches
            kept = "" if masks is None else ", kept {:.3f}".format(
                float(torch.cat(masks.keep()).float().mean()))
            info = "Task {}, Epoch {}/{} => Loss {:.3f}, Loss_clf {:.3f}, Loss_aux {:.3f}, Sparsity {:.3f}{}, " \
                   "Train_accy {:.2f}".format(self._cur_task, epoch + 1, n_epochs, *sums, kept,
                                              100.0 * correct / max(total, 1))
            if epoch % 5 == 0 or epoch == n_epochs - 1:
                info += ", Test_accy {:.2f}".format(self._compute_accuracy(self._network, test_loader))
            logging.info(info)

    def _der_p_prune(self, shape: Tuple[int, ...]) -> None:
        """Binarise the new extractor's masks, prune it, check it against the masked one, swap it in."""
        net = self._network
        new = net.convnets[-1]
        masks = getattr(new, MASKS_ATTR)
        masks.binary = True
        keep = masks.keep()
        pruned = prune_masked(new, (2, *shape[1:]))
        diff, magnitude = output_difference_and_scale(new, pruned, (4, *shape[1:]))
        scale = 1.0 + magnitude  # float32 round-off grows with the outputs' size
        if not diff <= self._der_p["prune_tolerance"] * scale:
            raise RuntimeError(f"pruning changed the extractor's output by {diff:.3g} (tolerance "
                               f"{self._der_p['prune_tolerance'] * scale:.3g}); this network's layers are not "
                               f"prunable the way der_p assumes")
        remove_channel_masks(new)
        with torch.no_grad():  # the unpruned weights the next extractor starts from: pruned channels off
            modules = dict(new.named_modules())
            for pair, k in zip(masks.pairs, keep):
                bn = modules[pair.bn]
                if bn.affine:
                    bn.weight[~k] = 0.0
                    bn.bias[~k] = 0.0
        net.unpruned_state = {name: t.detach().clone() for name, t in new.state_dict().items()}
        for p in pruned.parameters():
            p.requires_grad_(any(q.requires_grad for q in new.parameters()))
        net.convnets[-1] = pruned
        logging.info("der_p: pruned extractor %d, kept %d / %d channels, max |masked - pruned| = %.2e",
                     self._cur_task, int(sum(int(k.sum()) for k in keep)), sum(len(k) for k in keep), diff)

    def _der_p_balanced_retrain(self, test_loader) -> None:
        """Re-train the classifier on memory + (memory per old class) images per new class, backbones frozen."""
        cfg = self._der_p
        net = self._network
        n_memory = int(self.exemplar_size)
        if n_memory == 0 or cfg["ft_epochs"] == 0:
            log.info("der_p: no memory or ft_epochs = 0, classifier re-training skipped")
            return
        per_class = max(1, n_memory // max(self._known_classes, 1))
        dataset = self._der_p_dm.get_dataset(np.arange(self._known_classes, self._total_classes), source="train",
                                             mode="train", appendent=self._get_memory())
        labels = np.asarray(dataset.labels)
        rng = np.random.default_rng([self._der_p_seed, self._cur_task])
        chosen = [np.nonzero(labels < self._known_classes)[0]]
        for c in range(self._known_classes, self._total_classes):
            idx = np.nonzero(labels == c)[0]
            chosen.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        indices = np.sort(np.concatenate(chosen))
        loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=_der.batch_size, shuffle=True,
                            num_workers=_der.num_workers)
        frozen = [(p, p.requires_grad) for p in net.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        for p in net.fc.parameters():
            p.requires_grad_(True)
        optimizer = optim.SGD(net.fc.parameters(), lr=cfg["ft_lrate"], momentum=0.9,
                              weight_decay=cfg["ft_weight_decay"])
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["ft_epochs"])
        try:
            for epoch in range(cfg["ft_epochs"]):
                net.eval()  # frozen backbones: BN statistics stay as trained
                losses = 0.0
                for _, inputs, targets in loader:
                    inputs, targets = inputs.to(self._device), targets.to(self._device)
                    with torch.no_grad():
                        features = net.extract_vector(inputs)
                    loss = F.cross_entropy(net.fc(features)["logits"], targets)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses += loss.item()
                scheduler.step()
            logging.info("der_p: balanced classifier re-training on %d images (%d per new class), %d epochs, "
                         "loss %.3f, Test_accy %.2f", len(indices), per_class, cfg["ft_epochs"],
                         losses / max(len(loader), 1), self._compute_accuracy(net, test_loader))
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _input_shape(test_loader) -> Tuple[int, ...]:
        """(1, C, H, W) of the dataset's network inputs (from one test item)."""
        item = test_loader.dataset[0][1]
        if not isinstance(item, torch.Tensor) or item.dim() != 3:
            raise ValueError(f"expected test items (idx, image Tensor(C, H, W), label), got image {type(item).__name__}")
        return (1, *item.shape)
