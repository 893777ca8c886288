"""Variant naming: the variants a config runs in a benchmark (baseline, "cim", "cim-<mode>", "<variant>-jpeg")
and the keys each sets."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ..config import CIM_MASK_MODES, EXEMPLAR_CODECS, ConfigError
from ..method.memory import get_codec
from .layout import BASELINE

__all__ = ["variants_for"]


def variants_for(config: Dict[str, Any], mask_modes: Optional[Sequence[str]] = None,
                 codecs: Optional[Sequence[str]] = None, baseline_only: bool = False,
                 no_baseline: bool = False) -> Dict[str, Dict[str, Any]]:
    """Variant name -> the keys it sets: baseline, then "cim" or one "cim-<mode>" per mask mode, each once
    per exemplar codec of ``codecs`` (the codec's ``variant_suffix`` appended: "cim-full-jpeg").

    ``mask_modes`` (from the command) wins over the config's "cim_mask"; without either the
    single CIM variant "cim" uses the default mask mode. ``codecs`` wins over "exemplar_codec".
    ``baseline_only``: the baseline alone (a reference arm, e.g. the learner with a larger memory).
    ``no_baseline``: the CIM variants alone (a budget too small for one full image per class, where only
    compressed exemplars can run; the report compares the variants with each other).
    """
    if baseline_only and no_baseline:
        raise ConfigError("--baseline-only and --no-baseline exclude each other; pass one")
    out: Dict[str, Dict[str, Any]] = {} if no_baseline else {BASELINE: {"cim": False}}
    if baseline_only:
        if mask_modes or codecs:
            raise ConfigError("--baseline-only runs no CIM variant; drop --mask-modes and --codecs")
        return out
    modes = list(dict.fromkeys(mask_modes)) if mask_modes else [config["cim_mask"]] if "cim_mask" in config else [None]
    for mode in modes:
        if mode is not None and mode not in CIM_MASK_MODES:
            raise ConfigError(f"unknown mask mode {mode!r}; valid modes: {list(CIM_MASK_MODES)}")
        for codec in dict.fromkeys(codecs or [None]):
            if codec is not None and codec not in EXEMPLAR_CODECS:
                raise ConfigError(f"unknown exemplar codec {codec!r}; valid codecs: {list(EXEMPLAR_CODECS)}")
            keys = {"cim": True, **({} if mode is None else {"cim_mask": mode}),
                    **({} if codec is None else {"exemplar_codec": codec})}
            out[("cim" if mode is None else f"cim-{mode}") + ("" if codec is None else get_codec(codec).variant_suffix)] = keys
    if no_baseline and len(out) < 2:
        raise ConfigError("--no-baseline leaves one CIM variant and nothing to compare it with; give two or more, "
                          "e.g. --mask-modes cim full --codecs jpeg")
    return out
