"""Extraction of particle boxes from tilt images into centred 2D Fourier slices (spec §4.2).

Reproduces RELION's ``TomoExtraction::extractAt2D_Fourier``: integer square extraction with
edge clamping, optional soft circular crop with outer-mean subtraction, centred FFT with
1/sqrt(N) scaling, Fourier cropping by the binning factor (and division by it), and a
sub-pixel phase shift that moves the projected particle centre to pixel ``s//2``.
"""

import numpy as np

from sta.backend import get_array_module
from sta.kernels.fourier import centred_rfft
from sta.kernels.grid import cosine_edge, distance_grid, fft_freqs, freq_axes

EDGE_FALLOFF = 5.0


def c_round(x):
    """C's ``round``: halves away from zero (NumPy rounds halves to even)."""
    x = np.asarray(x, dtype=float)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def extract_squares(images, corners, size, visible=None):
    """Cut ``size``² squares with top-left ``corners`` (f, 2) (x, y) from ``images`` (f, H, W).

    Pixels outside an image take the value of the nearest edge pixel; invisible tilts are 0.
    """
    xp = get_array_module(images)
    f, h, w = images.shape
    c = np.asarray(corners, dtype=np.int64)
    ar = np.arange(size)
    xs = np.clip(c[:, 0, None] + ar[None, :], 0, w - 1)  # (f, size)
    ys = np.clip(c[:, 1, None] + ar[None, :], 0, h - 1)
    fi = np.arange(f)[:, None, None]
    out = images[fi, xp.asarray(ys)[:, :, None], xp.asarray(xs)[:, None, :]]
    if visible is not None:
        out = out * xp.asarray(np.asarray(visible, dtype=out.dtype))[:, None, None]
    return out


def crop_circle(stack, boundary=0.0, falloff=EDGE_FALLOFF):
    """RELION's ``cropCircle``: subtract the mean outside radius ``w//2 - boundary`` and
    multiply by a disc with a raised-cosine fall-off of ``falloff`` pixels inside it."""
    xp = get_array_module(stack)
    h, w = stack.shape[-2:]
    rad = w // 2 - boundary
    r = distance_grid((h, w), xp=xp)
    outside = (r > rad).astype(float)
    n_out = float(outside.sum())
    mask = cosine_edge(r, rad - falloff, rad, xp)
    if n_out > 0:
        mean = (stack * outside).sum(axis=(-2, -1), keepdims=True) / n_out
    else:
        mean = 0.0
    return mask * (stack - mean)


def fourier_crop_half(spec, new_size):
    """Crop a (…, s0, s0//2+1) half spectrum to (…, s, s//2+1) (RELION's FourierCrop_fftwHalfStack)."""
    xp = get_array_module(spec)
    src = fft_freqs(new_size, xp) % spec.shape[-2]  # the rows of the kept frequencies
    return spec[..., src, : new_size // 2 + 1]


def centring_phase(size, shift_xy, xp=np):
    """RELION ``shiftStack`` factor ``exp(+2πi (kx tx + ky ty)/s)``: moves content by ``-t``."""
    ky, kx = freq_axes((size, size), xp)
    t = xp.asarray(shift_xy, dtype=float)
    return xp.exp(2j * np.pi * (kx * t[..., 0, None, None] + ky * t[..., 1, None, None]) / size)


def extract_fourier(images, centres, visible, s0, binning, circle_crop=True):
    """Centred 2D spectra of the particle in every tilt.

    Parameters
    ----------
    images : (f, H, W) float array
        Tilt images (row order of the tilt-series file).
    centres : (f, 2) float
        Projected particle centre (x, y) in each image (pixels).
    visible : (f,) bool
        Invisible tilts are zero-filled.
    s0 : int
        Box size in unbinned tilt-series pixels.
    binning : float
        Fourier-cropping factor; the output box is ``int(s0/binning + 0.5)``.
    circle_crop : bool
        Apply :func:`crop_circle` before the FFT (reconstruct_particle does, subtomo does not).

    Returns
    -------
    (f, s, s//2+1) complex spectra with the particle centre at pixel ``s//2`` (centred
    convention, 1/sqrt(s0²) scaling, divided by ``binning`` when cropped).
    """
    xp = get_array_module(images)
    centres = np.asarray(centres, dtype=float)
    corners = c_round(centres).astype(np.int64) - s0 // 2
    squares = extract_squares(images, corners, s0, visible)
    if circle_crop:
        squares = crop_circle(squares, 0.0, EDGE_FALLOFF)
    spec = centred_rfft(squares.astype(xp.float32), ndim=2)
    sb = int(s0 / binning + 0.5)
    if binning != 1.0:
        spec = fourier_crop_half(spec, sb) / binning
    pos = (centres - corners) / binning
    return spec * centring_phase(sb, pos - sb // 2, xp)
