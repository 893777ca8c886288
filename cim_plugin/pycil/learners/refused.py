"""The learners that keep a memory but that CIM refuses, each with the reason (checked against the pinned
PyCIL). ``"cim": true`` on one of them is a ConfigError naming it, before any learner is imported.

One file for all of them: a refused learner is one declaration (its name and the reason), with no code of
its own. A learner that becomes supported moves to a file of its own (see docs/adding_a_learner.md).
"""

from __future__ import annotations

from .registry import LearnerSpec, register

__all__ = ["SPECS"]

_RMM = ("RMM decides each phase's memory size itself (new_memory_size, m_rate) and builds the memory with its own "
        "_construct_exemplar on raw images; CIM's memory is a byte budget split by herding over compressed candidates")

SPECS = tuple(register(spec) for spec in (
    LearnerSpec("podnet", refused="PODNet's class-balanced fine-tuning rebuilds its own raw-image memory "
                                  "(_construct_exemplar / _construct_exemplar_unified) and then indexes _data_memory "
                                  "and _targets_memory directly, outside build_rehearsal_memory"),
    LearnerSpec("coil", refused="COIL builds its memory by calling _construct_exemplar directly (not "
                                "build_rehearsal_memory) and its optimal-transport classifier transfer reads class "
                                "means from the raw memory (_extract_class_means_with_memory)"),
    LearnerSpec("gem", refused="PyCIL's GEM stops without CIM too on the pinned PyCIL: _update_representation copies "
                               "params.grad of every parameter, and parameters the old-task loss does not reach have "
                               "none (AttributeError)"),
    LearnerSpec("rmm-icarl", refused=_RMM),
    LearnerSpec("rmm-foster", refused=_RMM),
    LearnerSpec("beefiso", refused="BEEF-iso builds an imbalanced memory from deep copies of the raw arrays "
                                   "(build_rehearsal_memory_imbalance) and splits it with get_dataset_with_split"),
))
