"""Fourier-space insertion and symmetrisation on FFTW half grids (RELION jaz conventions).

3D half grids have shape (s, s, s//2+1) indexed (z, y, x) with y, z wrapped (Nyquist
negative, :func:`sta.kernels.grid.fft_freqs`); 2D half spectra have shape (s, s//2+1)
indexed (y, x).
"""

import numpy as np

from sta.backend import get_array_module
from sta.kernels.grid import fft_freqs


class HalfGrid:
    """Frequency coordinates of an (s, s, s//2+1) half grid.

    Only per-row tables (one entry per (z, y) row, s² values) are stored; the (x, y, z)
    coordinates of voxels are made on demand by :meth:`coords_at`, so the grid costs
    O(s²) memory rather than 24·s²·(s//2+1) bytes.
    """

    def __init__(self, s):
        self.s = s
        sh = s // 2 + 1
        self.shape = (s, s, sh)
        w = fft_freqs(s).astype(float)
        self.row_z = np.repeat(w, s)  # one entry per (z, y) row of the grid
        self.row_y = np.tile(w, s)
        self.row_yz2 = self.row_y ** 2 + self.row_z ** 2

    @property
    def size(self):
        """Number of voxels, s·s·(s//2+1)."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    def coords_at(self, idx):
        """(n, 3) float (x, y, z) frequencies of the voxels with flat indices ``idx``."""
        wh = self.shape[2]
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx // wh
        return np.stack([(idx - rows * wh).astype(float), self.row_y[rows], self.row_z[rows]], axis=1)

    @property
    def coords(self):
        """(N, 3) (x, y, z) frequencies of every voxel (made on each access: 24·N bytes)."""
        return self.coords_at(np.arange(self.size))


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


def gather_slice(grid, data2d, weight2d, mat, max_freq):
    """Voxels one slice of RELION ``backprojectSlice_backward`` reaches, and their values.

    For every 3D frequency K (x ≥ 0) with ``x ≤ floor(sqrt(max_freq² − y² − z²))``, the 2D
    position ``k = (A⁻¹)ᵀ K`` is used if ``|k_z| < 1``, ``|k_x| < wh`` and ``|k_y| < h/2+1``;
    data and weight get ``(1 − |k_z|)`` times the bilinear values.

    Parameters
    ----------
    grid : HalfGrid of the destination
    data2d : (h, wh) complex, weight2d : (h, wh) real
    mat : (3, 3) matrix mapping reference frequencies to image frequencies
    max_freq : int, radius limit (``xRanges(0, f)``)

    Returns
    -------
    idx : (n,) int64 flat voxel indices; re, im, weight : (n,) float64 values to add there.
    """
    h, wh = data2d.shape[-2:]
    m = np.linalg.inv(mat).T
    idx = _slab_voxels(grid, m[2], int(max_freq))
    k = grid.coords_at(idx) @ m.T
    sel = (k[:, 2] > -1.0) & (k[:, 2] < 1.0) & (np.abs(k[:, 0]) < wh) & (np.abs(k[:, 1]) < h // 2 + 1)
    idx, k = idx[sel], k[sel]
    flat, bw, neg = _bilinear_flat(k[:, 0], k[:, 1], 0, h, wh)
    wz = 1.0 - np.abs(k[:, 2])
    out = []
    for j, plane in enumerate((data2d.real, data2d.imag, weight2d)):
        table = np.ascontiguousarray(plane, dtype=np.float64).ravel()
        v = bw[0] * table[flat[0]]
        for c in range(1, 4):
            v += bw[c] * table[flat[c]]
        v *= wz
        if j == 1:
            v[neg] *= -1.0  # Hermitian mate: conjugate
        out.append(v)
    return idx, out[0], out[1], out[2]


class SliceAccumulator:
    """Adds gathered slices to flat half grids ``dest_data`` (complex) / ``dest_weight``.

    Entries (voxel index and values) are collected slice by slice and summed into the
    destination with one ``bincount`` per component whenever more than ``max_entries`` are
    held (``None``: only at :meth:`flush`), so the working memory is about
    40·max_entries + 8·N bytes for an N-voxel grid, whatever the number of slices.
    """

    def __init__(self, grid, dest_data, dest_weight, max_entries=None):
        self.grid = grid
        self.dest_data = dest_data
        self.dest_weight = dest_weight
        self.max_entries = max_entries
        self._parts = []
        self._count = 0

    def add(self, data2d, weight2d, mats, max_freqs):
        """Gather the slices ``data2d`` (n, h, wh), ``weight2d`` with ``mats`` (n, 3, 3)."""
        for f in range(len(mats)):
            part = gather_slice(self.grid, data2d[f], weight2d[f], mats[f], max_freqs[f])
            self._parts.append(part)
            self._count += len(part[0])
            if self.max_entries is not None and self._count >= self.max_entries:
                self.flush()

    def flush(self):
        """Sum the held entries into the destination."""
        if not self._parts:
            return
        parts, self._parts, self._count = self._parts, [], 0
        idx = np.concatenate([p[0] for p in parts])
        n = self.dest_weight.shape[0]
        for j, dest in ((1, self.dest_data.real), (2, self.dest_data.imag), (3, self.dest_weight)):
            vals = np.concatenate([p[j] for p in parts])
            dest += np.bincount(idx, vals, minlength=n)
            del vals


def backproject_slices_gather(grid, data2d, weight2d, mats, max_freqs, dest_data, dest_weight, max_entries=None):
    """RELION ``backprojectSlice_backward`` for a stack of slices (see :func:`gather_slice`).

    Parameters
    ----------
    grid : HalfGrid of the destination
    data2d : (n, h, wh) complex, weight2d : (n, h, wh) real
    mats : (n, 3, 3) matrices mapping reference frequencies to image frequencies
    max_freqs : (n,) ints, radius limits (``xRanges(0, f)``)
    dest_data, dest_weight : flat (N,) arrays, updated in place.
    max_entries : bound on the entries held before they are added (see :class:`SliceAccumulator`).
    """
    acc = SliceAccumulator(grid, dest_data, dest_weight, max_entries)
    acc.add(data2d, weight2d, mats, max_freqs)
    acc.flush()


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


def symmetrise_half(vol, matrices, complex_data, chunk=1 << 15):
    """Average a half grid over the identity and ``matrices`` (non-identity operators),
    each sampled trilinearly at ``R·K`` (RELION ``Symmetry::symmetrise_FS_*``).

    Works through the grid ``chunk`` voxels at a time (the result does not depend on it), so
    the memory beyond the input and the result is a few MB.
    """
    d, h, wh = vol.shape
    grid = HalfGrid(d)
    acc = vol.ravel().astype(np.complex128 if complex_data else np.float64)
    mats = [np.asarray(r, dtype=float).T for r in matrices]
    for start in range(0, acc.size, chunk):
        c = grid.coords_at(np.arange(start, min(start + chunk, acc.size)))
        part = acc[start:start + chunk]
        for rt in mats:
            p = c @ rt
            part += linear_xyz_half(vol, p[:, 0], p[:, 1], p[:, 2], complex_data)
    acc /= len(matrices) + 1
    return acc.reshape(vol.shape)
