"""Real-space finishing of Fourier reconstructions (RELION jaz ``Reconstruction``).

Volumes are (z, y, x); half grids (s, s, s//2+1); "centred" real space has its origin at
voxel ``s//2``.
"""

import numpy as np

from sta.backend import get_fft


def _centre_modulation(s):
    i = np.arange(s)
    sh = s // 2 + 1
    sz = 1 - 2 * (i % 2)
    sx = 1 - 2 * (np.arange(sh) % 2)
    return sz[:, None, None] * sz[None, :, None] * sx[None, None, :]


def _irfft_both(half, s):
    """Inverse FFT with RELION's ``FFT::Both`` normalisation (1/sqrt(N))."""
    return get_fft().irfftn(half, s=(s, s, s)) * np.sqrt(float(s) ** 3)


def _rfft_both(vol):
    s = vol.shape[0]
    return get_fft().rfftn(vol) / np.sqrt(float(s) ** 3)


def gridding_correct_sinc2(data_half, s):
    """``griddingCorrect3D_sinc2`` with centring: (−1)^(x+y+z), inverse FFT, divide by
    sinc²(r/s) (by 0.01 where sinc² < 0.01 or r/s > 1); returns the real-space volume."""
    vol = _irfft_both(data_half * _centre_modulation(s), s)
    c = s // 2
    z, y, x = np.ogrid[:s, :s, :s]
    r = np.sqrt((x - c) ** 2.0 + (y - c) ** 2.0 + (z - c) ** 2.0)
    d = r / s
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc2 = np.where(r == 0, 1.0, (np.sin(np.pi * d) / (np.pi * d)) ** 2)
    corr = np.where((sinc2 < 1e-2) | (d > 1.0), 1e-2, sinc2)
    corr[c, c, c] = 1.0
    return vol / corr


def radial_average_half_lin(w):
    """``RadialAvg::fftwHalf_3D_lin``: linear-interpolated radial average, s//2+1 bins."""
    s = w.shape[0]
    wh = w.shape[2]
    r = _half_radius(s)
    r0 = r.astype(np.int64)
    f1 = r - r0
    avg = np.zeros(wh)
    wgh = np.zeros(wh)
    ok0 = r0 < wh
    np.add.at(avg, r0[ok0], ((1 - f1) * w)[ok0])
    np.add.at(wgh, r0[ok0], (1 - f1)[ok0])
    ok1 = r0 + 1 < wh
    np.add.at(avg, r0[ok1] + 1, (f1 * w)[ok1])
    np.add.at(wgh, r0[ok1] + 1, f1[ok1])
    return np.where(wgh > 0, avg / np.where(wgh > 0, wgh, 1), avg)


def _half_radius(s):
    i = np.arange(s)
    wrapped = np.where(i >= s // 2, i - s, i).astype(float)
    x = np.arange(s // 2 + 1, dtype=float)
    return np.sqrt(wrapped[:, None, None] ** 2 + wrapped[None, :, None] ** 2 + x[None, None, :] ** 2)


def ctf_correct_heuristic(vol, weight, fraction=0.001):
    """``ctfCorrect3D_heuristic``: divide by max(w, fraction·radial_avg(w)); zero beyond."""
    s = vol.shape[0]
    ft = _rfft_both(vol)
    avg = radial_average_half_lin(weight)
    r = _half_radius(s)
    r0 = r.astype(np.int64)
    r1 = r0 + 1
    n = len(avg)
    beyond = r1 >= n
    f = r - r0
    a = f * avg[np.minimum(r1, n - 1)] + (1 - f) * avg[np.minimum(r0, n - 1)]
    wg = np.maximum(weight, a * fraction)
    div = np.where(wg > 0, wg, 1.0)
    ft = np.where(beyond, 0, np.where(wg > 0, ft / div, ft))
    return get_fft().irfftn(ft, s=vol.shape) * np.sqrt(float(s) ** 3)


def ctf_correct_wiener(vol, weight, offset):
    """``ctfCorrect3D_Wiener``: F / (w + offset)."""
    s = vol.shape[0]
    ft = _rfft_both(vol) / (weight + offset)
    return get_fft().irfftn(ft, s=vol.shape) * np.sqrt(float(s) ** 3)


def taper(vol, dist, subtract_mean=True):
    """``Reconstruction::taper``: raised-cosine edge of width ``dist`` inside radius s/2,
    after subtracting the edge-weighted inner mean; zero outside."""
    s = vol.shape[0]
    m = s / 2.0
    z, y, x = np.ogrid[:s, :s, :s]
    r = np.sqrt((x - m) ** 2 + (y - m) ** 2 + (z - m) ** 2)
    inside = r < m
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(r < m - dist, 1.0, 0.5 - 0.5 * np.cos(np.pi * (m - r) / dist))
    c = np.where(inside, c, 0.0)
    mean = (c * vol).sum() / c.sum() if subtract_mean else 0.0
    return np.where(inside, c * (vol - mean), 0.0)


def half_to_full_centred(w):
    """``Centering::fftwHalfToHumanFull`` for a real half grid (z, y, x): full s³ volume
    with the zero frequency at voxel s//2 (Nyquist-plane overwrite order as RELION's)."""
    d, h, wh = w.shape
    s = 2 * (wh - 1)
    full = np.zeros((d, h, s), dtype=w.dtype)
    full[:, :, :wh] = w
    zi = (-np.arange(d)) % d
    yi = (-np.arange(h)) % h
    xs = np.arange(1, wh)
    # mirrored writes: out(s-x, -y, -z) = w(x, y, z) for x > 0
    mirrored = w[:, :, 1:]
    full[zi[:, None, None], yi[None, :, None], (s - xs)[None, None, :]] = mirrored
    # on the plane x = s/2 both writes land on the same voxels: RELION's loop (z outer, y
    # inner) keeps whichever write came last
    x = s // 2
    z, y = np.meshgrid(np.arange(d), np.arange(h), indexing="ij")
    mz, my = zi[z], yi[y]
    direct_later = (z > mz) | ((z == mz) & (y >= my))
    plane = np.where(direct_later, w[z, y, x], w[mz, my, x])
    full[z, y, x] = plane
    return np.fft.fftshift(full, axes=(0, 1, 2))
