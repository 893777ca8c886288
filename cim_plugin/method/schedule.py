"""CIM's per-phase schedule: when new-class boxes are refreshed and how likely the compression augmentation is.

Boxes are refreshed (and the augmentation's probability raised by ``randombbxblur_prob_incre``) before the
epochs ``interval``, ``2 * interval``, ... of a phase. An interval of at least the phase's epoch count would
never do either, so it is scaled to the schedule with the official ratio (boxes every 40 of 170 epochs).
"""

from __future__ import annotations

import logging
from typing import Optional, Set, Tuple

__all__ = ["OFFICIAL_CAM_INTERVAL", "OFFICIAL_EPOCHS", "augment_probability", "phase_cam_interval", "refresh_due",
           "scaled_cam_interval"]

# The official schedule refreshes boxes every 40 of its 170 epochs; a shorter phase keeps that ratio.
OFFICIAL_CAM_INTERVAL, OFFICIAL_EPOCHS = 40, 170

log = logging.getLogger("cim_plugin")


def scaled_cam_interval(interval: int, epochs: Optional[int]) -> int:
    """The box-refresh interval a phase of ``epochs`` epochs uses: ``interval`` when it is below ``epochs``
    (or the epoch count is unknown), else the official ratio, ``round(epochs * 40 / 170)``, at least 1."""
    if epochs is None or int(interval) < int(epochs):
        return int(interval)
    return max(1, round(int(epochs) * OFFICIAL_CAM_INTERVAL / OFFICIAL_EPOCHS))


def phase_cam_interval(interval: int, epochs: Optional[int], warned: Set[Tuple[int, Optional[int]]]) -> int:
    """:func:`scaled_cam_interval`, with one warning per (configured interval, epochs) that was scaled
    (``warned`` remembers them across phases)."""
    used = scaled_cam_interval(interval, epochs)
    if used != interval and (interval, epochs) not in warned:
        warned.add((interval, epochs))
        log.warning(
            "cam_update_interval %d is not below this phase's %d epochs, so its boxes would never be refreshed "
            "and the compression augmentation would never start: using %d instead (the official 40 of 170 "
            "epochs: round(%d * 40 / 170), at least 1). Set \"cam_update_interval\" below the epoch count to "
            "choose it yourself.", interval, epochs, used, epochs)
    return used


def refresh_due(epoch: int, interval: int) -> bool:
    """True before the epochs ``interval``, ``2 * interval``, ... (0-based) of a phase."""
    return epoch > 0 and epoch % interval == 0


def augment_probability(epoch: int, interval: int, step: float) -> float:
    """The compression augmentation's probability from epoch ``epoch`` on: ``step`` per refresh so far, at most 1."""
    return min(1.0, step * (epoch // interval))
