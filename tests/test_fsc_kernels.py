"""Kernels of post-processing: FSC, RELION's random numbers, phase randomisation, filters, masks.

Each kernel is checked against a literal (loop) transcription of RELION's definition or
against analytic truth.
"""

import ctypes
import ctypes.util
import math
import sys

import numpy as np
import pytest

from sta.kernels import filters
from sta.kernels import fsc as fsck
from sta.kernels.grid import freq_squared, shell_index


def _relion_fsc_loops(m1, m2):
    """RELION ``getFSC`` written as its loops over the FFTW half grid (kp/ip/jp rule)."""
    f1, f2 = np.fft.rfftn(m1), np.fft.rfftn(m2)
    nz, ny, nxh = f1.shape
    num = np.zeros(nxh)
    d1 = np.zeros(nxh)
    d2 = np.zeros(nxh)
    for k in range(nz):
        kp = k if k < nxh else k - nz
        for i in range(ny):
            ip = i if i < nxh else i - ny
            for j in range(nxh):
                r = math.sqrt(kp * kp + ip * ip + j * j)
                idx = int(r + 0.5)
                if idx >= nxh:
                    continue
                a, b = f1[k, i, j], f2[k, i, j]
                num[idx] += (np.conj(a) * b).real
                d1[idx] += abs(a) ** 2
                d2[idx] += abs(b) ** 2
    return num / np.sqrt(d1 * d2)


@pytest.mark.parametrize("box", [12, 11])
def test_fsc_equals_relion_loop_definition(box):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(box, box, box))
    b = a + rng.normal(size=a.shape)
    ours = fsck.fsc(a, b)
    ref = _relion_fsc_loops(a, b)
    assert ours.shape == (box // 2 + 1,)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_fsc_identity_scale_and_noise():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(24, 24, 24))
    np.testing.assert_allclose(fsck.fsc(a, 3.0 * a), 1.0, atol=1e-12)
    independent = fsck.fsc(a, rng.normal(size=a.shape))
    # shells 3.. hold > 100 components each: |FSC| ~ 1/sqrt(n) << 0.3
    assert np.abs(independent[3:]).max() < 0.3
    assert abs(independent[3:].mean()) < 0.05


GLIBC_SRAND1 = [1804289383, 846930886, 1681692777, 1714636915, 1957747793]


def test_relion_random_matches_glibc_reference_values():
    assert list(fsck.RelionRandom(1).rand(5)) == GLIBC_SRAND1
    assert list(fsck.RelionRandom(0).rand(5)) == GLIBC_SRAND1  # glibc: seed 0 acts as 1
    assert list(fsck.RelionRandom(42).rand(3)) == [71876166, 708592740, 1483128881]
    one = fsck.RelionRandom(7).rand(10000)
    g = fsck.RelionRandom(7)
    pieces = np.concatenate([g.rand(3), g.rand(4095), g.rand(5902)])
    np.testing.assert_array_equal(one, pieces)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc rand() is needed for the comparison")
def test_relion_random_equals_libc_rand():
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library found")
    libc = ctypes.CDLL(name)
    libc.srand(ctypes.c_uint(12345))
    ref = [libc.rand() for _ in range(20000)]
    if ref[0] != 383100999:
        pytest.skip("the C library is not glibc")
    np.testing.assert_array_equal(fsck.RelionRandom(12345).rand(20000), ref)


def test_relion_uniform_is_single_precision_rnd_unif():
    g = fsck.RelionRandom(0)
    vals = g.uniform(0.0, 2.0 * np.pi, 5)
    two_pi = np.float32(2.0 * np.pi)
    expect = np.array(GLIBC_SRAND1, dtype=np.float32) / np.float32(np.float32(2147483647) / two_pi)
    np.testing.assert_array_equal(vals, expect.astype(np.float64))
    assert np.all((vals >= 0) & (vals <= 2 * np.pi))


def test_randomize_phases_keeps_amplitudes_and_low_shells():
    rng = np.random.default_rng(5)
    vol = rng.normal(size=(16, 16, 16))
    out = fsck.randomize_phases_beyond(vol, 4, fsck.RelionRandom(0))
    f_in, f_out = np.fft.rfftn(vol), np.fft.rfftn(out)
    r2 = freq_squared(vol.shape)
    low = r2 < 16
    np.testing.assert_allclose(f_out[low], f_in[low], atol=1e-9)
    # amplitudes are kept except on the self-conjugate planes, where the real transform
    # can only keep the Hermitian part
    inner = (r2 >= 16) & (np.arange(9) > 0)[None, None, :] & (np.arange(9) < 8)[None, None, :]
    np.testing.assert_allclose(np.abs(f_out[inner]), np.abs(f_in[inner]), rtol=1e-9)
    fsc_curve = fsck.fsc(vol, out)
    assert fsc_curve[:4].min() > 0.999 and abs(fsc_curve[5:].mean()) < 0.1
    again = fsck.randomize_phases_beyond(vol, 4, fsck.RelionRandom(0))
    np.testing.assert_array_equal(out, again)


def test_curve_helpers():
    fm = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.4])
    fr = np.array([1.0, 0.9, 0.5, 0.2, 0.1, 0.0])
    true = fsck.corrected_fsc(fm, fr, randomize_at=2)
    np.testing.assert_allclose(true[:4], fm[:4])
    np.testing.assert_allclose(true[4:], [(0.5 - 0.1) / 0.9, 0.4])
    assert fsck.resolution_shell([1, 0.5, 0.2, 0.1, 0.3]) == 2
    assert fsck.resolution_shell([1, 0.9, 0.8]) == 2
    assert fsck.randomisation_shell([1, 0.95, 0.85, 0.7, 0.9], 48, 4.0) == 3
    assert fsck.randomisation_shell([1, 0.9], 48, 4.0, randomize_at_A=25.0) == 7
    assert fsck.randomisation_shell([1, 0.9, 0.85], 48, 4.0) == -1
    np.testing.assert_allclose(fsck.part_fsc([0.5], 2.0), [2 * 0.5 / 1.5])
    assert fsck.fix_origin([-1.0, 0.5])[0] == 1.0
    assert fsck.fractional_resolution_shell([1.0, 0.3, 0.1], 1) == pytest.approx(1 + (0.3 - 0.143) / 0.2)


def test_lowpass_bfactor_and_fsc_weights():
    box, angpix = 32, 2.0
    spec = np.ones((box, box, box // 2 + 1), dtype=complex)
    idx = shell_index((box, box, box))
    r = np.sqrt(freq_squared((box, box, box)))
    filters.lowpass_spectrum(spec, box, 8.0, angpix)  # shell 8, edge 7..9
    assert np.all(spec[r <= 7].real == 1) and np.all(spec[r > 9] == 0)
    assert spec[0, 0, 8].real == pytest.approx(0.5)
    spec = np.ones_like(spec)
    filters.bfactor_spectrum(spec, box, -100.0, angpix)
    s = r / (box * angpix)
    inside = s <= 1 / (2 * angpix)
    np.testing.assert_allclose(spec[inside].real, np.exp(25.0 * s[inside] ** 2))
    assert np.all(spec[~inside] == 0)
    # weights stop at the first shell below 1e-4, even if the FSC rises again
    w = filters.fsc_weights([1.0, 0.5, 0.3, 0.00005, 0.8])
    np.testing.assert_allclose(w, [1.0, math.sqrt(1 / 1.5), math.sqrt(0.6 / 1.3), 0.0, 0.0])
    np.testing.assert_allclose(filters.fsc_weights([-1.0, 0.5]), [0.0, 0.0])
    spec = np.ones_like(spec)
    filters.shell_weights_spectrum(spec, [1.0, 0.5], idx)
    assert spec[0, 0, 1].real == 0.5 and spec[0, 0, 5].real == 0


def test_mtf_division_constant_mtf():
    box, angpix = 16, 1.0
    spec = np.ones((box, box, box // 2 + 1), dtype=complex)
    res = np.linspace(0, 0.5, 11) / angpix
    filters.mtf_divide_spectrum(spec, box, angpix, res, np.full(11, 0.5))
    s = np.sqrt(freq_squared((box, box, box))) / (box * angpix)
    assert np.allclose(spec[s < 0.5], 2.0) and np.allclose(spec[s >= 0.5], 1.0)


def _extend_loops(b, extend):
    """RELION autoMask extension loop (grow only), literal."""
    out = b.copy()
    n = b.shape[0]
    e = int(math.ceil(abs(extend)))
    for k, i, j in zip(*np.nonzero(~b)):
        for kp in range(max(k - e, 0), min(k + e, n - 1) + 1):
            for ip in range(max(i - e, 0), min(i + e, n - 1) + 1):
                for jp in range(max(j - e, 0), min(j + e, n - 1) + 1):
                    if b[kp, ip, jp] and (kp - k) ** 2 + (ip - i) ** 2 + (jp - j) ** 2 < extend * extend:
                        out[k, i, j] = True
    return out


def _soft_loops(b, width):
    out = b.astype(float)
    n = b.shape[0]
    e = int(math.ceil(width))
    for k, i, j in zip(*np.nonzero(~b)):
        best = 9999.0
        for kp in range(max(k - e, 0), min(k + e, n - 1) + 1):
            for ip in range(max(i - e, 0), min(i + e, n - 1) + 1):
                for jp in range(max(j - e, 0), min(j + e, n - 1) + 1):
                    if b[kp, ip, jp]:
                        best = min(best, (kp - k) ** 2 + (ip - i) ** 2 + (jp - j) ** 2)
        if best < width * width:
            out[k, i, j] = 0.5 + 0.5 * math.cos(math.pi * math.sqrt(best) / width)
    return out


def test_mask_morphology_equals_relion_loops():
    rng = np.random.default_rng(6)
    b = rng.random((10, 10, 10)) > 0.97
    np.testing.assert_array_equal(filters.extend_binary(b, 2.5), _extend_loops(b, 2.5))
    grown = filters.extend_binary(b, 1.7)
    np.testing.assert_allclose(filters.soft_edge(grown, 2.6), _soft_loops(grown, 2.6), atol=1e-12)
    shrunk = filters.extend_binary(grown, -1.5)
    assert shrunk.sum() < grown.sum() and not np.any(shrunk & ~grown)
    np.testing.assert_array_equal(~filters.extend_binary(~grown, 1.5), shrunk)
    assert filters.soft_edge(np.zeros((4, 4, 4), bool), 3).max() == 0


def test_raised_masks():
    m = filters.raised_cosine_sphere((16, 16, 16), 3, 6, (0, 0, 2))
    assert m[8, 8, 10] == 1 and m[8, 8, 0] == 0
    assert m[8, 8, 10 + 4] == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 2 / 3))
    hard = filters.raised_cosine_sphere((9, 9, 9), 3, 3)  # no edge: 0/0 in RELION's formula
    d = np.sqrt(((np.indices((9, 9, 9)) - 4) ** 2).sum(axis=0))
    np.testing.assert_array_equal(hard, (d < 3).astype(float))
    assert hard[4, 4, 4 + 2] == 1 and hard[4, 4, 4 + 3] == 0
    c = filters.raised_crown((16, 16, 16), 2, 5, 2)
    assert c[8, 8, 8] == 0 and c[8, 8, 12] == 1 and c[8, 8, 8 + 6] == pytest.approx(0.5) and c[8, 8, 15] == 0
    amp, count = filters.radial_mean_amplitude(np.ones((8, 8, 5), complex) * 2)
    assert np.allclose(amp, 2) and count[0] == 1 and count.sum() < 8 * 8 * 5


def test_solvent_corrected_fsc_removes_mask_inflation():
    """Half maps = band-limited signal (shells < 7) + independent noise, a hard-edged mask: the
    mask edge spreads the signal's correlation into shells 9-12 of the masked FSC; the corrected
    FSC removes most of it and keeps the signal band."""
    from sta.kernels.filters import lowpass_map
    from sta.kernels.fsc import fsc, solvent_corrected_fsc

    box = 48
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    r = np.sqrt(x * x + y * y + z * z)
    signal = lowpass_map(rng.normal(size=(box,) * 3) * (r < 12), 8.0, 1.0) * 20.0
    h1 = signal + rng.normal(size=signal.shape)
    h2 = signal + rng.normal(size=signal.shape)
    mask = np.where(r < 14, 1.0, 0.0)
    masked = fsc(h1 * mask, h2 * mask)
    curve, unmasked, shell = solvent_corrected_fsc(h1, h2, mask, np.random.default_rng(1))
    assert shell == 7                                  # first shell with unmasked FSC < 0.8
    assert np.allclose(curve[:shell + 2], masked[:shell + 2])
    band = slice(9, 13)
    assert np.mean(masked[band]) > 0.15                # inflated by the mask edge
    assert np.mean(curve[band]) < 0.5 * np.mean(masked[band]), (curve[band], masked[band])
    assert np.all(curve[1:6] > 0.95)
