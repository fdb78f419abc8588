"""Forward ("scatter") insertion of 2D Fourier slices into 3D half grids, with multiplicity.

Reproduces RELION's ``FourierBackprojection::backprojectSlice_forward_with_multiplicity``
(spec §4.3), used by ``relion_tomo_subtomo`` to build 3D pseudo-subtomograms.  Layout:
3D half grids of shape (d, h, wh) indexed (z, y, x) with y, z wrapped (FFTW order); 2D
half spectra (h2, wh2) indexed (y, x) with y wrapped.  Written against ``xp``.
"""

import numpy as np

from sta.backend import get_array_module


def slice_points(h2, x_ranges):
    """2D frequencies visited by the insertion of one slice.

    For every row ``y`` the columns ``x0(y) <= x < x_ranges[y]`` with ``x0 = 0`` for
    ``y < h2/2`` and ``x0 = 1`` otherwise (the x = 0 column of negative y is the Hermitian
    mate of a positive one).

    Returns
    -------
    ys, xs : (n,) int64 row and column indices into the (h2, wh2) spectrum
    yy : (n,) float wrapped frequency ``y`` or ``y - h2``
    """
    x_ranges = np.asarray(x_ranges, dtype=np.int64)
    ys, xs = [], []
    for y in range(h2):
        x0 = 0 if y < h2 // 2 else 1
        if x_ranges[y] > x0:
            xs.append(np.arange(x0, x_ranges[y]))
            ys.append(np.full(x_ranges[y] - x0, y))
    if not xs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(float)
    ys = np.concatenate(ys)
    xs = np.concatenate(xs)
    yy = np.where(ys < h2 // 2, ys, ys - h2).astype(float)
    return ys, xs, yy


def insert_slice_forward(data2d, weight2d, x_ranges, u, v, dest_data, dest_ctf, dest_mult):
    """Scatter one 2D half spectrum into 3D half-grid sums (trilinear, with multiplicity).

    The 2D frequency ``(x, y')`` lands at ``p = x·u + y'·v`` (3D grid pixels); where
    ``p_x < 0`` the point and value are replaced by ``-p`` and the complex conjugate.  Each
    of the 8 neighbours ``g`` with ``g_x < wh``, ``-h/2 <= g_y < h/2``, ``-d/2 <= g_z < d/2``
    receives ``m = |u|·|v|·Π(1 − |p − g|)`` times the value (data), times the weight
    (``dest_ctf``) and ``m`` itself (``dest_mult``); neighbours with ``g_x = 0`` also
    receive the Hermitian mirror at ``(0, −g_y, −g_z)`` (conjugated data).

    Parameters
    ----------
    data2d : (h2, wh2) complex
        Slice spectrum (CTF-multiplied data).
    weight2d : (h2, wh2) real
        Slice weights (CTF²).
    x_ranges : (h2,) int
        Per row, one past the last column inserted (RELION ``findDoseXRanges``).
    u, v : (3,) float
        First two rows of the 3x3 part of the (scaled) projection matrix: the 3D
        directions of the 2D x and y frequency axes, in 3D grid pixels per 2D pixel.
    dest_data : (d, h, wh) complex, dest_ctf, dest_mult : (d, h, wh) real
        Accumulators, updated in place.
    """
    xp = get_array_module(dest_data)
    d, h, wh = dest_data.shape
    ys, xs, yy = slice_points(data2d.shape[0], x_ranges)
    if ys.size == 0:
        return
    u = np.asarray(u, dtype=float)
    v = np.asarray(v, dtype=float)
    scale = np.linalg.norm(u) * np.linalg.norm(v)
    pos = xs[:, None] * u[None, :] + yy[:, None] * v[None, :]  # (n, 3) x, y, z
    conj = pos[:, 0] < 0
    pos[conj] = -pos[conj]
    value = xp.asarray(data2d)[xp.asarray(ys), xp.asarray(xs)].astype(xp.complex128)
    cj = xp.asarray(conj)
    value = xp.where(cj, xp.conj(value), value)
    wgh = xp.asarray(weight2d)[xp.asarray(ys), xp.asarray(xs)].astype(xp.float64)
    p0 = np.floor(pos).astype(np.int64)
    flat_d = dest_data.reshape(-1)
    flat_c = dest_ctf.reshape(-1)
    flat_m = dest_mult.reshape(-1)
    size = d * h * wh
    acc_idx, acc_m, acc_mirror = [], [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                g = p0 + np.array([dx, dy, dz])
                ok = (g[:, 0] < wh) & (g[:, 1] >= -(h // 2)) & (g[:, 1] < h // 2) \
                    & (g[:, 2] >= -(d // 2)) & (g[:, 2] < d // 2)
                frac = 1.0 - np.abs(pos - g)
                m = scale * frac[:, 0] * frac[:, 1] * frac[:, 2]
                m = np.where(ok, m, 0.0)
                xi = np.where(ok, g[:, 0], 0)
                yi = np.where(g[:, 1] >= 0, g[:, 1], g[:, 1] + h) % h
                zi = np.where(g[:, 2] >= 0, g[:, 2], g[:, 2] + d) % d
                acc_idx.append((zi * h + yi) * wh + xi)
                acc_m.append(m)
                mirror = ok & (xi == 0)
                acc_mirror.append(np.where(mirror, (((d - zi) % d) * h + (h - yi) % h) * wh, -1))
    idx = np.stack(acc_idx)                 # (8, n)
    m = np.stack(acc_m)                     # (8, n)
    mir = np.stack(acc_mirror)              # (8, n), -1 = no mirror
    _scatter(xp, flat_d, flat_c, flat_m, idx.ravel(), m, value, wgh, size, conjugate=False)
    has = mir >= 0
    if has.any():
        m_mir = np.where(has, m, 0.0)
        _scatter(xp, flat_d, flat_c, flat_m, np.where(has, mir, 0).ravel(), m_mir, value, wgh, size,
                 conjugate=True)


def _scatter(xp, flat_d, flat_c, flat_m, idx, m, value, wgh, size, conjugate):
    """Add ``m·value``, ``m·wgh`` and ``m`` at flat indices ``idx`` (8·n,) with bincount."""
    m_dev = xp.asarray(m)                                   # (8, n)
    val = xp.conj(value) if conjugate else value
    contrib = (m_dev * val[None, :]).ravel()
    idx_dev = xp.asarray(idx)
    flat_d += (xp.bincount(idx_dev, weights=contrib.real, minlength=size)
               + 1j * xp.bincount(idx_dev, weights=contrib.imag, minlength=size)).astype(flat_d.dtype)
    flat_c += xp.bincount(idx_dev, weights=(m_dev * wgh[None, :]).ravel(), minlength=size).astype(flat_c.dtype)
    flat_m += xp.bincount(idx_dev, weights=m_dev.ravel(), minlength=size).astype(flat_m.dtype)


def centre_modulate_3d(half, xp=None):
    """Multiply a (d, h, wh) half grid by ``(−1)^(x+y+z)`` (raw indices; RELION
    ``Centering::shiftInSitu``), which moves the real-space origin to voxel ``n//2``."""
    xp = xp or get_array_module(half)
    d, h, wh = half.shape
    sz = 1 - 2 * (xp.arange(d) % 2)
    sy = 1 - 2 * (xp.arange(h) % 2)
    sx = 1 - 2 * (xp.arange(wh) % 2)
    return half * (sz[:, None, None] * sy[None, :, None] * sx[None, None, :])


def cone_weight(box, matrix, slope, sig0, xp=np):
    """Double-cone down-weighting of ``relion_tomo_subtomo --cone_weight`` on a (box, box,
    box//2+1) half grid: ``1 − exp(−t²/2)``, ``t = ρ / (|p_z|·slope + sig0)`` with
    ``p = matrix · (x, y', z')`` and ``ρ = sqrt(p_x² + p_y²)`` (grid pixels)."""
    i = np.arange(box)
    w = np.where(i < box // 2, i, i - box).astype(float)
    x = np.arange(box // 2 + 1, dtype=float)
    zz, yy, xx = np.meshgrid(w, w, x, indexing="ij")
    k = np.stack([xx, yy, zz], -1)
    p = k @ np.asarray(matrix, dtype=float).T
    rho = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)
    t = rho / (np.abs(p[..., 2]) * slope + sig0)
    return xp.asarray(1.0 - np.exp(-0.5 * t * t))
