"""Fourier-space insertion and symmetrisation on FFTW half grids (RELION jaz conventions).

3D half grids have shape (s, s, s//2+1) indexed (z, y, x) with y, z wrapped; 2D half
spectra have shape (s, s//2+1) indexed (y, x).
"""

import numpy as np

from sta.backend import get_array_module


def _wrapped(n):
    i = np.arange(n)
    return np.where(i < n // 2, i, i - n).astype(float)


class HalfGrid:
    """Frequency coordinates of an (s, s, s//2+1) half grid, flattened once."""

    def __init__(self, s):
        self.s = s
        sh = s // 2 + 1
        zz, yy, xx = np.meshgrid(_wrapped(s), _wrapped(s), np.arange(sh, dtype=float), indexing="ij")
        self.coords = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)  # (N, 3) x, y, z
        self.shape = (s, s, sh)
        rz, ry = np.meshgrid(_wrapped(s), _wrapped(s), indexing="ij")
        self.row_z = rz.ravel()  # one entry per (z, y) row of the grid
        self.row_y = ry.ravel()
        self.row_yz2 = self.row_y ** 2 + self.row_z ** 2


def linear_xyz_half(vol, px, py, pz, complex_data):
    """RELION ``linearXYZ_FftwHalf_*``: trilinear lookup in a 3D half grid (d, h, wh)."""
    xp = get_array_module(vol)
    d, h, wh = vol.shape
    pos = px > 0
    xd = np.where(pos, px, -px)
    yd = np.where(pos, py, -py)
    zd = np.where(pos, pz, -pz)
    yd = np.where(yd < 0, yd + h, yd)
    zd = np.where(zd < 0, zd + d, zd)
    x0, y0, z0 = xd.astype(np.int64), yd.astype(np.int64), zd.astype(np.int64)
    xf, yf, zf = xd - x0, yd - y0, zd - z0
    x0 = np.minimum(x0, wh - 1)
    x1 = np.where(x0 + 1 >= wh, wh - 2, x0 + 1)
    y0 = np.clip(y0, 0, h - 1)
    y1 = (y0 + 1) % h
    z0 = np.clip(z0, 0, d - 1)
    z1 = (z0 + 1) % d

    def lerp_x(zz, yy):
        return (1 - xf) * vol[zz, yy, x0] + xf * vol[zz, yy, x1]

    vxy0 = (1 - yf) * lerp_x(z0, y0) + yf * lerp_x(z0, y1)
    vxy1 = (1 - yf) * lerp_x(z1, y0) + yf * lerp_x(z1, y1)
    v = (1 - zf) * vxy0 + zf * vxy1
    if complex_data:
        v = xp.where(xp.asarray(~pos), xp.conj(v), v)
    return v


def _slab_voxels(grid, normal, max_freq):
    """Flat indices of the half-grid voxels of RELION's x-loop for one slice: for every
    (y, z) row, ``x`` from ceil to floor of the solutions of ``|n·K| <= 1`` (clipped to the
    grid and to ``floor(sqrt(max_freq² − y² − z²))``)."""
    wh = grid.shape[2]
    yy, zz = grid.row_y, grid.row_z
    yz = normal[1] * yy + normal[2] * zz
    lim = max_freq * max_freq - grid.row_yz2
    max_x = np.floor(np.sqrt(np.where(lim >= 0, lim, 0.0)))
    if normal[0] == 0.0:
        inside = np.abs(yz) < 1.0
        x0 = np.zeros_like(yz)
        x1 = np.where(inside, wh - 1.0, -1.0)
    else:
        a0 = (-yz - 1.0) / normal[0]
        a1 = (-yz + 1.0) / normal[0]
        x0 = np.maximum(np.ceil(np.minimum(a0, a1)), 0.0)
        x1 = np.minimum(np.floor(np.maximum(a0, a1)), wh - 1.0)
    x1 = np.where(lim >= 0, np.minimum(x1, max_x), -1.0)
    counts = np.maximum(x1 - x0 + 1, 0).astype(np.int64)
    rows = np.repeat(np.arange(len(yz)), counts)
    starts = np.cumsum(counts) - counts
    x = x0[rows].astype(np.int64) + (np.arange(counts.sum()) - starts[rows])
    return rows * wh + x


def backproject_slices_gather(grid, data2d, weight2d, mats, max_freqs, dest_data, dest_weight):
    """RELION ``backprojectSlice_backward`` for a stack of slices, accumulated at once.

    For every 3D frequency K (x ≥ 0) with ``x ≤ floor(sqrt(max_freq² − y² − z²))``, the 2D
    position ``k = (A⁻¹)ᵀ K`` is used if ``|k_z| < 1``, ``|k_x| < wh`` and ``|k_y| < h/2+1``;
    data and weight get ``(1 − |k_z|)`` times the bilinear values.

    Parameters
    ----------
    grid : HalfGrid of the destination
    data2d : (n, h, wh) complex, weight2d : (n, h, wh) real
    mats : (n, 3, 3) matrices mapping reference frequencies to image frequencies
    max_freqs : (n,) ints, radius limits (``xRanges(0, f)``)
    dest_data, dest_weight : flat (N,) arrays, updated in place.
    """
    h, wh = data2d.shape[-2:]
    parts = []
    for f in range(len(mats)):
        m = np.linalg.inv(mats[f]).T
        idx = _slab_voxels(grid, m[2], int(max_freqs[f]))
        c = grid.coords[idx]
        k = c @ m.T
        sel = (k[:, 2] > -1.0) & (k[:, 2] < 1.0) & (np.abs(k[:, 0]) < wh) & (np.abs(k[:, 1]) < h // 2 + 1)
        parts.append((idx[sel], k[sel], np.full(int(sel.sum()), f)))
    if not parts:
        return
    idx = np.concatenate([p[0] for p in parts])
    k = np.concatenate([p[1] for p in parts])
    fi = np.concatenate([p[2] for p in parts])
    # one table of (re, im, weight) so the bilinear lookups are shared by data and weight
    table = np.stack([data2d.real.ravel(), data2d.imag.ravel(), weight2d.ravel()], axis=1).astype(np.float64)
    flat, bw, neg = _bilinear_flat(k[:, 0], k[:, 1], fi, h, wh)
    vals = bw[0, :, None] * table[flat[0]]
    for j in range(1, 4):
        vals += bw[j, :, None] * table[flat[j]]
    wz = 1.0 - np.abs(k[:, 2])
    vals *= wz[:, None]
    vals[neg, 1] *= -1.0  # Hermitian mate: conjugate
    n = dest_weight.shape[0]
    dest_data += np.bincount(idx, vals[:, 0], minlength=n) + 1j * np.bincount(idx, vals[:, 1], minlength=n)
    dest_weight += np.bincount(idx, vals[:, 2], minlength=n)


def _bilinear_flat(px, py, fi, h, wh):
    """Flat indices (4, n) into a (slices, h, wh) stack, bilinear weights (4, n) and the
    negative-x mask, with the clamping rules of RELION's ``linearXY_*_FftwHalf_clip``
    (x < 0 uses the Hermitian mate; x clamped at the last column, y wrapped)."""
    neg = px < 0
    xd = np.where(neg, -px, px)
    yd = np.where(neg, -py, py)
    yd = np.where(yd < 0, yd + h, yd)
    x0 = xd.astype(np.int64)
    y0 = yd.astype(np.int64)
    xf = xd - x0
    yf = yd - y0
    x0 = np.minimum(x0, wh - 1)
    x1 = np.where(x0 + 1 >= wh, wh - 2, x0 + 1)
    y0 = np.clip(y0, 0, h - 1)
    y1 = (y0 + 1) % h
    base = fi * (h * wh)
    flat = np.stack([base + y0 * wh + x0, base + y0 * wh + x1, base + y1 * wh + x0, base + y1 * wh + x1])
    bw = np.stack([(1 - xf) * (1 - yf), xf * (1 - yf), (1 - xf) * yf, xf * yf])
    return flat, bw, neg


def symmetrise_half(vol, matrices, complex_data):
    """Average a half grid over the identity and ``matrices`` (non-identity operators),
    each sampled trilinearly at ``R·K`` (RELION ``Symmetry::symmetrise_FS_*``)."""
    d, h, wh = vol.shape
    grid = HalfGrid(d)
    acc = vol.ravel().astype(np.complex128 if complex_data else np.float64).copy()
    c = grid.coords
    for r in matrices:
        p = c @ np.asarray(r, dtype=float).T
        acc += linear_xyz_half(vol, p[:, 0], p[:, 1], p[:, 2], complex_data)
    return (acc / (len(matrices) + 1)).reshape(vol.shape)
