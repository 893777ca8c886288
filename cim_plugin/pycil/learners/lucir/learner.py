"""LUCIR (Hou et al., CVPR 2019) as a plug-in learner on PyCIL's classes: "model_name": "lucir".

PyCIL has no LUCIR; this one follows the paper and its official code (hshustc/CVPR19_Incremental_Learning):

- network: PyCIL's ``CosineIncrementalNet``: logits = σ · cos(w_c, f(x)), no bias, σ learnable from 1;
  from phase 1 on the classifier is split into the old part (every earlier class) and a new part
  sharing σ. New-class weights are imprinted: the mean of the L2-normalised features of the class's
  training images under the previous model (test transform), normalised and scaled to the mean norm
  of the old weights. Under less-forget the old part is not trained (lr 0, as the official code).
- backbone: the last ReLU of the last residual block is removed (features may be negative), on PyCIL's
  resnet32 and resnet18 without editing PyCIL (the block's class is swapped for one whose forward
  ends before the ReLU); cosine_resnet32/18 (PyCIL's UCIR backbones) already end without it.
- loss: CE + λ · less-forget + margin ranking (``losses.py``).
- memory: PyCIL's herding (fixed_memory / memory_size), CNN and NME evaluation; optionally
  class-balanced fine-tuning of the classifier on the exemplars after the memory update (``lucir_cbf``).

Hyper-parameters are the module constants below, defaults from the official CIFAR-100 script; a
top-level JSON key of the same name overrides one for a run (checked against its type).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict

import numpy as np
import torch
from torch import nn, optim
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ....config import ConfigError
from ...host import import_pycil
from .losses import cosine_scores, less_forget_lambda, lucir_loss

import_pycil()  # PyCIL's packages (convs, models, utils) are importable only once this put them on sys.path
from convs import cifar_resnet as _cifar_resnet  # noqa: E402
from convs import resnet as _resnet  # noqa: E402
from models.base import BaseLearner  # noqa: E402
from utils.inc_net import CosineIncrementalNet  # noqa: E402

__all__ = ["LUCIR", "settings", "remove_last_relu", "imprint_weights"]

log = logging.getLogger("cim_plugin")

# --- hyper-parameters (top-level JSON keys of the same name override them) -------------------
init_epoch = 160              # phase 0 epochs (official CIFAR-100: 160)
init_lr = 0.1
init_milestones = [80, 120]
init_weight_decay = 5e-4
epochs = 160                  # epochs of each later phase
lrate = 0.1
milestones = [80, 120]
lrate_decay = 0.1
weight_decay = 5e-4
batch_size = 128
num_workers = 8
lambda_base = 5.0             # less-forget weight base (5 at CIFAR scale, 10 at ImageNet scale)
adapt_lambda = True           # λ = lambda_base · √(old / new classes)
less_forget = True            # less-forget loss, and the old classifier part frozen
mr_margin = 0.5               # margin ranking: margin m
mr_k = 2                      # margin ranking: hard negatives K among the new classes
mr_weight = 1.0               # margin ranking: weight
lucir_cbf = False             # class-balanced fine-tuning after the memory update (official: ImageNet-1000)
cbf_epochs = 20
cbf_lr = 0.01
cbf_milestones = [10]
cbf_weight_decay = 1e-4


def _number(name: str, value: Any, *, low: float, integer: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= low
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f'"{name}" must be {kind} >= {low}, got {value!r}')
    return value


def settings() -> Dict[str, Any]:
    """This module's LUCIR hyper-parameters as now set (after JSON overrides), validated."""
    for name, value in (("adapt_lambda", adapt_lambda), ("less_forget", less_forget), ("lucir_cbf", lucir_cbf)):
        if not isinstance(value, bool):
            raise ConfigError(f'"{name}" must be true or false, got {value!r}')
    return {
        "lambda_base": float(_number("lambda_base", lambda_base, low=0.0)),
        "adapt_lambda": adapt_lambda, "less_forget": less_forget, "cbf": lucir_cbf,
        "margin": float(_number("mr_margin", mr_margin, low=0.0)),
        "k": int(_number("mr_k", mr_k, low=1, integer=True)),
        "mr_weight": float(_number("mr_weight", mr_weight, low=0.0)),
        "cbf_epochs": int(_number("cbf_epochs", cbf_epochs, low=0, integer=True)),
        "cbf_lr": float(_number("cbf_lr", cbf_lr, low=0.0)),
        "cbf_weight_decay": float(_number("cbf_weight_decay", cbf_weight_decay, low=0.0)),
    }


# --- the backbone without its last ReLU ------------------------------------------------------
class _CifarBlockNoReLU(_cifar_resnet.ResNetBasicblock):
    """resnet32's basic block, returning residual + branch without the final ReLU."""

    def forward(self, x):
        branch = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return residual + branch


class _BasicBlockNoReLU(_resnet.BasicBlock):
    """resnet18/34's basic block, returning out + identity without the final ReLU."""

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


_NO_RELU = {_cifar_resnet.ResNetBasicblock: _CifarBlockNoReLU, _resnet.BasicBlock: _BasicBlockNoReLU}
_ALREADY_WITHOUT = ("cosine_resnet32", "cosine_resnet18", "cosine_resnet34")


def remove_last_relu(convnet: nn.Module, convnet_type: str) -> None:
    """Make ``convnet``'s last residual block end without its ReLU (in place); ConfigError if unknown."""
    if convnet_type.lower() in _ALREADY_WITHOUT:
        return
    blocks = [m for m in convnet.modules() if type(m) in _NO_RELU]
    if not blocks:
        raise ConfigError(
            f'lucir removes the last ReLU of the backbone, which it can do for "resnet32", "resnet18" and '
            f'"resnet34" (or use PyCIL\'s "cosine_resnet32" / "cosine_resnet18", built without it); '
            f'got "convnet_type": {convnet_type!r}')
    last = blocks[-1]
    last.__class__ = _NO_RELU[type(last)]


def imprint_weights(features: torch.Tensor, labels: torch.Tensor, classes, old_weight: torch.Tensor) -> torch.Tensor:
    """Imprinted weights (len(classes), D): per class the mean of the L2-normalised features (N, D),
    normalised, times the mean L2 norm of the old weights (K_old, D)."""
    scale = old_weight.norm(dim=1).mean()
    rows = []
    for c in classes:
        mean = F.normalize(features[labels == c], dim=1).mean(0)
        rows.append(F.normalize(mean, dim=0) * scale)
    return torch.stack(rows)


class LUCIR(BaseLearner):
    """LUCIR on PyCIL's BaseLearner (herding memory, CNN + NME evaluation)."""

    def __init__(self, args):
        if len(args["device"]) > 1:  # its loops run on self._device only: the other GPUs would sit idle
            raise ConfigError(f'lucir runs on one device (it has no DataParallel branch), "device" lists '
                              f'{len(args["device"])}: give one, e.g. "device": ["0"]')
        super().__init__(args)
        self._lucir = settings()
        self._network = CosineIncrementalNet(args, False)
        remove_last_relu(self._network.convnet, args["convnet_type"])

    def after_task(self):
        self._old_network = self._network.copy().freeze()
        self._known_classes = self._total_classes

    def incremental_train(self, data_manager):
        self._cur_task += 1
        self._total_classes = self._known_classes + data_manager.get_task_size(self._cur_task)
        self._network.update_fc(self._total_classes, self._cur_task)
        if self._cur_task > 0:
            self._imprint(data_manager)
        log.info("Learning on %d-%d", self._known_classes, self._total_classes)
        train = data_manager.get_dataset(np.arange(self._known_classes, self._total_classes), source="train",
                                         mode="train", appendent=self._get_memory())
        test = data_manager.get_dataset(np.arange(0, self._total_classes), source="test", mode="test")
        self.train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        self.test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        self._train(self.train_loader, self.test_loader)
        self.build_rehearsal_memory(data_manager, self.samples_per_class)
        if self._lucir["cbf"] and self._cur_task > 0:
            self._class_balanced_finetune(data_manager)

    # -- imprinting -----------------------------------------------------------------------------
    @torch.no_grad()
    def _imprint(self, data_manager) -> None:
        """New-class weights from the previous model's features of their training images (test transform)."""
        new = np.arange(self._known_classes, self._total_classes)
        data = data_manager.get_dataset(new, source="train", mode="test")
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        self._network.to(self._device).eval()
        feats, labels = [], []
        for _, x, y in loader:
            feats.append(self._network.extract_vector(x.to(self._device)).cpu())
            labels.append(torch.as_tensor(y))
        fc = self._network.fc
        weights = imprint_weights(torch.cat(feats), torch.cat(labels), new, fc.fc1.weight.detach().cpu())
        fc.fc2.weight.data.copy_(weights.to(fc.fc2.weight.device))

    # -- training -------------------------------------------------------------------------------
    def _train(self, train_loader, test_loader):
        self._network.to(self._device)
        if self._old_network is not None:
            self._old_network.to(self._device)
        if self._cur_task == 0:
            optimizer = optim.SGD(self._network.parameters(), lr=init_lr, momentum=0.9, weight_decay=init_weight_decay)
            scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=init_milestones, gamma=lrate_decay)
            self._init_train(train_loader, test_loader, optimizer, scheduler)
            return
        fc1 = list(self._network.fc.fc1.parameters()) if self._lucir["less_forget"] else []
        frozen = {id(p) for p in fc1}
        base = [p for p in self._network.parameters() if id(p) not in frozen]
        groups = [{"params": base, "lr": lrate, "weight_decay": weight_decay}]
        if fc1:  # the old classifier part: lr 0 under less-forget (official)
            groups.append({"params": fc1, "lr": 0.0, "weight_decay": 0.0})
        optimizer = optim.SGD(groups, lr=lrate, momentum=0.9)
        scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=lrate_decay)
        self._update_representation(train_loader, test_loader, optimizer, scheduler)

    def _init_train(self, train_loader, test_loader, optimizer, scheduler):
        self._fit(train_loader, optimizer, scheduler, init_epoch)

    def _update_representation(self, train_loader, test_loader, optimizer, scheduler):
        self._fit(train_loader, optimizer, scheduler, epochs)

    def _fit(self, train_loader, optimizer, scheduler, n_epochs: int) -> None:
        for epoch in range(n_epochs):
            self._network.train()
            total_loss, correct, seen = 0.0, 0, 0
            for _, x, y in train_loader:
                x, y = x.to(self._device), y.to(self._device)
                out = self._network(x)
                loss = self.lucir_loss(out, y, x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
                correct += int((out["logits"].argmax(1) == y).sum())
                seen += len(y)
            scheduler.step()
            log.info("Task %d, Epoch %d/%d => Loss %.3f, Train_accy %.2f", self._cur_task, epoch + 1, n_epochs,
                     total_loss / max(1, len(train_loader)), 100.0 * correct / max(1, seen))

    def lucir_lambda(self) -> float:
        new = self._total_classes - self._known_classes
        return less_forget_lambda(self._lucir["lambda_base"], self._known_classes, new, self._lucir["adapt_lambda"])

    def lucir_loss(self, out: Dict[str, torch.Tensor], y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The phase's LUCIR loss for the network output ``out`` ("logits", "features") on ``x`` (B, C, H, W).

        Also CIM's inner loss for LUCIR: ``out`` may come from any view of the network that gives the
        σ-scaled logits and the penultimate features."""
        old_features = None
        if self._cur_task > 0 and self._old_network is not None:
            with torch.no_grad():
                old_features = self._old_network.extract_vector(x).detach()
        fc = self._network.fc
        weight = torch.cat([fc.fc1.weight, fc.fc2.weight]) if hasattr(fc, "fc1") else fc.weight
        scores = cosine_scores(out["features"], weight)
        s = self._lucir
        return lucir_loss(out["logits"], scores, out["features"], y, old_features=old_features,
                          old_classes=self._known_classes, lam=self.lucir_lambda(), margin=s["margin"], k=s["k"],
                          mr_weight=s["mr_weight"], less_forget=s["less_forget"])

    # -- class-balanced fine-tuning -------------------------------------------------------------
    def _class_balanced_finetune(self, data_manager) -> None:
        """Train the classifier weights alone on the exemplars (backbone and BN frozen, σ fixed), with the
        same loss; the less-forget term is constant with the backbone frozen and is left out."""
        memory = self._get_memory()
        if memory is None or len(memory) == 0 or self._lucir["cbf_epochs"] == 0:
            return
        data = data_manager.get_dataset([], source="train", mode="train", appendent=memory)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        fc = self._network.fc
        params = [fc.fc1.weight, fc.fc2.weight]
        trainable = {n: p.requires_grad for n, p in self._network.named_parameters()}
        for p in self._network.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = optim.SGD(params, lr=self._lucir["cbf_lr"], momentum=0.9,
                              weight_decay=self._lucir["cbf_weight_decay"])
        scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=cbf_milestones, gamma=lrate_decay)
        s = self._lucir
        try:
            for _ in range(s["cbf_epochs"]):
                self._network.eval()  # BN statistics frozen
                for _, x, y in loader:
                    x, y = x.to(self._device), y.to(self._device)
                    out = self._network(x)
                    scores = cosine_scores(out["features"], torch.cat([fc.fc1.weight, fc.fc2.weight]))
                    loss = lucir_loss(out["logits"], scores, out["features"], y, old_features=out["features"],
                                      old_classes=self._known_classes, lam=0.0, margin=s["margin"], k=s["k"],
                                      mr_weight=s["mr_weight"], less_forget=False)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                scheduler.step()
        finally:
            for n, p in self._network.named_parameters():
                p.requires_grad_(trainable[n])
