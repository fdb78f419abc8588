"""Grid helpers (sta.kernels.grid) and their users, against direct loop definitions on odd
and even boxes, 2D and 3D, full and half (rfft) layouts."""

import itertools
import math

import numpy as np
import pytest

from sta.kernels import grid
from sta.kernels.backproject import HalfGrid
from sta.kernels.extract import fourier_crop_half
from sta.kernels.insert import cone_weight, slice_points
from sta.kernels.reconstruct import radial_average_half_lin
from sta.workflows.reconstruct_particle import dose_x_ranges


def _freq(i, n, nyquist_positive=False):
    """Frequency of DFT index ``i`` of an ``n``-point axis: the alias ``i + m·n`` nearest 0
    (the Nyquist index of an even axis has two; its sign is chosen)."""
    aliases = sorted((i + m * n for m in (-1, 0, 1)), key=abs)
    best = aliases[0]
    if abs(aliases[1]) == abs(best):
        best = abs(best) if nyquist_positive else -abs(best)
    return best


def _spectrum_shape(shape, half):
    return tuple(shape[:-1]) + (shape[-1] // 2 + 1,) if half else tuple(shape)


def _coords(idx, shape, half, nyquist_positive=False):
    """Per-axis frequencies of the spectrum point ``idx`` (the half axis holds 0 .. n//2)."""
    last = len(shape) - 1
    return [j if (half and a == last) else _freq(j, shape[a], nyquist_positive) for a, j in enumerate(idx)]


SHAPES = [(8, 8), (9, 9), (8, 8, 8), (9, 9, 9), (6, 7, 9), (7, 6, 5)]


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("nyquist_positive", [False, True])
def test_fft_freqs_are_the_nearest_aliases(n, nyquist_positive):
    ours = grid.fft_freqs(n, nyquist_positive=nyquist_positive)
    assert ours.dtype == np.int64
    assert ours.tolist() == [_freq(i, n, nyquist_positive) for i in range(n)]
    if n % 2 == 0 and not nyquist_positive:
        np.testing.assert_array_equal(ours, np.round(np.fft.fftfreq(n) * n))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("half", [True, False])
def test_frequency_grids_equal_loops(shape, half):
    k2 = grid.freq_squared(shape, half=half)
    r = grid.freq_radius(shape, half=half)
    shells = grid.shell_index(shape, half=half)
    spec = _spectrum_shape(shape, half)
    assert k2.shape == r.shape == shells.shape == spec
    for nyq in (False, True):
        axes = grid.freq_axes(shape, half=half, nyquist_positive=nyq)
        for idx in itertools.product(*(range(n) for n in spec)):
            k = _coords(idx, shape, half, nyq)
            assert [int(a.reshape(-1)[j]) for a, j in zip(axes, idx)] == k
            if nyq:
                continue
            s = sum(c * c for c in k)
            assert k2[idx] == s
            assert r[idx] == math.sqrt(s)
            assert shells[idx] == int(math.sqrt(s) + 0.5)


@pytest.mark.parametrize("shape", [(8, 8), (9, 9, 9)])
def test_shell_sums_equal_loops(shape):
    shells = grid.shell_index(shape)
    values = np.random.default_rng(1).random(shells.shape)
    n = shape[-1] // 2 + 1
    sums, counts = np.zeros(n), np.zeros(n, int)
    for idx in np.ndindex(shells.shape):
        if shells[idx] < n:
            sums[shells[idx]] += values[idx]
            counts[shells[idx]] += 1
    np.testing.assert_allclose(grid.shell_sums(values, shells, n), sums, rtol=1e-13)
    np.testing.assert_array_equal(grid.shell_sums(None, shells, n), counts)


@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 9, 9), (7, 8, 9)])
def test_planes_equal_the_full_grid(shape):
    centre = (3.5, 2.0, 4.25)
    for z in (0, shape[0] // 2, shape[0] - 1):
        np.testing.assert_array_equal(grid.distance_grid(shape, centre, z=z), grid.distance_grid(shape, centre)[z])
        np.testing.assert_array_equal(grid.checkerboard(shape, z=z), grid.checkerboard(shape)[z])


@pytest.mark.parametrize("shape", [(7,), (8, 8), (9, 9), (8, 8, 5), (9, 9, 5), (6, 7, 9)])
@pytest.mark.parametrize("half", [False, True])
def test_centred_and_real_space_grids_equal_loops(shape, half):
    axes = grid.centred_axes(shape, half=half)
    sq = grid.centred_squared(shape, half=half)
    dist = grid.distance_grid(shape)
    centre = [0.5 * n - 0.75 for n in shape]
    dist_c = grid.distance_grid(shape, centre)
    board = grid.checkerboard(shape)
    last = len(shape) - 1
    for idx in itertools.product(*(range(n) for n in shape)):
        c = [j if (half and a == last) else j - shape[a] // 2 for a, j in enumerate(idx)]
        assert [int(a.reshape(-1)[j]) for a, j in zip(axes, idx)] == c
        assert sq[idx] == sum(v * v for v in c)
        assert dist[idx] == pytest.approx(math.sqrt(sum((j - n // 2) ** 2 for j, n in zip(idx, shape))), abs=1e-12)
        assert dist_c[idx] == pytest.approx(math.sqrt(sum((j - m) ** 2 for j, m in zip(idx, centre))), abs=1e-12)
        assert board[idx] == (-1) ** sum(idx)


def _edge_loop(r, inner, outer, rising):
    if outer <= inner:
        on = r >= inner
        return float(on if rising else not on)
    if r < inner:
        return 0.0 if rising else 1.0
    if r >= outer:
        return 1.0 if rising else 0.0
    c = math.cos(math.pi * (r - inner) / (outer - inner))
    return 0.5 - 0.5 * c if rising else 0.5 + 0.5 * c


@pytest.mark.parametrize("inner,outer", [(1.0, 4.0), (2.5, 2.5), (0.0, 0.5)])
def test_cosine_edge_equals_loop(inner, outer):
    r = np.concatenate([np.linspace(-1.0, 6.0, 71), [inner, outer]])
    fall = grid.cosine_edge(r, inner, outer)
    rise = grid.cosine_edge(r, inner, outer, rising=True)
    np.testing.assert_allclose(fall, [_edge_loop(v, inner, outer, False) for v in r], atol=1e-15)
    np.testing.assert_allclose(rise, [_edge_loop(v, inner, outer, True) for v in r], atol=1e-15)
    np.testing.assert_allclose(fall + rise, 1.0, atol=1e-15)
    assert np.all(np.diff(fall[:71]) <= 0) and np.all((fall >= 0) & (fall <= 1))
    if outer > inner:  # continuous: 1 at the inner edge, 0 at the outer one, 1/2 half way
        assert fall[-2] == 1.0 and fall[-1] == 0.0
        assert grid.cosine_edge(0.5 * (inner + outer), inner, outer) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("shape", [(8, 8), (9, 9), (8, 8, 8), (9, 9, 9)])
def test_soft_sphere_equals_loop(shape):
    m = grid.soft_sphere(shape, 2.0, 1.5)
    for idx in itertools.product(*(range(n) for n in shape)):
        d = math.sqrt(sum((j - n // 2) ** 2 for j, n in zip(idx, shape)))
        assert m[idx] == pytest.approx(_edge_loop(d, 2.0, 3.5, False), abs=1e-15)


def test_odd_box_radius_stays_in_band():
    """The 9³ half grid holds the frequencies −4..4 (y, z) and 0..4 (x): its largest radius
    is |(4, 4, 4)|, not the |(−5, −5, 4)| of RELION jaz's ``y < h/2 ? y : y − h``."""
    r = grid.freq_radius((9, 9, 9))
    assert r.max() == pytest.approx(math.sqrt(48))
    assert r[4, 4, 0] == pytest.approx(math.sqrt(32))  # 5.66, was 7.07 (1.41 px more)
    full = np.abs(np.fft.fftn(np.ones((9, 9, 9))))  # sanity: 9 distinct frequencies per axis
    assert full.shape == (9, 9, 9) and len(set(grid.fft_freqs(9).tolist())) == 9


def _radial_average_loop(w):
    """RELION ``RadialAvg::fftwHalf_3D_lin`` with the FFTW frequency of every index."""
    d, h, wh = w.shape
    avg = np.zeros(wh)
    wgh = np.zeros(wh)
    for z in range(d):
        for y in range(h):
            for x in range(wh):
                r = math.sqrt(x * x + _freq(y, h) ** 2 + _freq(z, d) ** 2)
                r0 = int(r)
                w1 = r - r0
                if r0 < wh:
                    avg[r0] += (1 - w1) * w[z, y, x]
                    wgh[r0] += 1 - w1
                if r0 + 1 < wh:
                    avg[r0 + 1] += w1 * w[z, y, x]
                    wgh[r0 + 1] += w1
    return np.where(wgh > 0, avg / np.where(wgh > 0, wgh, 1), avg)


@pytest.mark.parametrize("s", [8, 9])
def test_reconstruct_radial_average_equals_loop(s):
    w = np.random.default_rng(s).random((s, s, s // 2 + 1))
    np.testing.assert_allclose(radial_average_half_lin(w), _radial_average_loop(w), rtol=1e-12)


@pytest.mark.parametrize("s", [8, 9, 10, 11])
def test_wrapped_frequency_users_equal_loops(s):
    """Every kernel that reads a wrapped frequency takes the FFTW one, on odd boxes too."""
    sh = s // 2 + 1
    coords = HalfGrid(s).coords
    expect = [(x, _freq(y, s), _freq(z, s)) for z in range(s) for y in range(s) for x in range(sh)]
    np.testing.assert_array_equal(coords, expect)

    m = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])
    cone = cone_weight(s, m, 0.2, 1.5)
    for z, y, x in itertools.product(range(s), range(s), range(sh)):
        p = m @ np.array([x, _freq(y, s), _freq(z, s)], float)
        t = math.hypot(p[0], p[1]) / (abs(p[2]) * 0.2 + 1.5)
        assert cone[z, y, x] == pytest.approx(1 - math.exp(-0.5 * t * t), abs=1e-12)

    ys, xs, yy = slice_points(s, np.full(s, sh))
    rows = [(y, x) for y in range(s) for x in range(0 if _freq(y, s) >= 0 else 1, sh)]
    assert list(zip(ys.tolist(), xs.tolist())) == rows
    assert yy.tolist() == [_freq(y, s) for y in ys]

    dose = np.ones((1, s, sh))
    xr = dose_x_ranges(dose, 0.5)
    for y in range(s):  # within the circle of radius s/2: x <= sqrt(s²//4 − y'²)
        lim = (s * s) // 4 - _freq(y, s) ** 2
        assert xr[0, y] == (min(int(math.floor(math.sqrt(lim))), sh - 1) + 1 if lim >= 0 else 0)


@pytest.mark.parametrize("new", [8, 9])
def test_fourier_crop_keeps_the_band_of_odd_and_even_boxes(new):
    """Cropping the spectrum of a 24² image made of waves up to the highest frequency below
    Nyquist of the ``new`` box (``(new − 1)//2``: 3 for 8, 4 for 9) to ``new`` pixels gives
    the same waves sampled on the ``new`` grid."""
    k = (new - 1) // 2

    def waves(n):
        y, x = np.mgrid[:n, :n] / n
        return np.cos(2 * np.pi * (k * y + 2 * x)) + 0.5 * np.sin(2 * np.pi * (-k * y + x))
    spec = np.fft.rfft2(waves(24)) * (new / 24.0) ** 2
    small = np.fft.irfft2(fourier_crop_half(spec, new), s=(new, new))
    np.testing.assert_allclose(small, waves(new), atol=1e-12)
