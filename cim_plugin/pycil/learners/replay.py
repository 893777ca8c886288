"""Replay, PyCIL's ``models.replay`` (fine-tuning on new data plus the memory): supported, also under torchrun.

Inner loss: CE in every phase.
"""

from __future__ import annotations

from .losses import ce_loss
from .registry import LearnerSpec, register

__all__ = ["SPEC"]

SPEC = register(LearnerSpec("replay", inner_loss=ce_loss, train_loops=("_init_train", "_update_representation"),
                            ddp=True))
