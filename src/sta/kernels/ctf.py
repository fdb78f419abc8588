"""CTF and dose weighting of spec §3 (CTFFIND 4.1 / RELION conventions), against ``xp``.

Units: defocus in Å (positive = underfocus), astigmatism angle and phase shift in degrees,
Cs in mm, voltage in kV, spatial frequencies in 1/Å, B-factors in Å², dose in e/Å².
"""

import numpy as np

from sta.kernels.grid import freq_axes


def wavelength(voltage_kv):
    """Relativistic electron wavelength in Å."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_values(fx, fy, defocus_u, defocus_v, defocus_angle, voltage, cs, q0, phase_shift=0.0,
               bfactor=0.0, scale=1.0, dose=None, xp=np):
    """CTF at frequencies ``(fx, fy)`` (1/Å), spec §3.1.

    All parameters broadcast against each other and against ``fx, fy`` (use trailing
    singleton axes to evaluate many tilts at once).  ``dose`` not None selects the
    Grant–Grigorieff envelope (e/Å²) instead of the B-factor envelope.
    """
    lam = wavelength(voltage)
    k1 = np.pi * lam
    k2 = np.pi / 2.0 * cs * 1e7 * lam ** 3
    k3 = np.arctan(q0 / np.sqrt(1.0 - q0 * q0))
    k5 = xp.deg2rad(xp.asarray(phase_shift, dtype=float))
    ang = xp.deg2rad(xp.asarray(defocus_angle, dtype=float))
    ca, sa = xp.cos(ang), xp.sin(ang)
    a = ca * fx + sa * fy
    b = -sa * fx + ca * fy
    u2 = fx * fx + fy * fy
    gamma = k1 * (-defocus_u * a * a - defocus_v * b * b) + k2 * u2 * u2 - k5 - k3
    ctf = -xp.sin(gamma) * scale
    ctf = ctf * envelope(u2, bfactor=bfactor, dose=dose, xp=xp)
    tiny = xp.abs(ctf) < 1e-8
    return xp.where(tiny, xp.where(ctf < 0, -1e-8, 1e-8), ctf)


def envelope(u2, bfactor=0.0, dose=None, xp=np):
    """CTF envelope: GG dose curve if ``dose`` is given else ``exp(-B u²/4)``; ``u2`` in 1/Å²."""
    if dose is not None:
        return dose_weights_from_u2(u2, dose, xp=xp)
    return xp.exp(-xp.asarray(bfactor, dtype=float) * u2 / 4.0)


def dose_weights_from_u2(u2, dose, bfactor_per_dose=0.0, xp=np):
    """Dose weight ``w(k)`` of spec §3.3 at squared frequency ``u2`` (1/Å²), ``w(0) = 1``.

    Grant & Grigorieff: ``exp(-D / (2 (0.245 k^-1.665 + 2.81)))``; with a per-dose B-factor
    β > 0: ``exp(-β D k² / 4)``.
    """
    dose = xp.asarray(dose, dtype=float)
    if bfactor_per_dose and bfactor_per_dose > 0:
        return xp.exp(-bfactor_per_dose * dose * u2 / 4.0)
    k = xp.sqrt(u2)
    with np.errstate(divide="ignore"):
        crit = 0.245 * xp.where(k > 0, k, 1.0) ** (-1.665) + 2.81
    w = xp.exp(-0.5 * dose / crit)
    return xp.where(k > 0, w, 1.0)


def ctf_2d(box, pixel_size, defocus_u, defocus_v, defocus_angle, voltage, cs, q0, phase_shift=0.0,
           bfactor=0.0, scale=1.0, dose=None, xp=np):
    """CTF on the ``(box, box//2+1)`` half grid at ``pixel_size`` Å.

    Per-image parameters may be arrays of shape (n,); the result is then (n, box, box//2+1).
    """
    ky, kx = freq_axes((box, box), xp)
    fx = kx / (box * pixel_size)
    fy = ky / (box * pixel_size)
    params = [defocus_u, defocus_v, defocus_angle, phase_shift, bfactor, scale]
    batched = any(np.ndim(p) > 0 for p in params) or (dose is not None and np.ndim(dose) > 0)
    if batched:
        def ex(p):
            return xp.asarray(p, dtype=float).reshape(-1, 1, 1)
        defocus_u, defocus_v, defocus_angle, phase_shift, bfactor, scale = (ex(p) for p in params)
        if dose is not None:
            dose = ex(dose)
    return ctf_values(fx, fy, defocus_u, defocus_v, defocus_angle, voltage, cs, q0, phase_shift,
                      bfactor, scale, dose, xp=xp)


def dose_weights_2d(box, pixel_size, doses, bfactor_per_dose=0.0, xp=np):
    """Dose weights for every tilt on the half grid, shape (n, box, box//2+1)."""
    ky, kx = freq_axes((box, box), xp)
    u2 = (kx * kx + ky * ky) / (box * pixel_size) ** 2
    d = xp.asarray(doses, dtype=float).reshape(-1, 1, 1)
    return dose_weights_from_u2(u2, d, bfactor_per_dose, xp=xp)
