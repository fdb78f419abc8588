"""Compare refined poses with a simulated project's truth (``truth.json``)."""

import json
import os

import numpy as np

from sta.geometry.euler import angular_distance, euler_to_matrix
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
    rep = pose_error_report(project_dir, data_star, symmetry)
    return rep["angles"], rep["offsets"]


def _angle(rot):
    """Rotation angle(s) in degrees of (..., 3, 3) matrices."""
    return angular_distance(np.eye(3), rot)


def pose_error_report(project_dir, data_star, symmetry="C1"):
    """Pose errors against the truth, raw and with each half-set's gauge removed.

    A refinement fixes the frame of its reference only up to the motions that leave the problem
    unchanged: a rotation about the symmetry axis (any rotation in C1) and a shift of the map, one
    per half-set because each half has its own reference. A whole half-set that turned with its
    map is not wrong, so simulation studies compare poses after aligning the map to the truth.
    Here that alignment is estimated from the poses: per half (``rlnRandomSubset``), the rotation
    ``G`` nearest (Frobenius) to the mean of the error rotations ``Mᵀ·est·g`` and the map shift
    ``t`` that best explains the centre errors ``e ≈ M·t`` (least squares) are removed.

    Returns
    -------
    dict with ``angles``, ``offsets`` (raw, as :func:`pose_errors`), ``angles_gauge``,
    ``offsets_gauge`` (residuals after the alignment) and ``gauge``: per half
    ``(rotation angle in degrees, rotation axis, shift in Å)``.
    """
    with open(os.path.join(project_dir, "truth.json")) as fh:
        truth = {q["name"]: q for q in json.load(fh)["particles"]}
    df = read_star(os.path.join(project_dir, data_star))["particles"].df
    group = parse_symmetry(symmetry).matrices
    has_sub = "rlnTomoSubtomogramRot" in df.columns
    err_rot, err_cen, m_all = [], [], []
    for _, r in df.iterrows():
        t = truth[r.rlnTomoParticleName]
        a_sub = (euler_to_matrix(r.rlnTomoSubtomogramRot, r.rlnTomoSubtomogramTilt, r.rlnTomoSubtomogramPsi)
                 if has_sub else np.array(t["A_sub"]))
        est = a_sub @ euler_to_matrix(r.rlnAngleRot, r.rlnAngleTilt, r.rlnAnglePsi)
        m = np.array(t["M"])
        cands = m.T @ est @ group
        err_rot.append(cands[int(np.argmin(_angle(cands)))])
        c = np.array([r.rlnCenteredCoordinateXAngst, r.rlnCenteredCoordinateYAngst, r.rlnCenteredCoordinateZAngst])
        o = np.array([r.get("rlnOriginXAngst", 0.0), r.get("rlnOriginYAngst", 0.0), r.get("rlnOriginZAngst", 0.0)])
        err_cen.append(c - a_sub @ o - np.array(t["centred_A"]))
        m_all.append(m)
    err_rot, err_cen, m_all = np.array(err_rot), np.array(err_cen), np.array(m_all)
    half = (df["rlnRandomSubset"].to_numpy(int) if "rlnRandomSubset" in df.columns else np.ones(len(df), int))
    ang_g, off_g, gauge = np.empty(len(df)), np.empty(len(df)), {}
    for h in np.unique(half):
        sel = half == h
        u, _, vt = np.linalg.svd(err_rot[sel].mean(axis=0))
        g = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
        shift = np.einsum("nji,nj->i", m_all[sel], err_cen[sel]) / sel.sum()
        ang_g[sel] = angular_distance(g, err_rot[sel])
        off_g[sel] = np.linalg.norm(err_cen[sel] - m_all[sel] @ shift, axis=1)
        axis = np.array([g[2, 1] - g[1, 2], g[0, 2] - g[2, 0], g[1, 0] - g[0, 1]])
        gauge[int(h)] = (float(_angle(g)), axis / max(np.linalg.norm(axis), 1e-12), shift)
    return {"angles": _angle(err_rot), "offsets": np.linalg.norm(err_cen, axis=1), "angles_gauge": ang_g,
            "offsets_gauge": off_g, "gauge": gauge}


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
