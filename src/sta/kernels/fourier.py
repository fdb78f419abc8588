"""RELION's "centred" transforms and Fourier-space phase ramps and crops, against ``xp``.

Layout: FFTW/NumPy half grids.  A 2D box of size ``s`` has rfft shape ``(s, s//2 + 1)``
with ``ky`` wrapped and ``kx = 0 .. s//2`` (coordinates: :mod:`sta.kernels.grid`).
The real-space origin of RELION images is the pixel ``s//2``; the centred transforms move
it to index 0 before transforming and use a 1/sqrt(N) normalisation in both directions.
"""

import numpy as np

from sta.backend import get_array_module, get_fft
from sta.kernels.grid import freq_axes, freq_radius


def radius_grid_2d(box, xp=np, half=True):
    """|k| in pixels on the 2D grid (:func:`sta.kernels.grid.freq_radius` of ``(box, box)``;
    kept for ``workflows/refine`` and its tests)."""
    return freq_radius((box, box), xp, half)


def radius_grid_3d(box, xp=np, half=True):
    """|k| in pixels on the 3D grid (:func:`sta.kernels.grid.freq_radius` of ``(box,)*3``)."""
    return freq_radius((box, box, box), xp, half)


def centred_rfft(image, ndim=None):
    """Forward rfft with the real-space origin at pixel ``N//2`` and 1/sqrt(N) scaling.

    Transforms the last ``ndim`` axes (default: all); leading axes are a batch.
    """
    xp = get_array_module(image)
    ndim = image.ndim if ndim is None else ndim
    axes = tuple(range(image.ndim - ndim, image.ndim))
    n = float(np.prod([image.shape[a] for a in axes]))
    shifted = xp.fft.ifftshift(image, axes=axes)
    return get_fft(xp).rfftn(shifted, axes=axes) / np.sqrt(n)


def centred_irfft(spectrum, shape):
    """Inverse of :func:`centred_rfft`; ``shape`` is the real-space shape of the last axes."""
    xp = get_array_module(spectrum)
    ndim = len(shape)
    axes = tuple(range(spectrum.ndim - ndim, spectrum.ndim))
    n = float(np.prod(shape))
    out = get_fft(xp).irfftn(spectrum, s=tuple(shape), axes=axes) * np.sqrt(n)
    return xp.fft.fftshift(out, axes=axes)


def phase_shift_2d(box, shift_xy, xp=np):
    """Half-grid phase ramp that moves image content by ``shift_xy`` pixels.

    ``shift_xy`` has shape (..., 2) (x, y); returns (..., box, box//2+1) complex:
    ``exp(-2πi (kx·sx + ky·sy)/box)`` (multiplying a spectrum by it translates the image
    by +shift).
    """
    ky, kx = freq_axes((box, box), xp)
    s = xp.asarray(shift_xy, dtype=float)
    sx = s[..., 0][..., None, None]
    sy = s[..., 1][..., None, None]
    return xp.exp(-2j * np.pi * (kx * sx + ky * sy) / box)


def fourier_crop_volume(volume, new_box):
    """Cube cropped in Fourier space to ``new_box`` (binning by ``box/new_box``), keeping the
    real-space origin at ``N//2`` and the greyscale (mean) of the map."""
    xp = get_array_module(volume)
    box = volume.shape[0]
    if new_box == box:
        return volume.copy()
    if new_box > box:
        raise ValueError(f"cannot crop a {box}-voxel map to {new_box}")
    f = xp.fft.fftshift(xp.fft.fftn(xp.fft.ifftshift(volume)))
    lo = box // 2 - new_box // 2
    sl = slice(lo, lo + new_box)
    g = f[sl, sl, sl] * (float(new_box) / box) ** 3
    return xp.real(xp.fft.fftshift(xp.fft.ifftn(xp.fft.ifftshift(g))))
