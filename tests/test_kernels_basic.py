"""Fourier projector, FFT engines and centred transforms against analytic truth / NumPy."""

import numpy as np
import pytest
from scipy.ndimage import affine_transform

from sta.backend import get_fft
from sta.backend.config import pyfftw_available
from sta.geometry.euler import euler_to_matrix
from sta.kernels.fourier import centred_irfft, centred_rfft, phase_shift_2d
from sta.kernels.projector import FourierProjector, slices_to_images


def two_blobs(n):
    z, y, x = np.ogrid[:n, :n, :n]
    c = n // 2
    return (np.exp(-((x - c - 5) ** 2 + (y - c + 3) ** 2 + (z - c - 2) ** 2) / 8.0)
            + 0.5 * np.exp(-((x - c + 4) ** 2 + (y - c - 6) ** 2 + (z - c) ** 2) / 4.5))


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 50, -20), (-120, 100, 75), (0, 90, 0)])
@pytest.mark.parametrize("pad,tol", [(2, 0.04), (4, 0.01)])
def test_projection_matches_real_space_ray_sum(angles, pad, tol):
    """Max error vs a cubic-spline ray sum: < 4% of the peak at pad 2, < 1% at pad 4 (the
    separable sinc² gridding correction is exact only for off-grid samples)."""
    n = 32
    vol = two_blobs(n)
    a = euler_to_matrix(*angles)
    img = slices_to_images(FourierProjector(vol, pad=pad).project_slices(a[None], n), n)[0]
    # real-space reference: the point r of the map appears at A r; volume axes are (z, y, x)
    az = a[::-1, ::-1]
    c = np.full(3, n // 2, float)
    ref = affine_transform(vol, az.T, offset=c - az.T @ c, order=3).sum(axis=0)
    assert np.abs(img - ref).max() < tol * ref.max()
    assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.9995


def test_projection_of_delta_is_centred():
    n = 24
    vol = np.zeros((n, n, n))
    vol[n // 2, n // 2, n // 2] = 1.0
    img = slices_to_images(FourierProjector(vol).project_slices(euler_to_matrix(10, 20, 30)[None], n), n)[0]
    assert np.unravel_index(np.argmax(img), img.shape) == (n // 2, n // 2)
    assert abs(img.sum() - 1.0) < 1e-6


def test_phase_shift_moves_content():
    n = 32
    img = np.zeros((n, n))
    img[n // 2, n // 2] = 1.0
    moved = centred_irfft(centred_rfft(img) * phase_shift_2d(n, np.array([3.0, -2.0])), (n, n))
    assert np.unravel_index(np.argmax(moved), moved.shape) == (n // 2 - 2, n // 2 + 3)


@pytest.mark.parametrize("shape", [(32, 32), (33, 31), (16, 18, 20)])
def test_centred_transforms_round_trip_and_norm(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    f = centred_rfft(x)
    np.testing.assert_allclose(centred_irfft(f, shape), x, atol=1e-12)
    # delta at the centre pixel -> flat spectrum 1/sqrt(N)
    d = np.zeros(shape)
    d[tuple(s // 2 for s in shape)] = 1.0
    np.testing.assert_allclose(centred_rfft(d), 1 / np.sqrt(np.prod(shape)), atol=1e-14)


@pytest.mark.skipif(not pyfftw_available(), reason="pyFFTW not installed")
def test_pyfftw_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 40, 36)).astype(np.float32)
    for axes in [(-2, -1), (0, 1, 2)]:
        a = get_fft(np, "pyfftw").rfftn(x, axes=axes)
        b = get_fft(np, "numpy").rfftn(x, axes=axes)
        assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()
        back = get_fft(np, "pyfftw").irfftn(a, s=[x.shape[i] for i in axes], axes=axes)
        np.testing.assert_allclose(back, x, atol=1e-4)


def test_unknown_fft_engine():
    with pytest.raises(ValueError):
        get_fft(np, "fftpack")
