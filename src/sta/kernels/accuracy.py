"""RELION's expected alignment accuracy of one particle (``calculateExpectedAngularErrors``).

The reference is projected at the particle's pose and at poses moved by a growing angle
(one of rot, tilt or psi, drawn per image) or a growing 3D shift (along x, y or z, drawn
per image); the accuracy is the first step at which

    Σ_images Σ_pixels |Fctf·(P₁ − P₂)|² / (2σ²) > 4.60517      (likelihood ratio 0.01)

with ``Fctf = CTF²`` for premultiplied stacks and only the pixels of the current image size.
Only the reference enters, not the data: a data-based estimate is sharpened by the
particle's own contribution to the half map and comes out several times too optimistic.
"""

import numpy as np

from sta.backend import get_array_module

P_VALUE = 4.60517  # -log(0.01)


def relion_angle_steps():
    """The angles (deg) RELION tries, in order: 0.05 steps to 0.2, 0.1 to 1, 0.2 to 2, 0.5 to 5,
    1 to 10, 2 to 20, then 5, summed in doubles as RELION does; the last one is past RELION's
    30° bound and is what it reports when nothing crosses."""
    out, a = [], 0.0
    while True:
        step = (0.05 if a < 0.2 else 0.1 if a < 1.0 else 0.2 if a < 2.0 else 0.5 if a < 5.0 else 1.0 if a < 10.0
                else 2.0 if a < 20.0 else 5.0)
        a += step
        out.append(a)
        if a > 30.0:
            return np.array(out)


def relion_shift_steps():
    """The shifts (pixels) RELION tries: 0.1 steps to 1, 0.2 to 2, 0.5 to 5, 1 to 10, then 2
    (summed in doubles); the last one is past RELION's 10-pixel bound."""
    out, s = [], 0.0
    while True:
        step = 0.1 if s < 1.0 else 0.2 if s < 2.0 else 0.5 if s < 5.0 else 1.0 if s < 10.0 else 2.0
        s += step
        out.append(s)
        if s > 10.0:
            return np.array(out)


def _first_above(steps, snr):
    above = np.flatnonzero(np.asarray(snr) > P_VALUE)
    return float(steps[above[0]] if above.size else steps[-1])


def expected_angular_error(project, angles, ctf2, inv_sigma2, choice, batch=8):
    """Smallest tried angle (deg) whose reference change exceeds the 0.01 likelihood ratio.

    Parameters
    ----------
    project : callable ``(n, n_img, 3) Euler angles -> (n, n_img, n_pix)`` reference slices
        (each image rotated by its own angles)
    angles : (3,) rot, tilt, psi (deg) of the particle
    ctf2 : (n_img, n_pix) ``Fctf`` of the pixels
    inv_sigma2 : (n_pix,) or (n_img, n_pix) ``1/(2σ²)`` (per image with ``--ctf_noise``), 0 on unused pixels
    choice : (n_img,) int 0/1/2, which Euler angle is moved for each image
    batch : int
        Angles tried per call of ``project``; like RELION, the search stops at the first
        batch that holds a crossing (the result does not depend on ``batch``).
    """
    xp = get_array_module(ctf2)
    steps = relion_angle_steps()
    n_img = ctf2.shape[0]
    base = np.asarray(angles, float)
    ref = project(np.tile(base, (1, n_img, 1)))[0]
    for a in range(0, len(steps), max(int(batch), 1)):
        part = steps[a:a + batch]
        eul = np.tile(base, (len(part), n_img, 1))
        eul[:, np.arange(n_img), choice] += part[:, None]
        diff = (project(eul) - ref[None]) * ctf2[None]
        snr = xp.sum((diff.real ** 2 + diff.imag ** 2) * inv_sigma2, axis=(1, 2))
        snr = np.asarray(snr.get() if hasattr(snr, "get") else snr)
        if (snr > P_VALUE).any():
            return _first_above(part, snr)
    return float(steps[-1])


def expected_shift_error(ref_slices, phases, ctf2, inv_sigma2, choice, batch=8):
    """Smallest tried 3D shift (pixels) whose reference change exceeds the 0.01 likelihood ratio.

    Parameters
    ----------
    ref_slices : (n_img, n_pix) reference slices at the particle's pose
    phases : callable ``(n, 3) shifts (pixels) -> (n, n_img, n_pix)`` phase factors
    ctf2, inv_sigma2 : as :func:`expected_angular_error`
    choice : (n_img,) int 0/1/2, the axis (x, y, z of the subtomogram frame) moved per image
    batch : int
        Shifts tried per call of ``phases`` and axis; the search stops at the first batch that
        holds a crossing (the result does not depend on ``batch``).
    """
    xp = get_array_module(ctf2)
    steps = relion_shift_steps()
    amp = (ref_slices.real ** 2 + ref_slices.imag ** 2) * ctf2 * ctf2 * inv_sigma2   # (n_img, n_pix)
    axes = [(axis, np.flatnonzero(np.asarray(choice) == axis)) for axis in range(3)]
    for a in range(0, len(steps), max(int(batch), 1)):
        part = steps[a:a + batch]
        snr = np.zeros(len(part))
        for axis, sel in axes:
            if not sel.size:
                continue
            t = np.zeros((len(part), 3))
            t[:, axis] = part
            ph = phases(t)[:, sel]                                # (n_part, n_sel, n_pix)
            d = 1.0 - ph                                          # |F − F·φ|² = |F|²·|1 − φ|²
            s = xp.sum((d.real ** 2 + d.imag ** 2) * amp[sel][None], axis=(1, 2))
            snr += np.asarray(s.get() if hasattr(s, "get") else s)
        if (snr > P_VALUE).any():
            return _first_above(part, snr)
    return float(steps[-1])
