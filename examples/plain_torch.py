#!/usr/bin/env python
"""CIM in a plain PyTorch training loop: no PyCIL, no toolbox.

Two phases of class-incremental learning (classes 0-2, then 3-5) on synthetic images (a coloured square
per class on a noisy background), a small CNN, and CIM's memory of compressed exemplars under a budget
of 12 full images' bytes. Everything CIM needs from the host is in the calls marked "CIM:".

    python examples/plain_torch.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cim_plugin.method.cim import CIM  # noqa: E402
from cim_plugin.method.data import StoredImages, TensorImages  # noqa: E402
from cim_plugin.method.network import GapClassifierView  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
COLOURS = torch.tensor([[230, 40, 40], [40, 200, 40], [40, 60, 230], [230, 200, 30], [200, 40, 200], [30, 200, 210]])


def synthetic_images(per_class: int, size: int = 32, seed: int = 0):
    """uint8 images (6 * per_class, 3, size, size) and labels: class c is a square of colour c (side
    size/4 to size/3, random place) on uniform noise."""
    g = torch.Generator().manual_seed(seed)
    n = len(COLOURS) * per_class
    images = torch.randint(60, 140, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(len(COLOURS)).repeat_interleave(per_class)
    for i, c in enumerate(labels.tolist()):
        side = int(torch.randint(size // 4, size // 3 + 1, (), generator=g))
        y, x = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
        images[i, :, y : y + side, x : x + side] = COLOURS[c].view(3, 1, 1).to(torch.uint8)
    return images, labels


class SmallCNN(nn.Module):
    """conv-BN-ReLU x3 -> global average pool -> fc. CIM sees it through GapClassifierView(net)."""

    def __init__(self, num_classes: int = 6, width: int = 16):
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride in ((width, 1), (2 * width, 2), (2 * width, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images (N, 3, H, W) -> normalised network input, as the test transform makes it."""
    return transforms.functional.normalize(images.float() / 255, MEAN, STD)


def main(epochs: int = 3, per_class: int = 24, seed: int = 0, log=print):
    """Train two phases; returns (cim, network, per-phase records)."""
    torch.manual_seed(seed)
    images, labels = synthetic_images(per_class, seed=seed)
    train_trsf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                     transforms.Normalize(MEAN, STD)])
    net = SmallCNN()
    cim = CIM({"meta_batch_size": 8, "cam_update_interval": 1}, seed=seed,  # CIM: config and how to see the net
              view=GapClassifierView, to_input=to_input)
    records = []
    for task, classes in enumerate(([0, 1, 2], [3, 4, 5])):
        known, total = classes[0], classes[-1] + 1
        cim.start_phase(task, known, total, budget_images=12)  # CIM: the phase's classes and budget
        new = torch.isin(labels, torch.tensor(classes))
        new_data = cim.augmented(TensorImages(images[new], labels[new], train_trsf), StoredImages)  # CIM
        replay = cim.replay(train_trsf)  # CIM: decoded exemplars of the old classes (None in phase 0)
        data = ConcatDataset([new_data, replay]) if replay is not None else new_data
        replayed = 0 if replay is None else len(replay)
        loader = DataLoader(data, batch_size=16, shuffle=True)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for epoch in range(epochs):
            cim.before_epoch(net, lr=optimizer.param_groups[0]["lr"], weight_decay=5e-4)  # CIM: meta steps
            for _, x, y in loader:
                loss = F.cross_entropy(net(x)[:, :total], y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        class_images = [(c, images[labels == c], (labels == c).nonzero().squeeze(1)) for c in classes]
        cim.build_memory(net, class_images, lr=optimizer.param_groups[0]["lr"], weight_decay=5e-4)  # CIM
        record = cim.report()  # CIM: exemplars, bytes held, budget, meta steps
        record["replayed"] = replayed
        record["phi"] = [p.detach().clone() for p in cim.branch.parameters()]
        records.append(record)
        log(f"phase {task}: {record['exemplars']} exemplars in {record['memory_bytes']} of "
            f"{record['memory_budget_bytes']} bytes, {record['meta_steps']} meta steps, "
            f"{record['replayed']} exemplars replayed")
    return cim, net, records


if __name__ == "__main__":
    main()
