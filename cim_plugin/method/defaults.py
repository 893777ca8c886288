"""CIM's configuration keys and their defaults (the official CIM ImageNet-100 settings).

They live with the method (the :class:`~cim_plugin.method.cim.CIM` object reads them); ``cim_plugin.config``
validates them and re-exports :data:`CIM_DEFAULTS`.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["CIM_DEFAULTS"]

CIM_DEFAULTS: Dict[str, Any] = {
    "cim": False,
    "cim_mask": "cim",
    "compress_ratio": 4.0,
    "mask_threshold": 0.6,
    "phi_lr": 0.01,
    "phi_lr_schedule": "host",
    "lr_ratio": 0.1,
    "inner_grad_through_mask": False,
    "max_phi_grad_norm": 1.0,
    "meta_batch_size": 16,
    "num_meta_iters_per_cls": 0.5,
    "cam_update_interval": 40,
    "randombbxblur_prob_incre": 0.1,
    "codec_augment_prob": 0.0,
    "div_coef": 0.2,
    "reg_coef": 0.1,
    "exemplar_codec": "raw",
    "jpeg_quality": 75,
}
