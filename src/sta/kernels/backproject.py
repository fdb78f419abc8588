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
        self.yz2 = yy.ravel() ** 2 + zz.ravel() ** 2
        self.x = xx.ravel()


def linear_xy_half(img, px, py, complex_data):
    """RELION ``linearXY_*_FftwHalf_clip``: bilinear lookup in a 2D half spectrum (h, wh).

    Points with x < 0 use the Hermitian mate (conjugated for complex data).
    """
    xp = get_array_module(img)
    h, wh = img.shape
    neg = px < 0
    xd = np.where(neg, -px, px)
    yd = np.where(neg, -py, py)
    yd = np.where(yd < 0, yd + h, yd)
    x0 = xd.astype(np.int64)
    y0 = yd.astype(np.int64)
    xf = xd - x0
    yf = yd - y0
    x0 = np.minimum(x0, wh - 1)
    x1 = x0 + 1
    x1 = np.where(x1 >= wh, wh - 2, x1)
    y0 = np.clip(y0, 0, h - 1)
    y1 = (y0 + 1) % h
    v0 = (1 - xf) * img[y0, x0] + xf * img[y0, x1]
    v1 = (1 - xf) * img[y1, x0] + xf * img[y1, x1]
    v = (1 - yf) * v0 + yf * v1
    if complex_data:
        v = xp.where(xp.asarray(neg), xp.conj(v), v)
    return v


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


def backproject_slice_gather(grid, data2d, weight2d, a, max_freq, dest_data, dest_weight):
    """RELION ``backprojectSlice_backward``: add one 2D slice into 3D half-grid sums.

    For every 3D frequency K (x ≥ 0) with ``x ≤ floor(sqrt(max_freq² − y² − z²))``, the 2D
    position ``k = (A⁻¹)ᵀ K`` is used if ``|k_z| < 1``, ``|k_x| < wh`` and ``|k_y| < h/2+1``;
    data and weight get ``(1 − |k_z|)`` times the bilinear values.

    Parameters
    ----------
    grid : HalfGrid of the destination
    data2d : (h, wh) complex, weight2d : (h, wh) real
    a : (3, 3) matrix mapping reference frequencies to image frequencies
    max_freq : int
        Radius limit (``xRanges(0, f)``).
    dest_data, dest_weight : flat (N,) arrays, updated in place.
    """
    m = np.linalg.inv(a).T
    h, wh = data2d.shape
    lim = max_freq * max_freq - grid.yz2
    ok = lim >= 0
    ok &= grid.x <= np.floor(np.sqrt(np.where(ok, lim, 0.0)))
    kz = grid.coords @ m[2]
    ok &= (kz > -1.0) & (kz < 1.0)
    idx = np.nonzero(ok)[0]
    c = grid.coords[idx]
    kx = c @ m[0]
    ky = c @ m[1]
    sel = (np.abs(kx) < wh) & (np.abs(ky) < h // 2 + 1)
    idx, kx, ky = idx[sel], kx[sel], ky[sel]
    wz = 1.0 - np.abs(kz[idx])
    dest_data[idx] += wz * linear_xy_half(data2d, kx, ky, True)
    dest_weight[idx] += wz * linear_xy_half(weight2d, kx, ky, False)


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
