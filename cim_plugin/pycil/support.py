"""Which PyCIL learners CIM runs on, and why the others are refused.

A learner is supported when its memory flows only through the hooks the mixin replaces: the memory is
built by ``build_rehearsal_memory``, handed to training by ``_get_memory()`` → ``get_dataset(...,
appendent=...)``, and its network gives the mixin a last feature map per backbone. Each refusal below
names what in the learner's own flow steps outside those hooks (checked against the pinned PyCIL).
"""

from __future__ import annotations

from typing import Dict

from ..config import ConfigError

__all__ = ["SUPPORTED", "REFUSED", "refusal", "check_cim_support"]

# Learners run end to end with CIM in the test suite (tests/test_cim_datasets.py, test_lucir.py, ...).
SUPPORTED = ("icarl", "der", "foster", "wa", "replay", "der_p", "lucir", "bic", "memo")

REFUSED: Dict[str, str] = {
    "podnet": "PODNet's class-balanced fine-tuning rebuilds its own raw-image memory (_construct_exemplar / "
              "_construct_exemplar_unified) and then indexes _data_memory and _targets_memory directly, "
              "outside build_rehearsal_memory",
    "coil": "COIL builds its memory by calling _construct_exemplar directly (not build_rehearsal_memory) and its "
            "optimal-transport classifier transfer reads class means from the raw memory "
            "(_extract_class_means_with_memory)",
    "gem": "PyCIL's GEM stops without CIM too on the pinned PyCIL: _update_representation copies params.grad of "
           "every parameter, and parameters the old-task loss does not reach have none (AttributeError)",
    "rmm-icarl": "RMM decides each phase's memory size itself (new_memory_size, m_rate) and builds the memory "
                 "with its own _construct_exemplar on raw images; CIM's memory is a byte budget split by "
                 "herding over compressed candidates",
    "rmm-foster": "RMM decides each phase's memory size itself (new_memory_size, m_rate) and builds the memory "
                  "with its own _construct_exemplar on raw images; CIM's memory is a byte budget split by "
                  "herding over compressed candidates",
    "beefiso": "BEEF-iso builds an imbalanced memory from deep copies of the raw arrays "
               "(build_rehearsal_memory_imbalance) and splits it with get_dataset_with_split",
}


def refusal(name: str) -> str:
    """Why ``"cim": true`` cannot run on learner ``name`` (a generic line for learners not examined)."""
    reason = REFUSED.get(name)
    if reason is None:
        return f'"cim": true has not been tried with learner "{name}" (its memory flow is untested with the plug-in)'
    return f'"cim": true cannot run on learner "{name}": {reason}'


def check_cim_support(config) -> None:
    """ConfigError, before any learner is imported or trained, when ``"cim": true`` names a refused learner."""
    name = str(config.get("model_name", "")).lower()
    if config.get("cim") and name in REFUSED:
        raise ConfigError(f"{refusal(name)}; supported: {', '.join(SUPPORTED)}")
