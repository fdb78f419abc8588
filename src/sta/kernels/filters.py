"""Fourier filters, sharpening and masks of RELION's post-processing, written against ``xp``.

Spectra are rfft half grids ``(z, y, x//2 + 1)`` of cubic ``(box, box, box)`` volumes
(origin at the array corner; only ``|k|`` matters here).  Frequencies ``k`` are in pixels
(cycles per box); resolutions in Å or 1/Å as stated.  The functions follow RELION's
``lowPassFilterMap``, ``applyBFactorToMap`` (``src/fftw.cpp``), ``Postprocessing::
applyFscWeighting``, ``divideByMtf``, ``makeGuinierPlot`` (``src/postprocessing.cpp``) and
``autoMask``, ``raisedCosineMask``, ``raisedCrownMask`` (``src/mask.cpp``).

Real-space masks use RELION's (Xmipp) logical coordinates: voxel index ``n`` along an axis
of length ``N`` has coordinate ``n - N//2``.
"""

import numpy as np

from sta.backend import get_array_module, get_fft, to_device, to_host
from sta.kernels.grid import centred_axes, cosine_edge, distance_grid, freq_radius, shell_index, shell_sums


# ------------------------------------------------------------------ Fourier-space filters


def _real_shape(spec, box):
    return (box, box, box) if spec.ndim == 3 else (box, box)


def lowpass_spectrum(spec, box, low_pass, angpix, edge_width=2, highpass=False):
    """Raised-cosine low-pass (or high-pass) filter of a half-grid spectrum, in place.

    The edge runs over ``edge_width // 2`` shells either side of shell
    ``round(box·angpix / low_pass)``: ``0.5 + 0.5·cos(π (r - r_lo)/(r_hi - r_lo))`` with
    ``r = |k|/box`` (1/pixel); components beyond the edge are zeroed.

    Parameters
    ----------
    spec : complex array ``(box, box, box//2 + 1)``
    box : int
    low_pass : float
        Filter resolution (Å).
    angpix : float
        Pixel size (Å).
    edge_width : int
        Edge width in shells (RELION ``--filter_edge_width``, default 2).
    highpass : bool
        Keep the high frequencies instead.

    Returns
    -------
    spec (modified in place)
    """
    xp = get_array_module(spec)
    ires = int(np.floor(box * angpix / low_pass + 0.5))
    half = int(edge_width) // 2
    edge_low = max(0.0, (ires - half) / float(box))
    edge_high = min(float(spec.shape[-1]), (ires + half) / float(box))
    res = freq_radius(_real_shape(spec, box), xp) / box
    if edge_high <= edge_low:  # RELION divides 0 by 0 here; a hard edge keeping the cut-off is meant
        filt = xp.where((res > edge_low) if highpass else (res <= edge_low), 1.0, 0.0)
    else:
        filt = cosine_edge(res, edge_low, edge_high, xp, rising=highpass)
    spec *= filt
    return spec


def lowpass_map(volume, low_pass, angpix, edge_width=2):
    """Low-pass filter a real volume (RELION ``lowPassFilterMap``), float64 result."""
    xp = get_array_module(volume)
    fft = get_fft(xp)
    box = volume.shape[-1]
    if any(s != box for s in volume.shape):
        raise ValueError(f"lowpass_map: expected a cubic volume, got shape {volume.shape}")
    spec = fft.rfftn(xp.asarray(volume, dtype=np.float64))
    lowpass_spectrum(spec, box, low_pass, angpix, edge_width)
    return fft.irfftn(spec, s=volume.shape, axes=tuple(range(volume.ndim)))


def bfactor_spectrum(spec, box, bfactor, angpix):
    """Multiply by ``exp(-(B/4)·s²)`` (``s = |k|/(box·angpix)`` in 1/Å) up to Nyquist, zero beyond.

    In place; returns ``spec``.  A negative ``bfactor`` (Å²) sharpens.
    """
    xp = get_array_module(spec)
    res = freq_radius(_real_shape(spec, box), xp) / (box * angpix)
    inside = res <= 1.0 / (angpix * 2.0)
    spec *= xp.where(inside, xp.exp(-(bfactor / 4.0) * res * res), 0.0)
    return spec


def fsc_weights(fsc_curve):
    """Per-shell weights ``sqrt(2·FSC/(1 + FSC))`` (0 where FSC <= 0) of Rosenthal & Henderson.

    Shells after the last one before the FSC first drops below 1e-4 get weight 0.

    Returns
    -------
    ndarray (len(fsc_curve),), float64
    """
    f = np.asarray(fsc_curve, dtype=np.float64)
    below = np.flatnonzero(f < 1e-4)
    ires_max = (int(below[0]) - 1 if below.size else f.size - 1)
    ires_max = max(ires_max, 0)
    w = np.zeros_like(f)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = f > 0
        w[good] = np.sqrt(2.0 * f[good] / (1.0 + f[good]))
    w[ires_max + 1:] = 0.0
    return w


def shell_weights_spectrum(spec, weights, idx=None):
    """Multiply each component by ``weights[round(|k|)]`` (0 beyond the curve), in place."""
    xp = get_array_module(spec)
    box = spec.shape[0]
    if idx is None:
        idx = shell_index(_real_shape(spec, box), xp)
    w = np.zeros(int(to_host(idx.max())) + 1, dtype=np.float64)
    n = min(w.size, len(weights))
    w[:n] = np.asarray(weights, dtype=np.float64)[:n]
    spec *= to_device(w, xp)[idx]
    return spec


def mtf_divide_spectrum(spec, box, angpix, mtf_resolution, mtf_value):
    """Divide by a detector MTF, as RELION's ``Postprocessing::divideByMtf`` (in place).

    Parameters
    ----------
    mtf_resolution : array (n,)
        Resolution of each MTF row in 1/Å (``rlnResolutionInversePixel / mtf_angpix``).
    mtf_value : array (n,)
        MTF values (> 0).

    Notes
    -----
    As RELION, the lookup assumes a uniform grid with step ``(res[-1] - res[0]) / n``
    (``n``, not ``n - 1``), interpolates linearly between the two rows found, clamps at
    both ends, and divides only below Nyquist.
    """
    xp = get_array_module(spec)
    res_x = np.asarray(mtf_resolution, dtype=np.float64)
    val = np.asarray(mtf_value, dtype=np.float64)
    n = res_x.size
    per_elem = (res_x[-1] - res_x[0]) / n
    res = to_host(freq_radius(_real_shape(spec, box), xp)) / (box * angpix)
    i0 = np.floor(res / per_elem).astype(np.int64)
    i0c = np.clip(i0, 0, max(n - 2, 0))
    x0, x1 = res_x[i0c], res_x[np.minimum(i0c + 1, n - 1)]
    y0, y1 = val[i0c], val[np.minimum(i0c + 1, n - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        interp = y0 + (y1 - y0) * (res - x0) / (x1 - x0)
    mtf = np.where(i0 >= n - 1, val[-1], np.where(i0 <= 0, val[0], interp))
    mtf = np.where(res < 1.0 / (2.0 * angpix), mtf, 1.0)
    spec /= to_device(mtf, xp)
    return spec


def radial_mean_amplitude(spec, idx=None, nshell=None):
    """Mean ``|F|`` per shell (``round(|k|)``) and the number of components in it.

    Returns
    -------
    mean : ndarray (nshell,), float64 (0 where a shell is empty)
    count : ndarray (nshell,), int64
    """
    xp = get_array_module(spec)
    box = spec.shape[0]
    if idx is None:
        idx = shell_index(_real_shape(spec, box), xp)
    if nshell is None:
        nshell = spec.shape[-1]
    sums = to_host(shell_sums(xp.abs(spec), idx, nshell))
    count = to_host(shell_sums(None, idx, nshell))
    mean = np.where(count > 0, sums / np.maximum(count, 1), 0.0)
    return mean, count.astype(np.int64)


# ------------------------------------------------------------------ real-space masks


def _distance(shape, centre_zyx, xp):
    """Distance of every voxel from ``centre_zyx`` in logical coordinates (0 = voxel ``N//2``)."""
    return distance_grid(shape, [n // 2 + float(c) for n, c in zip(shape, centre_zyx)], xp)


def raised_cosine_sphere(shape, radius, radius_p, centre_zyx=(0, 0, 0), xp=np):
    """Sphere of 1 inside ``radius``, raised cosine to 0 at ``radius_p`` (voxels).

    ``centre_zyx`` is in logical coordinates (0 = voxel ``N//2``).  RELION ``raisedCosineMask``.

    Returns
    -------
    ndarray ``shape``, float64
    """
    return cosine_edge(_distance(shape, centre_zyx, xp), radius, radius_p, xp)


def raised_crown(shape, inner_radius, outer_radius, width, centre_zyx=(0, 0, 0), xp=np):
    """Spherical shell between ``inner_radius`` and ``outer_radius`` with raised-cosine edges.

    Edges of ``width`` voxels lie outside the shell on both sides (RELION ``raisedCrownMask``).
    """
    d = _distance(shape, centre_zyx, xp)
    return (cosine_edge(d, inner_radius - width, inner_radius, xp, rising=True)
            * cosine_edge(d, outer_radius, outer_radius + width, xp))


def _squared_distance_to(target):
    """Exact squared Euclidean distance (voxels²) of every voxel to the nearest True voxel.

    Voxels outside the box do not count.  Returns None when ``target`` has no True voxel.
    """
    from scipy.ndimage import distance_transform_edt

    if not target.any():
        return None
    d = distance_transform_edt(~target)
    return np.rint(d * d)


def extend_binary(binary, extend):
    """Grow (``extend > 0``) or shrink (``< 0``) a binary mask by ``|extend|`` voxels.

    A 0-voxel becomes 1 when a 1-voxel lies at squared distance ``< extend²`` (and
    conversely for shrinking), as RELION's ``autoMask``.

    Parameters
    ----------
    binary : bool array
    extend : float (voxels)

    Returns
    -------
    bool array (host NumPy)
    """
    b = np.asarray(to_host(binary), dtype=bool)
    e2 = float(extend) * float(extend)
    if extend > 0:
        d2 = _squared_distance_to(b)
        return b if d2 is None else (b | (d2 < e2))
    if extend < 0:
        d2 = _squared_distance_to(~b)
        return b if d2 is None else (b & ~(d2 < e2))
    return b


def soft_edge(binary, width):
    """Raised-cosine soft edge of ``width`` voxels outside a binary mask.

    Each 0-voxel whose nearest 1-voxel lies at distance ``d < width`` gets
    ``0.5 + 0.5·cos(π d / width)``.

    Returns
    -------
    ndarray float64 (host NumPy)
    """
    b = np.asarray(to_host(binary), dtype=bool)
    out = b.astype(np.float64)
    if width <= 0:
        return out
    d2 = _squared_distance_to(b)
    if d2 is None:
        return out
    edge = (~b) & (d2 < float(width) * float(width))
    out[edge] = cosine_edge(np.sqrt(d2[edge]), 0.0, float(width))
    return out


def cut_z_central(mask, z_percentage, width):
    """Keep the central ``z_percentage`` of the box along z with raised-cosine ends.

    RELION ``cutZCentralPartOfSoftMask`` (``--helix``); ``width`` in voxels.
    """
    xp = get_array_module(mask)
    z = xp.abs(centred_axes(mask.shape[:1], xp)[0]).reshape(-1, 1, 1)
    e = mask.shape[0] * z_percentage * 0.5
    return mask * cosine_edge(z, e, e + width, xp)
