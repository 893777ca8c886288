"""Where a run's wall time goes, per (config, variant): the report's time table.

Every phase of results.json records ``wall_s``, ``train_s`` (inside the learner's training loops, ``_train``
or BiC's ``_run``: its epochs, and with CIM the per-epoch hook) and, for CIM, ``seconds`` of its own work
(``meta_steps``, ``box_refresh`` inside the hook; ``memory_build`` after training). Per run the phases are
summed; the table gives mean ± std over seeds of: the training epochs alone (``train_s`` − the meta steps and box refreshes made
inside it), the meta steps (all: those between epochs and the round after the last one,
``meta_after_training``), the box refreshes, the memory build, and the rest (``wall_s`` − ``train_s`` −
memory build − the round after the last epoch: evaluation, data set-up, checkpoints; runs older than the
``meta_after_training`` key count that round out of the epochs and into the rest); epochs and rest are
unknown ("—") for a run whose training loop was not timed. Beside them, not a part of its own: the memory's
codec (``seconds.codec``: encoding candidates and exemplars, compressing for herding, decoding; spread over
the parts above), in seconds and as its largest share of one phase's wall time.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from .stats import fmt, mean_std

__all__ = ["time_rows", "time_section"]

PARTS = ("epochs", "meta_steps", "box_refresh", "memory_build", "rest")


def _split(run: Dict[str, Any]) -> Dict[str, float]:
    """Seconds of one run, summed over its phases, by part (see the module docstring)."""
    total = {part: 0.0 for part in PARTS + ("wall", "codec", "codec_share")}
    for phase in run.get("phases") or []:
        seconds = phase.get("seconds") or {}
        meta, refresh, build, after = (float(seconds.get(k, 0.0)) for k in
                                       ("meta_steps", "box_refresh", "memory_build", "meta_after_training"))
        wall, train = float(phase.get("wall_s") or 0.0), float(phase.get("train_s") or 0.0)
        if train <= 0 or train < meta - after + refresh:  # the training loop was not timed (runs made before
            train = math.nan  # BiC's _run was): its epochs and the rest are unknown, not negative
        total["wall"] += wall
        total["epochs"] += train - (meta - after) - refresh  # the round after the last epoch is not in train_s
        total["meta_steps"] += meta
        total["box_refresh"] += refresh
        total["memory_build"] += build
        total["rest"] += wall - train - build - after
        codec = float(seconds.get("codec", 0.0))
        total["codec"] += codec
        total["codec_share"] = max(total["codec_share"], codec / wall if wall > 0 else 0.0)
    return total


def time_rows(groups, order) -> List[Dict[str, Any]]:
    """Per (config, variant): mean ± std over seeds of each part's seconds and of the wall time."""
    rows = []
    for stem, variant in order:
        splits = [_split(run) for run in groups[(stem, variant)].values()]
        if not splits or not any(s["wall"] for s in splits):
            continue
        rows.append({"config": stem, "variant": variant,
                     **{part: mean_std([s[part] for s in splits])[:2] for part in PARTS + ("wall", "codec")},
                     "codec_share": max(s["codec_share"] for s in splits)})
    return rows


def time_section(groups, order) -> List[str]:
    """Markdown: the time table (empty when no run recorded its times)."""
    rows = time_rows(groups, order)
    if not rows:
        return []
    lines = ["", "## Where the time goes (seconds per run, mean ± std over seeds)", "",
             "| config | variant | wall | training epochs | meta steps | box refreshes | memory build | rest "
             "| codec (largest share of a phase) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        codec = f"{fmt(*r['codec'], 1)} ({100 * r['codec_share']:.1f} %)" if r["codec"][0] else ""
        lines.append("| " + " | ".join([r["config"], r["variant"]] + [fmt(*r[k], 0) for k in ("wall",) + PARTS]
                                       + [codec]) + " |")
    lines += ["", "Summed over phases. Training epochs = time inside the learner's training loop less CIM's meta "
              "steps and box refreshes (with CIM it includes the extra replayed exemplars and the compression "
              "augmentation); rest = evaluation, data set-up and checkpoints. Codec = the memory's encoding and "
              "decoding (candidates, herding, the phase's replay set, NME means), counted inside the other columns; "
              "its share is the largest fraction of one phase's wall time over phases and seeds."]
    return lines
