"""Where a run ran: what decides whether two runs of one config and seed can agree bit for bit.

A run is reproducible to the bit on the same software, the same kind of processor (the kernels torch picks
depend on its vector instructions: AVX-512 and AVX2 machines sum in different orders) and the same thread
count. :func:`platform_info` records those in every ``results.json``; :func:`numerics_key` names the
combination, so that a report can say when its runs (or the two runs of a pair) came from different ones.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

__all__ = ["platform_info", "numerics_key"]


def _cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def platform_info(devices=None) -> Dict[str, Any]:
    """A JSON-able dict: python, torch, torchvision and numpy versions, machine, CPU model, the CPU
    instruction set torch's kernels use (``cpu_capability``, e.g. "AVX2", "AVX512"), torch's thread
    count, and for CUDA devices among ``devices`` (strings or torch.device) their names and cuDNN's
    version."""
    try:
        import torchvision  # optional here: a platform record without torchvision still names torch

        vision = torchvision.__version__
    except Exception:  # noqa: BLE001 - an absent or broken torchvision is recorded, not fatal
        vision = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = None
    info: Dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
        "numpy": np.__version__, "machine": platform.machine(), "system": sys.platform,
        "cpu": _cpu_model(), "cpu_capability": capability, "threads": torch.get_num_threads(),
    }
    cuda = sorted({str(d) for d in (devices or []) if str(d).startswith("cuda")})
    if cuda and torch.cuda.is_available():
        names = []
        for d in cuda:
            index = torch.device(d).index
            names.append(torch.cuda.get_device_name(0 if index is None else index))
        info["gpus"] = names
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def numerics_key(info: Optional[Mapping[str, Any]]) -> str:
    """A short name for what decides a run's floating-point results: torch version, the processor and its
    instruction set, the thread count, the GPUs. "unknown" for runs written before the record existed."""
    if not info:
        return "unknown"
    parts = [f"torch {info.get('torch')}", f"{info.get('cpu')} ({info.get('cpu_capability')})",
             f"{info.get('threads')} thread(s)"]
    if info.get("gpus"):
        parts.append(", ".join(info["gpus"]))
    return ", ".join(parts)
