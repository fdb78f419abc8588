"""Grid coordinates of Fourier and real space, and raised-cosine edges: one home for both.

Every kernel that needs the frequency or the position of a grid point takes it from here
(written against an array module ``xp``; coordinates are exact integers, int64).

Layouts
-------
*Wrapped* (FFTW / NumPy order) axis of length ``n``: index ``i`` holds the frequency ``i``
for ``i < (n+1)//2`` and ``i − n`` beyond (NumPy's ``fftfreq(n)·n`` without its rounding).
On an even axis the Nyquist index ``n/2`` holds ``−n/2`` by default (NumPy, FFTW and
RELION's jaz code: ``y < h/2 ? y : y − h``) or ``+n/2`` with ``nyquist_positive=True``
(RELION's ``FFTW_ELEM`` / ``windowFourierTransform``: ``i < n/2+1 ? i : i − n``).  The sign
changes no radius, shell or weight; it matters only where a frequency is rotated or
multiplies a shift.

*Half* (rfft) layout: the last axis of a real-space length ``n`` holds ``0 .. n//2``.

*Centred* layout: index ``i`` holds ``i − n//2`` (RELION's logical / Xmipp coordinates of
real-space voxels, origin at ``n//2``; also the z and y axes of RELION's padded
back-projector half grid, whose x axis, the half axis, holds ``0 .. n−1``).

Odd axes
--------
On an odd axis index ``n//2`` is the highest positive frequency ``(n−1)/2`` (FFTW's, and
RELION's own ``FFTW_ELEM`` convention).  RELION's jaz tomography code writes
``y < h/2 ? y : y − h``, which puts it at ``−(n+1)/2``, one step outside the band, so a
radius there comes out too large (by 1.41 px at the (4, 4, x) corner of a 9³ half grid).
The FFTW convention is used everywhere here; even axes, the only ones RELION's tomography
programs and ours accept, are unaffected.

Shells
------
:func:`shell_index` is RELION's ``ROUND(|k|)``; :func:`shell_sums` adds values (or counts
points) per shell.

Raised-cosine edges
-------------------
:func:`cosine_edge` is the single soft edge of masks, filters and tapers: 1 below
``inner``, ``0.5 + 0.5·cos(π (r − inner)/(outer − inner))`` up to ``outer``, 0 from there
(``rising=True``: its complement).  Equal ``inner`` and ``outer`` make a hard edge with no
0/0: a falling edge is 1 for ``r < inner``, a rising one 1 for ``r >= inner``.
"""

import numpy as np

from sta.backend import get_array_module


def _axis_shape(ndim, axis, n):
    s = [1] * ndim
    s[axis] = n
    return tuple(s)


def fft_freqs(n, xp=np, nyquist_positive=False):
    """Integer frequencies of a wrapped axis of length ``n`` (see module docstring).

    Returns
    -------
    (n,) int64
    """
    i = xp.arange(n, dtype=xp.int64)
    cut = n // 2 + 1 if nyquist_positive else (n + 1) // 2
    return xp.where(i < cut, i, i - n)


def freq_axes(shape, xp=np, half=True, nyquist_positive=False):
    """Broadcastable integer frequency coordinates of the spectrum of a real array.

    Parameters
    ----------
    shape : tuple of int
        Real-space shape, e.g. ``(z, y, x)`` or ``(y, x)``.
    half : bool
        Half (rfft) layout along the last axis (``x//2 + 1`` points, ``0 .. x//2``);
        otherwise every axis is wrapped.
    nyquist_positive : bool
        Sign of the Nyquist frequency of even wrapped axes.

    Returns
    -------
    tuple of int64 arrays, one per axis in the order of ``shape`` (e.g. ``kz, ky, kx``),
    each of length ``n`` along its own axis and 1 along the others.
    """
    nd = len(shape)
    out = []
    for a, n in enumerate(shape):
        if half and a == nd - 1:
            k = xp.arange(n // 2 + 1, dtype=xp.int64)
        else:
            k = fft_freqs(n, xp, nyquist_positive)
        out.append(k.reshape(_axis_shape(nd, a, k.shape[0])))
    return tuple(out)


def _sum_squares(axes):
    total = axes[0] * axes[0]
    for k in axes[1:]:
        total = total + k * k
    return total


def freq_squared(shape, xp=np, half=True):
    """``|k|²`` (pixels², int64) on the (half) spectrum grid of a real array of ``shape``."""
    return _sum_squares(freq_axes(shape, xp, half))


def freq_radius(shape, xp=np, half=True):
    """``|k|`` (pixels, float64) on the (half) spectrum grid; see :func:`freq_squared`."""
    return xp.sqrt(freq_squared(shape, xp, half).astype(xp.float64))


def shell_index(shape, xp=np, half=True):
    """RELION's shell of every spectrum point, ``ROUND(|k|)`` (half away from zero), int64.

    ``(n + 0.5)²`` is never an integer, so ``floor(|k| + 0.5)`` is C's ``round`` exactly.
    """
    return xp.floor(freq_radius(shape, xp, half) + 0.5).astype(xp.int64)


def shell_sums(values, shells, n_shells):
    """Sum of ``values`` over every shell ``0 .. n_shells−1`` (points of shells >= n_shells
    are left out); ``values=None`` counts the points (int64).

    Parameters
    ----------
    values : array or None, the shape of ``shells``
    shells : int array, e.g. :func:`shell_index`
    n_shells : int

    Returns
    -------
    (n_shells,) array on the module of ``shells``
    """
    xp = get_array_module(shells)
    clipped = xp.minimum(shells, n_shells).ravel()
    weights = None if values is None else values.ravel()
    return xp.bincount(clipped, weights=weights, minlength=n_shells + 1)[:n_shells]


def centred_axes(shape, xp=np, half=False):
    """Broadcastable integer logical coordinates ``i − n//2`` of an array of ``shape``.

    With ``half`` the last axis holds ``0 .. shape[-1]−1`` (RELION's centred half grids,
    e.g. the back-projector accumulator ``(D, D, D//2+1)``).  ``shape`` is the array's own.
    """
    nd = len(shape)
    out = []
    for a, n in enumerate(shape):
        k = xp.arange(n, dtype=xp.int64)
        if not (half and a == nd - 1):
            k = k - n // 2
        out.append(k.reshape(_axis_shape(nd, a, n)))
    return tuple(out)


def centred_squared(shape, xp=np, half=False):
    """``Σ (i − n//2)²`` (int64) over the axes of :func:`centred_axes`."""
    return _sum_squares(centred_axes(shape, xp, half))


def _plane(axes, z):
    """The coordinates of plane ``z`` of the first axis: the first axis becomes a scalar."""
    first = axes[0].reshape(-1)[z]
    rest = tuple(a.reshape(a.shape[1:]) for a in axes[1:])
    return (first,) + rest


def distance_grid(shape, centre=None, xp=np, z=None):
    """Euclidean distance (float64) of every array index from ``centre``.

    Parameters
    ----------
    shape : tuple of int
    centre : sequence of float (index coordinates, one per axis) or None for ``n//2``
        of every axis (RELION's real-space origin).
    z : int, optional
        Only the plane ``z`` of the first axis (shape ``shape[1:]``).
    """
    if centre is None:
        centre = [n // 2 for n in shape]
    axes = []
    for a, (n, c) in enumerate(zip(shape, centre)):
        d = xp.arange(n, dtype=xp.float64) - float(c)
        axes.append(d.reshape(_axis_shape(len(shape), a, n)))
    if z is not None:
        axes = list(_plane(axes, z))
    return xp.sqrt(_sum_squares(axes))


def checkerboard(shape, xp=np, z=None):
    """``(−1)^(Σ indices)`` (int64) of an array of ``shape`` (the centring modulation of a
    spectrum, RELION ``Centering::shiftInSitu``); ``z``: only plane ``z`` of the first axis."""
    axes = [(1 - 2 * (xp.arange(n, dtype=xp.int64) % 2)).reshape(_axis_shape(len(shape), a, n))
            for a, n in enumerate(shape)]
    if z is not None:
        axes = list(_plane(axes, z))
    out = axes[0]
    for s in axes[1:]:
        out = out * s
    return out


def cosine_edge(r, inner, outer, xp=np, rising=False):
    """Raised-cosine edge between ``inner`` and ``outer`` (same units as ``r``).

    Falling (default): 1 for ``r < inner``, ``0.5 + 0.5·cos(π (r − inner)/(outer − inner))``
    for ``inner <= r < outer``, 0 for ``r >= outer``.  Rising: 0 for ``r < inner``,
    ``0.5 − 0.5·cos(π (r − inner)/(outer − inner))`` between, 1 for ``r >= outer``.
    ``outer <= inner`` gives a hard edge at ``inner``.

    Returns
    -------
    float64 array of the shape of ``r``
    """
    r = xp.asarray(r, dtype=xp.float64)
    width = float(outer) - float(inner)
    if width <= 0:
        below = r < inner
        return xp.where(below, 0.0, 1.0) if rising else xp.where(below, 1.0, 0.0)
    c = 0.5 * xp.cos(np.pi * (r - inner) / width)
    ramp = 0.5 - c if rising else 0.5 + c
    lo, hi = (0.0, 1.0) if rising else (1.0, 0.0)
    return xp.where(r < inner, lo, xp.where(r >= outer, hi, ramp))


def soft_sphere(shape, radius, width, centre=None, xp=np):
    """Disc (2D) or ball (3D) of 1 inside ``radius`` falling to 0 at ``radius + width``
    (raised cosine, :func:`cosine_edge`) around ``centre`` (index coordinates, default the
    origin ``n//2``; RELION ``raisedCosineMask``).  float64 array of ``shape``."""
    return cosine_edge(distance_grid(shape, centre, xp), radius, radius + width, xp)
