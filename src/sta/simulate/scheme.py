"""Tilt schemes and per-tilt metadata for simulated tilt series."""

import numpy as np


def tilt_angles(tilt_min, tilt_max, step):
    """Nominal tilt angles from ``tilt_min`` to ``tilt_max`` (inclusive) in ``step`` degrees."""
    n = int(round((tilt_max - tilt_min) / step)) + 1
    return tilt_min + step * np.arange(n)


def acquisition_order(angles, scheme="dose-symmetric", group=2):
    """Index of each tilt in the order of acquisition.

    ``dose-symmetric`` (Hagen): start at the tilt closest to 0, then alternate sides in
    groups of ``group`` tilts (0, +1, -1, -2, +2, +3, -3, ... for group 2 ... as in
    ``0, +3, -3, -6, +6, +9``); ``sequential``: from the lowest to the highest angle;
    ``bidirectional``: from 0 to the max, then from 0 down to the min.
    """
    angles = np.asarray(angles, dtype=float)
    start = int(np.argmin(np.abs(angles)))
    if scheme == "sequential":
        order = list(np.argsort(angles))
    elif scheme == "bidirectional":
        pos = [i for i in np.argsort(angles) if angles[i] >= angles[start]]
        neg = [i for i in np.argsort(-angles) if angles[i] < angles[start]]
        order = pos + neg
    elif scheme == "dose-symmetric":
        plus = [i for i in np.argsort(angles) if angles[i] > angles[start]]
        minus = [i for i in np.argsort(-angles) if angles[i] < angles[start]]
        order = [start]
        side = 0  # 0: plus first
        first = True
        while plus or minus:
            take = 1 if first else group
            first = False
            src = plus if side == 0 else minus
            if not src:
                src = minus if side == 0 else plus
            for _ in range(take):
                if src:
                    order.append(src.pop(0))
            side = 1 - side
    else:
        raise ValueError(f"unknown tilt scheme {scheme!r}")
    return np.asarray(order)


def pre_exposures(angles, dose_per_tilt, scheme="dose-symmetric"):
    """Cumulative dose (e/Å²) before each tilt, in the row order of ``angles``."""
    order = acquisition_order(angles, scheme)
    dose = np.empty(len(angles))
    dose[order] = dose_per_tilt * np.arange(len(angles))
    return dose
