"""PyCIL's own console lines, so that a PyCIL user's log parser reads a plug-in run as it reads PyCIL's.

PyCIL's ``trainer._train`` logs after every phase ``CNN: {grouped}``, (``NME: {grouped}``), ``CNN top1 curve``,
``CNN top5 curve``, (``NME top1 curve``, ``NME top5 curve``), ``Average Accuracy (CNN)``, (``Average Accuracy
(NME)``; without NME ``No NME accuracy.`` first), and after the last ``Forgetting (CNN)`` (and NME) over its
accuracy matrix of 10-class groups. The lines here are built from ``results.json``'s phases (so a resumed run
prints the whole curves), with the same words and order. Numbers are plain floats (``[20.0, 11.25]``; PyCIL
on numpy 2 writes ``np.float64(20.0)``). After the last phase the plug-in adds its own forgetting over tasks
(``forgetting_cnn`` of results.json) and the memory held.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["grouped", "group_forgetting", "phase_lines", "final_lines"]


def grouped(accy: Mapping[str, Any]) -> Dict[str, float]:
    """PyCIL's ``accy["grouped"]`` (total, "00-09", ..., old, new) with plain floats, in PyCIL's key order."""
    return {str(k): float(v) for k, v in accy["grouped"].items()}


def _group_start(key: str) -> int:
    return int(key.split("-")[0])


def group_forgetting(groups_per_phase: Sequence[Mapping[str, float]]) -> Optional[float]:
    """Forgetting (%) as PyCIL's trainer.py reports it, from each phase's grouped accuracies.

    The matrix holds, for each class group ("00-09", "10-19", ...: 10 class ids each), its accuracy after
    every phase (0 before the group is seen), and as PyCIL's T x T table, all-zero rows when there are fewer
    groups than phases (T). For each of the first T-1 rows: the best accuracy over the phases minus the
    accuracy after the last; the mean of those. None with one phase. (With more groups than phases PyCIL's
    own table overflows and its run stops; here the first T-1 groups count.)
    """
    phases = len(groups_per_phase)
    if phases < 2:
        return None
    keys = sorted({k for g in groups_per_phase for k in g if "-" in k}, key=_group_start)
    table = np.zeros((max(len(keys), phases), phases))  # groups x phases
    for row, key in enumerate(keys):
        table[row] = [float(g.get(key, 0.0)) for g in groups_per_phase]
    drops = (table.max(axis=1) - table[:, -1])[: phases - 1]
    return float(np.mean(drops))


def _curve(phases: Sequence[Mapping[str, Any]], key: str) -> List[float]:
    return [float(p[key]) for p in phases]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def phase_lines(phases: Sequence[Mapping[str, Any]]) -> List[str]:
    """The lines PyCIL's trainer logs after the last of ``phases`` (results.json phase records)."""
    last = phases[-1]
    has_nme = all(p.get("top1_nme") is not None for p in phases)
    lines = []
    if has_nme:
        lines += [f"CNN: {last.get('grouped_cnn')}", f"NME: {last.get('grouped_nme')}"]
    else:
        lines += ["No NME accuracy.", f"CNN: {last.get('grouped_cnn')}"]
    cnn1, cnn5 = _curve(phases, "top1_cnn"), _curve(phases, "top5_cnn")
    lines += [f"CNN top1 curve: {cnn1}", f"CNN top5 curve: {cnn5}"]
    if has_nme:
        lines += [f"NME top1 curve: {_curve(phases, 'top1_nme')}", f"NME top5 curve: {_curve(phases, 'top5_nme')}"]
    lines.append(f"Average Accuracy (CNN): {_mean(cnn1)}")
    if has_nme:
        lines.append(f"Average Accuracy (NME): {_mean(_curve(phases, 'top1_nme'))}")
    return lines


def final_lines(results: Mapping[str, Any]) -> List[str]:
    """After the last phase: PyCIL's forgetting lines, then the plug-in's forgetting over tasks and the memory."""
    phases = results["phases"]
    lines = []
    for kind in ("cnn", "nme"):
        groups = [p.get(f"grouped_{kind}") for p in phases]
        if all(g is not None for g in groups):
            value = group_forgetting(groups)
            if value is not None:
                lines.append(f"Forgetting ({kind.upper()}): {value}")
    tasks = results.get("forgetting_cnn")
    if tasks is not None:
        lines.append(f"Forgetting over tasks (CNN, results.json forgetting_cnn): {tasks}")
    last = phases[-1]
    per_class = last.get("exemplars_per_class") or {}
    spread = (f" ({per_class['min']}-{per_class['max']} per class, mean {per_class['mean']:.1f})"
              if per_class else "")
    lines.append(f"Memory held: {last['exemplars']} exemplars{spread}, {last['memory_bytes']} bytes of a "
                 f"{last['memory_budget_bytes']}-byte budget ({'CIM' if results.get('cim') else 'baseline'})")
    return lines
