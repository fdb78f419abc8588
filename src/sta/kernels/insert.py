"""Forward ("scatter") insertion of 2D Fourier slices into 3D half grids, with multiplicity.

Reproduces RELION's ``FourierBackprojection::backprojectSlice_forward_with_multiplicity``
(spec §4.3), used by ``relion_tomo_subtomo`` to build 3D pseudo-subtomograms.  Layout:
3D half grids of shape (d, h, wh) indexed (z, y, x) with y, z wrapped (FFTW order); 2D
half spectra (h2, wh2) indexed (y, x) with y wrapped.  Written against ``xp``.
"""

import numpy as np

from sta.backend import get_array_module
from sta.kernels.grid import checkerboard, fft_freqs, freq_axes


def slice_points(h2, x_ranges):
    """2D frequencies visited by the insertion of one slice.

    For every row ``y`` the columns ``x0(y) <= x < x_ranges[y]`` with ``x0 = 0`` where the
    row's frequency ``y'`` is >= 0 and ``x0 = 1`` otherwise (the x = 0 column of negative
    ``y'`` is the Hermitian mate of a positive one).

    Returns
    -------
    ys, xs : (n,) int64 row and column indices into the (h2, wh2) spectrum
    yy : (n,) float wrapped frequency ``y'`` (:func:`sta.kernels.grid.fft_freqs`)
    """
    x_ranges = np.asarray(x_ranges, dtype=np.int64)
    freqs = fft_freqs(h2)
    ys, xs = [], []
    for y in range(h2):
        x0 = 0 if freqs[y] >= 0 else 1
        if x_ranges[y] > x0:
            xs.append(np.arange(x0, x_ranges[y]))
            ys.append(np.full(x_ranges[y] - x0, y))
    if not xs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(float)
    ys = np.concatenate(ys)
    xs = np.concatenate(xs)
    yy = freqs[ys].astype(float)
    return ys, xs, yy


def insert_slice_forward(data2d, weight2d, x_ranges, u, v, dest_data, dest_ctf, dest_mult):
    """Scatter one 2D half spectrum into 3D half-grid sums (trilinear, with multiplicity).

    The 2D frequency ``(x, y')`` lands at ``p = x·u + y'·v`` (3D grid pixels); where
    ``p_x < 0`` the point and value are replaced by ``-p`` and the complex conjugate.  Each
    of the 8 neighbours ``g`` with ``g_x < wh`` and ``g_y``, ``g_z`` among the frequencies of
    their wrapped axes (``-h/2 <= g_y < h/2`` on even axes)
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
    insert_slices_forward(data2d[None], weight2d[None], np.asarray(x_ranges)[None], np.asarray(u)[None],
                          np.asarray(v)[None], dest_data, dest_ctf, dest_mult)


def insert_slices_forward(data2d, weight2d, x_ranges, u, v, dest_data, dest_ctf, dest_mult):
    """:func:`insert_slice_forward` for a stack of slices at once (one scatter per array).

    Shapes: ``data2d``, ``weight2d`` (n, h2, wh2); ``x_ranges`` (n, h2); ``u``, ``v`` (n, 3).
    """
    xp = get_array_module(dest_data)
    d, h, wh = dest_data.shape
    idx, mult, value, wgh = [], [], [], []
    for k in range(len(data2d)):
        part = _slice_contributions(xp, data2d[k], weight2d[k], x_ranges[k], u[k], v[k], (d, h, wh))
        if part is not None:
            for acc, item in zip((idx, mult, value, wgh), part):
                acc.append(item)
    if not idx:
        return
    idx, mult = np.concatenate(idx), np.concatenate(mult)
    value, wgh = xp.concatenate(value), xp.concatenate(wgh)
    size = d * h * wh
    idx_dev, m_dev = xp.asarray(idx), xp.asarray(mult)
    contrib = m_dev * value
    flat_d = dest_data.reshape(-1)
    flat_d += (xp.bincount(idx_dev, weights=contrib.real, minlength=size)
               + 1j * xp.bincount(idx_dev, weights=contrib.imag, minlength=size)).astype(flat_d.dtype)
    dest_ctf.reshape(-1)[...] += xp.bincount(idx_dev, weights=m_dev * wgh, minlength=size).astype(dest_ctf.dtype)
    dest_mult.reshape(-1)[...] += xp.bincount(idx_dev, weights=m_dev, minlength=size).astype(dest_mult.dtype)


def _slice_contributions(xp, data2d, weight2d, x_ranges, u, v, shape):
    """Flat destination indices, trilinear weights ``m``, values and weights of one slice,
    the Hermitian mirrors of the x = 0 neighbours included (conjugated values)."""
    d, h, wh = shape
    ys, xs, yy = slice_points(data2d.shape[0], x_ranges)
    if ys.size == 0:
        return None
    u = np.asarray(u, dtype=float)
    v = np.asarray(v, dtype=float)
    scale = np.linalg.norm(u) * np.linalg.norm(v)
    pos = xs[:, None] * u[None, :] + yy[:, None] * v[None, :]  # (n, 3) x, y, z
    conj = pos[:, 0] < 0
    pos[conj] = -pos[conj]
    value = xp.asarray(data2d)[xp.asarray(ys), xp.asarray(xs)].astype(xp.complex128)
    value = xp.where(xp.asarray(conj), xp.conj(value), value)
    wgh = xp.asarray(weight2d)[xp.asarray(ys), xp.asarray(xs)].astype(xp.float64)
    p0 = np.floor(pos).astype(np.int64)
    offsets = np.array([[dx, dy, dz] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])
    g = p0[None, :, :] + offsets[:, None, :]                       # (8, n, 3)
    # frequencies a wrapped axis of length n holds: -(n//2) .. (n+1)//2 - 1 (fft_freqs)
    ok = (g[..., 0] < wh) & (g[..., 1] >= -(h // 2)) & (g[..., 1] < (h + 1) // 2) \
        & (g[..., 2] >= -(d // 2)) & (g[..., 2] < (d + 1) // 2)
    frac = 1.0 - np.abs(pos[None] - g)
    m = np.where(ok, scale * frac[..., 0] * frac[..., 1] * frac[..., 2], 0.0)
    xi = np.where(ok, g[..., 0], 0)
    yi = g[..., 1] % h
    zi = g[..., 2] % d
    flat = (zi * h + yi) * wh + xi
    mirror = ok & (xi == 0)
    mirror_flat = (((d - zi) % d) * h + (h - yi) % h) * wh
    keep = m != 0
    sel = mirror & keep
    idx = np.concatenate([flat[keep], mirror_flat[sel]])
    mult = np.concatenate([m[keep], m[sel]])
    n = len(ys)
    which = np.broadcast_to(np.arange(n), (8, n))
    vk, vs = xp.asarray(which[keep]), xp.asarray(which[sel])
    vals = xp.concatenate([value[vk], xp.conj(value[vs])])
    wghs = xp.concatenate([wgh[vk], wgh[vs]])
    return idx, mult, vals, wghs


def centre_modulate_3d(half, xp=None):
    """Multiply a (d, h, wh) half grid by ``(−1)^(x+y+z)`` (raw indices; RELION
    ``Centering::shiftInSitu``), which moves the real-space origin to voxel ``n//2``."""
    xp = xp or get_array_module(half)
    return half * checkerboard(half.shape, xp)


def cone_weight(box, matrix, slope, sig0, xp=np):
    """Double-cone down-weighting of ``relion_tomo_subtomo --cone_weight`` on a (box, box,
    box//2+1) half grid: ``1 − exp(−t²/2)``, ``t = ρ / (|p_z|·slope + sig0)`` with
    ``p = matrix · (x, y', z')`` and ``ρ = sqrt(p_x² + p_y²)`` (grid pixels)."""
    kz, ky, kx = np.broadcast_arrays(*freq_axes((box, box, box)))
    k = np.stack([kx, ky, kz], -1).astype(float)
    p = k @ np.asarray(matrix, dtype=float).T
    rho = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)
    t = rho / (np.abs(p[..., 2]) * slope + sig0)
    return xp.asarray(1.0 - np.exp(-0.5 * t * t))
