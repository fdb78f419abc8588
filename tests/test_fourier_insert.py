"""RELION BackProjector kernels: insertion, symmetry, SSNR arrays and reconstruction against truth."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sta.geometry.symmetry import parse_symmetry
from sta.kernels.ctf import ctf_2d
from sta.kernels.fourier_insert import (
    accumulator_shape, downsampled_average, downsampled_fsc, enforce_hermitian, insert_slices, join_low_resolution,
    new_accumulator, reconstruct, ssnr_arrays, symmetrise)
from sta.kernels.fsc import fsc
from sta.kernels.likelihood import SliceSampler, window_frequencies, window_half_spectrum
from sta.kernels.projector import FourierProjector
from tests.test_likelihood import blob_map

N = 32
C1 = np.eye(3)[None]


@pytest.fixture(scope="module")
def truth():
    vol = blob_map()
    return vol, SliceSampler(FourierProjector(vol, pad=2))


def slices_of(sampler, rots, cs=N):
    return sampler.project(rots, np.eye(3)[None], cs)[:, 0]


def insert_loop(data, weight, sl, wt, mats, pad):
    """Direct transcription of RELION's backproject2Dto3D (trilinear branch), one pixel at a time."""
    d = data.shape[0]
    c = d // 2
    big_r = (d - 3) // 2
    for f in range(len(sl)):
        ainv = np.linalg.inv(mats[f]) * pad
        s, sh = sl.shape[1:]
        for i in range(s):
            y = i if i < sh else i - s
            for x in range(1 if i >= sh else 0, sh):
                if wt[f, i, x] <= 0:
                    continue
                p = ainv[:, 0] * x + ainv[:, 1] * y
                if p @ p > big_r * big_r:
                    continue
                v = sl[f, i, x]
                if p[0] < 0:
                    p, v = -p, np.conj(v)
                x0, y0, z0 = (int(np.floor(q)) for q in p)
                fx, fy, fz = p[0] - x0, p[1] - y0, p[2] - z0
                y0 += c
                z0 += c
                if x0 + 1 >= data.shape[2] or y0 < 0 or y0 + 1 >= d or z0 < 0 or z0 + 1 >= d:
                    continue
                for dz, gz in ((0, 1 - fz), (1, fz)):
                    for dy, gy in ((0, 1 - fy), (1, fy)):
                        for dx, gx in ((0, 1 - fx), (1, fx)):
                            data[z0 + dz, y0 + dy, x0 + dx] += gz * gy * gx * v
                            weight[z0 + dz, y0 + dy, x0 + dx] += gz * gy * gx * wt[f, i, x]


def test_insert_slices_matches_relion_loop():
    rng = np.random.default_rng(0)
    n, cs = 12, 8
    rots = Rotation.random(6, random_state=2).as_matrix()
    sl = rng.normal(size=(6, cs, cs // 2 + 1)) + 1j * rng.normal(size=(6, cs, cs // 2 + 1))
    wt = rng.uniform(-0.2, 1.0, (6, cs, cs // 2 + 1))          # some weights <= 0: skipped
    d1, w1 = new_accumulator(n, 2, current_size=cs)
    d2, w2 = new_accumulator(n, 2, current_size=cs)
    assert d1.shape == accumulator_shape(n, 2, cs)[0] == (19, 19, 10)
    insert_slices(d1, w1, sl, wt, rots, pad=2)
    insert_loop(d2, w2, sl, wt, rots, 2)
    assert np.abs(d1 - d2).max() < 1e-12 and np.abs(w1 - w2).max() < 1e-12
    assert np.abs(d1).sum() > 0


def test_projection_insertion_round_trip(truth):
    """500 noise-free projections, weight 1: FSC vs the map > 0.99 up to 0.9 Nyquist, grey scale kept."""
    vol, sampler = truth
    rots = Rotation.random(500, random_state=1).as_matrix()
    sl = slices_of(sampler, rots)
    d, w = new_accumulator(N, 2)
    insert_slices(d, w, sl, np.ones(sl.shape), rots, pad=2)
    rec, arrays = reconstruct(*symmetrise(d, w, C1), N, 2)
    curve = fsc(rec, vol)
    assert curve[1:int(0.9 * N / 2) + 1].min() > 0.99, np.round(curve, 4)
    assert (rec * vol).sum() / (vol * vol).sum() == pytest.approx(1.0, abs=0.02)
    assert arrays.sigma2[1] > 0 and arrays.fourier_coverage[0] == 1.0


def test_ctf_premultiplied_round_trip(truth):
    """Data C²·P, weight C² (per-slice defocus 1–3.5 µm at 4 Å): FSC > 0.99 in every shell whose mean
    weight is not tiny (> 1 % of the largest shell mean)."""
    vol, sampler = truth
    rng = np.random.default_rng(3)
    rots = Rotation.random(500, random_state=4).as_matrix()
    du = rng.uniform(10000, 35000, len(rots))
    c2 = ctf_2d(N, 4.0, du, du + 200, np.zeros(len(rots)), 300.0, 2.7, 0.1) ** 2
    d, w = new_accumulator(N, 2)
    insert_slices(d, w, c2 * slices_of(sampler, rots), c2, rots, pad=2)
    rec, arrays = reconstruct(*symmetrise(d, w, C1), N, 2)
    curve = fsc(rec, vol)
    mean_w = 1.0 / np.where(arrays.sigma2 > 0, arrays.sigma2, np.inf)
    ok = mean_w[:N // 2] > 0.01 * mean_w.max()
    assert ok[1:int(0.9 * N / 2) + 1].sum() >= 12
    assert curve[:N // 2][ok][1:].min() > 0.99, np.round(curve, 4)


def test_smaller_current_size(truth):
    """Slices windowed to cs = 20: the map is right up to shell 9 and empty beyond shell 10."""
    vol, sampler = truth
    rots = Rotation.random(300, random_state=5).as_matrix()
    full = slices_of(sampler, rots)
    ky, kx = window_frequencies(20)
    sl = window_half_spectrum(full, 20) * (kx ** 2 + ky ** 2 <= 100)   # RELION projects |k| <= cs/2 only
    np.testing.assert_allclose(sl, slices_of(sampler, rots, 20), atol=1e-12)
    d, w = new_accumulator(N, 2, current_size=20)
    insert_slices(d, w, sl, np.ones(sl.shape), rots, pad=2)
    rec, _ = reconstruct(*symmetrise(d, w, C1), N, 2)
    curve = fsc(rec, vol)
    assert curve[1:10].min() > 0.99
    spec = np.abs(np.fft.rfftn(rec)) ** 2
    k = np.sqrt(sum(g ** 2 for g in np.meshgrid(np.fft.fftfreq(N, 1 / N), np.fft.fftfreq(N, 1 / N),
                                                 np.fft.rfftfreq(N, 1 / N), indexing="ij")))
    assert spec[k > 12].sum() < 1e-3 * spec[(k > 5) & (k < 9)].sum()


def noisy_halves(sampler, n_slices, sigma, seed):
    rng = np.random.default_rng(seed)
    halves = []
    for h in range(2):
        rots = Rotation.random(n_slices, random_state=100 * seed + h).as_matrix()
        sl = slices_of(sampler, rots)
        noisy = sl + sigma * (rng.normal(size=sl.shape) + 1j * rng.normal(size=sl.shape))
        d, w = new_accumulator(N, 2)
        insert_slices(d, w, noisy / sigma ** 2, np.full(sl.shape, 1 / sigma ** 2), rots, pad=2)
        halves.append(symmetrise(d, w, C1))
    return halves


def test_tau2_regularisation_beats_plain_division(truth):
    """Two noisy half sets (100 slices each, white noise σ = 3): with τ² from the half-set FSC
    the map is closer to the truth (RMSE < 1/3) and its FSC vs truth is higher on average over the
    shells where the halves agree (FSC > 0.143)."""
    vol, sampler = truth
    h1, h2 = noisy_halves(sampler, 100, 3.0, seed=1)
    half_fsc = downsampled_fsc(downsampled_average(*h1), downsampled_average(*h2), N)
    assert half_fsc[0] == 1.0 and 0.9 > half_fsc[6] > 0.2 > half_fsc[14]
    plain, _ = reconstruct(*h1, N, 2)
    reg, arrays = reconstruct(*h1, N, 2, fsc=half_fsc)
    rmse_plain = np.sqrt(((plain - vol) ** 2).mean())
    rmse_reg = np.sqrt(((reg - vol) ** 2).mean())
    assert rmse_reg < rmse_plain / 3
    top = int(np.nonzero(half_fsc < 0.143)[0][0])
    gain = fsc(reg, vol)[1:top] - fsc(plain, vol)[1:top]
    assert gain.mean() > 0.003 and gain.min() > -0.02, np.round(gain, 4)
    f = np.clip(half_fsc, 0.001, 0.999)
    np.testing.assert_allclose(arrays.ssnr, f / (1 - f))
    np.testing.assert_allclose(arrays.tau2, arrays.ssnr * arrays.sigma2)
    joined = ssnr_arrays(h1[1], N, 2, fsc=half_fsc, join_halves=True)
    fj = np.minimum(np.sqrt(2 * np.maximum(half_fsc, 0.001) / (np.maximum(half_fsc, 0.001) + 1)), 0.999)
    np.testing.assert_allclose(joined.ssnr, fj / (1 - fj))


def test_ssnr_arrays_of_a_uniform_weight():
    d, w = new_accumulator(16, 2)
    w[:] = 0.5
    arr = ssnr_arrays(w, 16, 2)
    np.testing.assert_allclose(arr.sigma2[:8], 1.0 / (8 * 0.5))
    tau2 = np.full(9, 0.25)
    arr = ssnr_arrays(w, 16, 2, tau2=tau2, tau2_fudge=2.0)
    # data_vs_prior = weight / invtau2 = 0.5 · (8 · 2 · 0.25) = 2 in every shell up to r_max
    np.testing.assert_allclose(arr.ssnr[:9], 2.0)
    np.testing.assert_allclose(arr.fourier_coverage[:8], 1.0)


def test_symmetrise_c4_is_an_exact_sum_of_rotated_grids():
    """A 90° operator maps grid voxels onto grid voxels, so the trilinear lookups are exact."""
    rng = np.random.default_rng(7)
    d, w = new_accumulator(12, 2)
    d[:] = rng.normal(size=d.shape) + 1j * rng.normal(size=d.shape)
    w[:] = rng.uniform(size=w.shape)
    g = parse_symmetry("C4")
    sd, sw = symmetrise(d, w, g)
    hd, hw = enforce_hermitian(d, w)
    big_r = (d.shape[0] - 3) // 2
    c = d.shape[0] // 2
    ref_d, ref_w = hd.copy(), hw.copy()
    for z in range(d.shape[0]):
        for y in range(d.shape[1]):
            for x in range(d.shape[2]):
                k = np.array([x, y - c, z - c], float)
                if k @ k > big_r * big_r:
                    continue
                for m in g.matrices[1:]:
                    q = np.rint(m @ k).astype(int)
                    conj = q[0] < 0
                    if conj:
                        q = -q
                    v = hd[q[2] + c, q[1] + c, q[0]]
                    ref_d[z, y, x] += np.conj(v) if conj else v
                    ref_w[z, y, x] += hw[q[2] + c, q[1] + c, q[0]]
    assert np.abs(sd - ref_d).max() < 1e-12 and np.abs(sw - ref_w).max() < 1e-12
    # Hermitian enforcement: x = 0 plane pairs summed, origin untouched
    assert hd[c + 1, c + 2, 0] == pytest.approx(d[c + 1, c + 2, 0] + np.conj(d[c - 1, c - 2, 0]))
    assert hd[c, c, 0] == d[c, c, 0]


def test_symmetrise_c6_equals_inserting_all_mates(truth):
    """Slices of a C6-symmetrised map inserted once and symmetrised reconstruct the same map as
    inserting every slice at its six symmetry mates (sum, not mean: weights scale with the order)."""
    vol, _ = truth
    g = parse_symmetry("C6")
    from sta.simulate.phantom import symmetrize
    sym = symmetrize(vol, g)
    sampler = SliceSampler(FourierProjector(sym, pad=2))
    rots = Rotation.random(150, random_state=8).as_matrix()
    sl = slices_of(sampler, rots)
    d1, w1 = new_accumulator(N, 2)
    insert_slices(d1, w1, sl, np.ones(sl.shape), rots, pad=2)
    sd, sw = symmetrise(d1, w1, g)
    d6, w6 = new_accumulator(N, 2)
    mates = np.concatenate([rots @ m for m in g.matrices])
    insert_slices(d6, w6, np.tile(sl, (6, 1, 1)), np.ones((6 * len(rots),) + sl.shape[1:]), mates, pad=2)
    d6, w6 = enforce_hermitian(d6, w6)
    assert sw.sum() == pytest.approx(w6.sum(), rel=0.02)
    rec_sym, _ = reconstruct(sd, sw, N, 2)
    rec_all, _ = reconstruct(d6, w6, N, 2)
    assert fsc(rec_sym, rec_all)[1:15].min() > 0.99
    assert fsc(rec_sym, sym)[1:15].min() > 0.99


def test_downsampled_fsc_and_low_resolution_join(truth):
    _, sampler = truth
    rots = Rotation.random(100, random_state=9).as_matrix()
    sl = slices_of(sampler, rots)
    d, w = new_accumulator(N, 2)
    insert_slices(d, w, sl, np.ones(sl.shape), rots, pad=2)
    avg = downsampled_average(d, w)
    assert avg.shape == (35, 35, 18)
    np.testing.assert_allclose(downsampled_fsc(avg, avg, N)[:17], 1.0)
    d2, w2 = new_accumulator(N, 2)
    a, b, c, e = join_low_resolution(d, w, d2, w2, lowres_r_max=4, pad=2)
    k = (np.arange(d.shape[0]) - d.shape[0] // 2)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(d.shape[2])[None, None, :] ** 2
    inner = r2 <= 64
    np.testing.assert_allclose(a[inner], d[inner] / 2)
    np.testing.assert_allclose(c[inner], d[inner] / 2)
    np.testing.assert_array_equal(a[~inner], d[~inner])
    np.testing.assert_array_equal(e[~inner], w2[~inner])
