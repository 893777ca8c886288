"""der_p: DER as its paper describes it (Yan et al., CVPR 2021), a learner the plug-in provides
(``"model_name": "der_p"``): PyCIL's DER plus channel masks, a sparsity loss, real pruning and balanced
classifier re-training. Supported with CIM (one process).

- :mod:`.learner`: the learner class ``DERP`` and its hyper-parameters (imports PyCIL, so it is loaded only
  when a run asks for der_p, by :func:`~cim_plugin.pycil.host.learner_class`);
- :mod:`.channel_masks`: DER's channel-level masks (no PyCIL);
- :mod:`.pruning`: physical pruning of masked channels, exactly (no PyCIL).

Inner loss: DER's (CE + CE(aux_logits, aux targets) in later phases). Its training loop ``_der_p_fit`` (and
DER's ``_init_train`` / ``_update_representation``, which it inherits) receive the CIL optimiser.
"""

from __future__ import annotations

from ..der import der_loss
from ..registry import LearnerSpec, register

__all__ = ["SPEC"]

SPEC = register(LearnerSpec("der_p", inner_loss=der_loss,
                            train_loops=("_init_train", "_update_representation", "_der_p_fit"),
                            plugin_class=f"{__name__}.learner:DERP"))
