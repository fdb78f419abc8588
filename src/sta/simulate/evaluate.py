"""Compare refined poses with a simulated project's truth (``truth.json``)."""

import json
import os

import numpy as np

from sta.geometry.euler import euler_to_matrix
from sta.geometry.symmetry import parse_symmetry
from sta.io.star import read_star


def pose_errors(project_dir, data_star, symmetry="C1"):
    """Per-particle angular (deg, smallest over the symmetry group) and centre (Å) errors.

    The estimated orientation is ``A_sub · A(rlnAngleRot/Tilt/Psi)`` and the estimated centre
    ``rlnCenteredCoordinate*Angst − A_sub · rlnOrigin*Angst`` (spec §2.3-2.6).

    Returns
    -------
    angles, offsets : ndarrays (n,)
    """
    with open(os.path.join(project_dir, "truth.json")) as fh:
        truth = {q["name"]: q for q in json.load(fh)["particles"]}
    df = read_star(os.path.join(project_dir, data_star))["particles"].df
    group = parse_symmetry(symmetry).matrices
    has_sub = "rlnTomoSubtomogramRot" in df.columns
    ang, off = [], []
    for _, r in df.iterrows():
        t = truth[r.rlnTomoParticleName]
        a_sub = (euler_to_matrix(r.rlnTomoSubtomogramRot, r.rlnTomoSubtomogramTilt, r.rlnTomoSubtomogramPsi)
                 if has_sub else np.array(t["A_sub"]))
        est = a_sub @ euler_to_matrix(r.rlnAngleRot, r.rlnAngleTilt, r.rlnAnglePsi)
        m = np.array(t["M"])
        cos = [(np.trace(m.T @ est @ g) - 1) / 2 for g in group]
        ang.append(float(np.degrees(np.arccos(np.clip(max(cos), -1, 1)))))
        c = np.array([r.rlnCenteredCoordinateXAngst, r.rlnCenteredCoordinateYAngst, r.rlnCenteredCoordinateZAngst])
        o = np.array([r.get("rlnOriginXAngst", 0.0), r.get("rlnOriginYAngst", 0.0), r.get("rlnOriginZAngst", 0.0)])
        off.append(float(np.linalg.norm(c - a_sub @ o - np.array(t["centred_A"]))))
    return np.array(ang), np.array(off)


def fsc_against_truth(project_dir, map_path):
    """FSC between a map and the project's ``ground_truth.mrc`` (Fourier-cropped to the map's
    pixel size).  Returns ``(curve, pixel_size)``; shell k is at ``box·px/k`` Å."""
    from sta.io.mrc import read_mrc
    from sta.kernels.fourier import fourier_crop_volume
    from sta.kernels.fsc import fsc

    vol, px = read_mrc(map_path)
    truth, tpx = read_mrc(os.path.join(project_dir, "ground_truth.mrc"))
    new_box = int(round(truth.shape[0] * tpx / px))
    truth = fourier_crop_volume(truth.astype(np.float64), new_box)
    if truth.shape != vol.shape:
        lo = (new_box - vol.shape[0]) // 2
        if lo < 0:
            raise ValueError(f"{map_path}: box {vol.shape[0]} is larger than the truth's {new_box} at {px:g} Å")
        truth = truth[lo:lo + vol.shape[0], lo:lo + vol.shape[1], lo:lo + vol.shape[2]]
    return fsc(vol.astype(np.float64), truth), px


def crossing_resolution(curve, box, px, threshold):
    """Resolution (Å) where ``curve`` first drops below ``threshold`` after shell 0, linearly
    interpolated between shells; Nyquist when it never does."""
    from sta.kernels.fsc import fix_origin, fractional_resolution_shell, resolution_shell

    curve = fix_origin(curve)
    shell = resolution_shell(curve, threshold)
    if shell >= len(curve) - 1:
        return 2.0 * px
    x = fractional_resolution_shell(curve, shell, threshold) if shell > 0 else 1.0
    return box * px / x
