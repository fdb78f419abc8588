"""Real-space finishing of Fourier reconstructions (RELION jaz ``Reconstruction``).

Volumes are (z, y, x); half grids (s, s, s//2+1); "centred" real space has its origin at
voxel ``s//2``.
"""

import numpy as np

from sta.backend import get_fft
from sta.kernels.grid import checkerboard, cosine_edge, distance_grid, fft_freqs, freq_squared


def _irfft_both(half, s):
    """Inverse FFT with RELION's ``FFT::Both`` normalisation (1/sqrt(N))."""
    vol = get_fft().irfftn(half, s=(s, s, s))
    vol *= np.sqrt(float(s) ** 3)
    return vol


def _rfft_both(vol):
    s = vol.shape[0]
    ft = get_fft().rfftn(vol)
    ft /= np.sqrt(float(s) ** 3)
    return ft


def _radius_plane(s, z, centre):
    """Distance of the voxels of plane ``z`` of an s³ volume from ``(centre,)*3`` (voxels), (s, s)."""
    return distance_grid((s, s, s), (centre,) * 3, z=z)


def gridding_correct_sinc2(data_half, s):
    """``griddingCorrect3D_sinc2`` with centring: (−1)^(x+y+z), inverse FFT, divide by
    sinc²(r/s) (by 0.01 where sinc² < 0.01 or r/s > 1); returns the real-space volume.

    Works plane by plane where it can: beyond the (s, s, s) result it needs one modulated
    copy of ``data_half`` and what the inverse FFT needs.
    """
    modulated = np.empty(data_half.shape, dtype=np.result_type(data_half.dtype, np.int64))
    for z in range(data_half.shape[0]):
        np.multiply(data_half[z], checkerboard(data_half.shape, z=z), out=modulated[z])
    vol = _irfft_both(modulated, s)
    del modulated
    c = s // 2
    for z in range(s):
        d = _radius_plane(s, z, c) / s
        with np.errstate(invalid="ignore", divide="ignore"):
            sinc2 = np.where(d == 0, 1.0, (np.sin(np.pi * d) / (np.pi * d)) ** 2)
        corr = np.where((sinc2 < 1e-2) | (d > 1.0), 1e-2, sinc2)
        if z == c:
            corr[c, c] = 1.0
        vol[z] /= corr
    return vol


def _half_radius_planes(s):
    """|K| on the planes z = 0 .. s−1 of the (s, s, s//2+1) half grid, one (s, s//2+1)
    plane at a time (:mod:`sta.kernels.grid` frequencies)."""
    kz = fft_freqs(s)
    yx = freq_squared((s, s))
    for z in range(s):
        yield np.sqrt((kz[z] * kz[z] + yx).astype(np.float64))


def radial_average_half_lin(w):
    """``RadialAvg::fftwHalf_3D_lin``: linear-interpolated radial average, s//2+1 bins."""
    s = w.shape[0]
    wh = w.shape[2]
    avg = np.zeros(wh)
    wgh = np.zeros(wh)
    # two passes over the planes: the (1 − f) terms of every voxel, then the f terms, in
    # voxel order (the order in which the sums are accumulated)
    for upper in (False, True):
        for z, r in enumerate(_half_radius_planes(s)):
            r0 = r.astype(np.int64)
            f1 = r - r0
            wz = w[z]
            if not upper:
                ok0 = r0 < wh
                np.add.at(avg, r0[ok0], ((1 - f1) * wz)[ok0])
                np.add.at(wgh, r0[ok0], (1 - f1)[ok0])
            else:
                ok1 = r0 + 1 < wh
                np.add.at(avg, r0[ok1] + 1, (f1 * wz)[ok1])
                np.add.at(wgh, r0[ok1] + 1, f1[ok1])
    return np.where(wgh > 0, avg / np.where(wgh > 0, wgh, 1), avg)


def to_fourier(vol):
    """Half spectrum of a real (s, s, s) volume with RELION's ``FFT::Both`` normalisation."""
    return _rfft_both(vol)


def ctf_correct_heuristic(vol, weight, fraction=0.001):
    """``ctfCorrect3D_heuristic``: divide by max(w, fraction·radial_avg(w)); zero beyond."""
    return ctf_divide_heuristic(_rfft_both(vol), weight, fraction)


def ctf_divide_heuristic(ft, weight, fraction=0.001):
    """:func:`ctf_correct_heuristic` from the spectrum ``ft`` (:func:`to_fourier`), which is
    overwritten; returns the real-space volume."""
    s = ft.shape[0]
    avg = radial_average_half_lin(weight)
    n = len(avg)
    for z, r in enumerate(_half_radius_planes(s)):
        r0 = r.astype(np.int64)
        r1 = r0 + 1
        beyond = r1 >= n
        f = r - r0
        a = f * avg[np.minimum(r1, n - 1)] + (1 - f) * avg[np.minimum(r0, n - 1)]
        wg = np.maximum(weight[z], a * fraction)
        div = np.where(wg > 0, wg, 1.0)
        ft[z] = np.where(beyond, 0, np.where(wg > 0, ft[z] / div, ft[z]))
    return _irfft_both(ft, s)


def ctf_correct_wiener(vol, weight, offset):
    """``ctfCorrect3D_Wiener``: F / (w + offset)."""
    return ctf_divide_wiener(_rfft_both(vol), weight, offset)


def ctf_divide_wiener(ft, weight, offset):
    """:func:`ctf_correct_wiener` from the spectrum ``ft`` (overwritten)."""
    s = ft.shape[0]
    for z in range(s):
        ft[z] /= weight[z] + offset
    return _irfft_both(ft, s)


def taper(vol, dist, subtract_mean=True, out=None):
    """``Reconstruction::taper``: raised-cosine edge of width ``dist`` inside radius s/2,
    after subtracting the edge-weighted inner mean; zero outside.

    ``out`` (may be ``vol`` itself) receives the result; beyond it one s³ array is used.
    """
    s = vol.shape[0]
    m = s / 2.0

    def edge(z):
        r = _radius_plane(s, z, m)
        return cosine_edge(r, m - dist, m), r < m

    mean = 0.0
    if subtract_mean:
        c = np.empty(vol.shape)
        for z in range(s):
            c[z] = edge(z)[0]
        c_sum = c.sum()
        c *= vol
        mean = c.sum() / c_sum
        del c
    if out is None:
        out = np.empty(vol.shape, dtype=np.result_type(vol.dtype, np.float64))
    for z in range(s):
        c, inside = edge(z)
        out[z] = np.where(inside, c * (vol[z] - mean), 0.0)
    return out


def half_to_full_centred(w):
    """``Centering::fftwHalfToHumanFull`` for a real half grid (z, y, x): full s³ volume
    with the zero frequency at voxel s//2 (Nyquist-plane overwrite order as RELION's).

    Built plane by plane straight into the centred volume (no full-size temporaries).
    """
    d, h, wh = w.shape
    s = 2 * (wh - 1)
    out = np.empty((d, h, s), dtype=w.dtype)
    yi = (-np.arange(h)) % h
    xs = np.arange(1, wh)
    x = s // 2
    y = np.arange(h)
    for z in range(d):
        mz = (-z) % d
        full = np.empty((h, s), dtype=w.dtype)
        full[:, :wh] = w[z]
        # mirrored writes: out(s-x, -y, -z) = w(x, y, z) for x > 0; plane z receives them
        # from plane -z
        full[yi[:, None], (s - xs)[None, :]] = w[mz][:, 1:]
        # on the plane x = s/2 both writes land on the same voxels: RELION's loop (z outer,
        # y inner) keeps whichever write came last
        direct_later = (z > mz) | ((z == mz) & (y >= yi))
        full[:, x] = np.where(direct_later, w[z, :, x], w[mz, yi, x])
        out[(z + d // 2) % d] = np.fft.fftshift(full, axes=(0, 1))
    return out
