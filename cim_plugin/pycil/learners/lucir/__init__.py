"""lucir: LUCIR (Hou et al., CVPR 2019), a learner the plug-in provides (``"model_name": "lucir"``; PyCIL has
none), following the paper and its official code. Supported with CIM (one process).

- :mod:`.learner`: the learner class ``LUCIR`` and its hyper-parameters (imports PyCIL, so it is loaded only
  when a run asks for lucir, by :func:`~cim_plugin.pycil.host.learner_class`);
- :mod:`.losses`: LUCIR's loss terms as plain tensor functions (no PyCIL).

Inner loss: LUCIR's own, CE(σ cos) + λ (1 − cos(f, f_old)) + margin ranking on old-class samples, computed by
the learner (``LUCIR.lucir_loss``).
"""

from __future__ import annotations

import torch

from ..registry import LearnerSpec, register

__all__ = ["lucir_loss", "SPEC"]


def lucir_loss(learner, out, y, x) -> torch.Tensor:
    """LUCIR's own loss (CE + λ less-forget + margin ranking), computed by the learner (``learner.py``)."""
    return learner.lucir_loss(out, y, x)


SPEC = register(LearnerSpec("lucir", inner_loss=lucir_loss, train_loops=("_init_train", "_update_representation"),
                            plugin_class=f"{__name__}.learner:LUCIR"))
