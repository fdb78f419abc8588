"""E-step / M-step kernels of one tomography particle against truth and slow reference loops."""

import numpy as np
import pytest

from sta.geometry.euler import euler_to_matrix, rot_y
from sta.geometry.healpix import OrientationSampling, translations
from sta.kernels.ctf import ctf_2d
from sta.kernels.likelihood import (
    SliceSampler, backprojection_slices, cross_correlation_scores, ctf_noise_weight, log_sigma2_term, noise_maps,
    noise_sums, power_spectra,
    offset_log_prior, offset_sums, orientation_log_prior, prepare_particle, resolution_index, slice_matrices,
    squared_differences, translation_phases, weighted_images, weights_from_cc, weights_from_diff2,
    window_frequencies, window_half_spectrum)
from sta.kernels.projector import FourierProjector, trilinear_half_complex

N = 32


def blob_map(n=N, n_blobs=30, seed=3):
    """Sum of small Gaussians (σ 0.7–1 px) within 6 px of the centre: power up to Nyquist."""
    rng = np.random.default_rng(seed)
    c = n // 2
    z, y, x = np.mgrid[:n, :n, :n] - c
    vol = np.zeros((n, n, n))
    for p, s, a in zip(rng.uniform(-6, 6, (n_blobs, 3)), rng.uniform(0.7, 1.0, n_blobs),
                       rng.uniform(0.5, 1.5, n_blobs)):
        vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return vol


def tilt_stack(n_img=9, a_sub_angles=(20.0, 70.0, -35.0)):
    """``Aproj_f = R_f · A_sub`` for tilts −60…60° about y."""
    tilts = np.linspace(-60, 60, n_img)
    return rot_y(tilts) @ euler_to_matrix(*a_sub_angles)


def ctf_squared(n_img, box=N, seed=0):
    rng = np.random.default_rng(seed)
    du = rng.uniform(15000, 30000, n_img)
    c = ctf_2d(box, 4.0, du, du + 300.0, np.full(n_img, 30.0), 300.0, 2.7, 0.1)
    return c * c


@pytest.fixture(scope="module")
def scene():
    vol = blob_map()
    sampler = SliceSampler(FourierProjector(vol, pad=2))
    aproj = tilt_stack()
    samp = OrientationSampling(healpix_order=1, offset_range=2.0, offset_step=1.0)
    ang = samp.orientations()
    rots = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    trans = translations(2.0, 1.0)
    return dict(vol=vol, sampler=sampler, aproj=aproj, rots=rots, trans=trans, ctf2=ctf_squared(len(aproj)))


def random_particle(rng, n_img=3, s=16, cs=12, n_o=5, n_t=4):
    img = rng.normal(size=(n_img, s, s // 2 + 1)) + 1j * rng.normal(size=(n_img, s, s // 2 + 1))
    ctf2 = rng.uniform(0, 1, (n_img, s, s // 2 + 1))
    aproj = euler_to_matrix(rng.uniform(-180, 180, n_img), rng.uniform(0, 180, n_img), rng.uniform(-180, 180, n_img))
    inv, bp = noise_maps(rng.uniform(0.5, 2.0, s // 2 + 1), cs)
    p = prepare_particle(img, ctf2, aproj, inv, current_size=cs, bp_inv_sigma2=bp)
    proj = rng.normal(size=(n_o, n_img, cs, cs // 2 + 1)) + 1j * rng.normal(size=(n_o, n_img, cs, cs // 2 + 1))
    trans = rng.uniform(-3, 3, (n_t, 3))
    ph = translation_phases(trans, aproj, s, cs)
    return p, proj, ph, trans


def slow_diff2(p, proj, ph, scale=1.0):
    out = np.zeros((proj.shape[0], ph.shape[0]))
    for o in range(proj.shape[0]):
        for t in range(ph.shape[0]):
            for f in range(p.n_img):
                r = scale * p.ctf2[f] * proj[o, f] - p.images[f] * ph[t, f]
                inv = p.inv_sigma2[f] if p.inv_sigma2.ndim == 3 else p.inv_sigma2
                out[o, t] += np.sum(np.abs(r) ** 2 * inv)
    return out


def test_squared_differences_matches_slow_loop():
    """Random data, windowed 16 -> 12: the matrix-product expansion equals the direct sum to 1e-10,
    for the full and the compressed pixel layouts, with chunking and a callable source."""
    rng = np.random.default_rng(1)
    p, proj, ph, _ = random_particle(rng)
    ref = slow_diff2(p, proj, ph, scale=1.3)
    full = squared_differences(proj, p, ph, scale=1.3)
    assert np.abs(full - ref).max() < 1e-10 * np.abs(ref).max()
    flat = proj.reshape(proj.shape[:2] + (-1,))[..., p.pix]
    phc = translation_phases(rng.uniform(size=(1, 3)), p.aproj, 16, 12, p.pix)  # shape check only
    assert phc.shape == (1, p.n_img, p.pix.size)
    tiny = squared_differences(lambda a, b: flat[a:b], p, ph.reshape(ph.shape[:2] + (-1,))[..., p.pix],
                               max_bytes=1, scale=1.3, n_orientations=proj.shape[0])
    assert np.abs(tiny - ref).max() < 1e-10 * np.abs(ref).max()


def test_ctf_noise_model_matches_slow_loops():
    """Per-pixel noise ``Fctf·σ²`` (premultiplied stacks): diff2 and σ² sums equal direct sums with
    ``1/(2σ²·max(Fctf, floor))`` per image and pixel (floor: 1% of the image's maximum)."""
    rng = np.random.default_rng(2)
    s, cs = 16, 12
    img = rng.normal(size=(3, s, s // 2 + 1)) + 1j * rng.normal(size=(3, s, s // 2 + 1))
    ctf2 = rng.uniform(0, 1, (3, s, s // 2 + 1))
    aproj = euler_to_matrix(rng.uniform(-180, 180, 3), rng.uniform(0, 180, 3), rng.uniform(-180, 180, 3))
    sigma2 = rng.uniform(0.5, 2.0, s // 2 + 1)
    inv, bp = noise_maps(sigma2, cs)
    nw = ctf_noise_weight(ctf2)
    assert np.allclose(nw, 1.0 / np.maximum(ctf2, 0.01 * ctf2.max(axis=(1, 2))[:, None, None]))
    p = prepare_particle(img, ctf2, aproj, inv, current_size=cs, bp_inv_sigma2=bp, noise_weight=nw)
    nw_w = window_half_spectrum(nw, cs)
    assert p.inv_sigma2.shape == (3, cs, cs // 2 + 1) and np.allclose(p.inv_sigma2, inv * (p.resol > 0) * nw_w)
    assert np.allclose(p.bp_inv_sigma2, bp * (p.resol >= 0))     # back-projection stays per shell
    proj = rng.normal(size=(4, 3, cs, cs // 2 + 1)) + 1j * rng.normal(size=(4, 3, cs, cs // 2 + 1))
    ph = translation_phases(rng.uniform(-3, 3, (5, 3)), aproj, s, cs)
    ref = slow_diff2(p, proj, ph, scale=0.9)
    assert np.abs(squared_differences(proj, p, ph, scale=0.9) - ref).max() < 1e-10 * np.abs(ref).max()
    w = rng.uniform(0, 1, (4, 5))
    w /= w.sum()
    ns = noise_sums(w, proj, p, ph)
    sig = np.zeros(s // 2 + 1)
    for o in range(4):
        for t in range(5):
            for f in range(3):
                r2 = np.abs(p.images[f] * ph[t, f] - p.ctf2[f] * proj[o, f]) ** 2 * nw_w[f]
                np.add.at(sig, p.resol[p.resol >= 0], w[o, t] * r2[p.resol >= 0])
    sig[cs // 2 + 1:] += (power_spectra(img * np.sqrt(nw)))[:, cs // 2 + 1:].sum(axis=0)
    np.testing.assert_allclose(ns.wsum_sigma2, sig, rtol=1e-11)


def test_ctf_noise_model_is_calibrated_on_premultiplied_noise():
    """Premultiplied pure noise ``X = C·n`` (E|n|² = 2σ²): the CTF-weighted model recovers σ² (mean
    over shells within 5%, every shell within 12%) and its diff2 per pixel averages 1 (a calibrated likelihood); RELION's shell
    model estimates ⟨C²⟩σ² instead and over-weights the pixels where C² is large (mean > 1.5)."""
    rng = np.random.default_rng(4)
    n_img, s = 40, 32
    du = rng.uniform(15000, 30000, n_img)
    c = ctf_2d(s, 4.0, du, du + 300.0, np.full(n_img, 30.0), 300.0, 2.7, 0.1)
    c = c * np.exp(-np.linspace(0, 3, n_img))[:, None, None] ** (1 + 0 * c)   # dose-like attenuation
    sigma2 = np.linspace(2.0, 0.5, s // 2 + 1)
    r = np.round(np.hypot(*np.meshgrid(np.fft.fftfreq(s, 1 / s), np.arange(s // 2 + 1), indexing="ij")))
    sd = np.sqrt(sigma2[np.minimum(r, s // 2).astype(int)])
    x = c * sd * (rng.normal(size=c.shape) + 1j * rng.normal(size=c.shape))
    aproj = np.stack([np.eye(3)] * n_img)
    zero = np.zeros((1, n_img, s, s // 2 + 1), dtype=complex)
    ph = np.ones((1, n_img, s, s // 2 + 1), dtype=complex)
    out = {}
    for label, nw in (("ctf", ctf_noise_weight(c * c)), ("shell", None)):
        inv, bp = noise_maps(sigma2 if nw is not None else sigma2 * 0.25, s)
        p = prepare_particle(x, c * c, aproj, inv, bp_inv_sigma2=bp, noise_weight=nw)
        ns = noise_sums(np.ones((1, 1)), zero, p, ph)
        npix = np.bincount(p.resol[p.resol >= 0], minlength=s // 2 + 1)[: s // 2 + 1]
        out[label] = (ns.wsum_sigma2 / (2 * ns.sumw * np.maximum(npix, 1)), p)
    est, p = out["ctf"]
    keep = slice(3, s // 2)
    ratio = est[keep] / sigma2[keep]
    assert abs(ratio.mean() - 1) < 0.05 and np.abs(ratio - 1).max() < 0.12   # the floor biases it ~3% low
    inv, bp = noise_maps(est, s)
    p = prepare_particle(x, c * c, aproj, inv, bp_inv_sigma2=bp, noise_weight=ctf_noise_weight(c * c))
    per_pixel = squared_differences(zero, p, ph)[0, 0] / np.count_nonzero(p.inv_sigma2)
    assert abs(per_pixel - 1) < 0.05
    shell_est, _ = out["shell"]
    inv, bp = noise_maps(shell_est, s)
    ps = prepare_particle(x, c * c, aproj, inv, bp_inv_sigma2=bp)
    big = (c * c > 0.5 * (c * c).max()) & (ps.resol > 0)
    ratio = (np.abs(x) ** 2 * ps.inv_sigma2)[big].mean()
    assert ratio > 1.5


def test_squared_differences_memory_is_bounded_by_max_bytes(scene):
    """On-the-fly slices for 600 orientations x 20 images (78 MB if stored): the traced peak stays
    below max_bytes = 32 MiB and the result equals the unchunked one."""
    import tracemalloc

    rng = np.random.default_rng(8)
    aproj = tilt_stack(20)
    rots = scene["rots"][:600]
    img = rng.normal(size=(20, N, N // 2 + 1)) + 1j * rng.normal(size=(20, N, N // 2 + 1))
    inv, _ = noise_maps(np.ones(N // 2 + 1), N)
    p = prepare_particle(img, np.ones(img.shape), aproj, inv)
    ph = translation_phases(rng.uniform(-2, 2, (60, 3)), aproj, N, pix=p.pix)
    sampler = scene["sampler"]
    budget = 32 * 2 ** 20
    tracemalloc.start()
    d2 = squared_differences(lambda a, b: sampler.project(rots[a:b], aproj, N, p.pix), p, ph,
                             n_orientations=len(rots), max_bytes=budget)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < budget
    ref = squared_differences(sampler.project(rots[:50], aproj, N, p.pix), p, ph, max_bytes=2 ** 34)
    assert np.abs(d2[:50] - ref).max() < 1e-9 * np.abs(ref).max()


def test_cross_correlation_matches_slow_loop():
    rng = np.random.default_rng(2)
    p, proj, ph, _ = random_particle(rng)
    ref = np.zeros((proj.shape[0], ph.shape[0]))
    for o in range(proj.shape[0]):
        for t in range(ph.shape[0]):
            for f in range(p.n_img):
                a = p.ctf2[f] * proj[o, f]
                x = p.images[f] * ph[t, f]
                ref[o, t] -= np.real(np.sum(np.conj(a) * x)) / (np.sqrt(np.sum(np.abs(a) ** 2))
                                                                 * np.sqrt(np.sum(np.abs(p.images[f]) ** 2)))
    got = cross_correlation_scores(proj, p, ph, max_bytes=1)
    assert np.abs(got - ref).max() < 1e-12
    post = weights_from_cc(got, p.n_img)
    assert post.best == np.unravel_index(np.argmin(ref), ref.shape) and post.pmax == 1.0
    assert post.log_likelihood == pytest.approx(-ref.min() / p.n_img)


def test_window_and_resolution_index_follow_relion():
    spec = np.arange(16 * 9).reshape(16, 9)
    w = window_half_spectrum(spec, 8)
    np.testing.assert_array_equal(w[:, 0], spec[[0, 1, 2, 3, 4, 13, 14, 15], 0])
    ky, kx = window_frequencies(8)
    assert ky.ravel().tolist() == [0, 1, 2, 3, 4, -3, -2, -1]
    ires = resolution_index(8)
    assert ires[0, 0] == 0 and ires[4, 0] == 4 and ires[5, 0] == -1 and ires[4, 1] == 4 and ires[3, 4] == -1


def test_slice_sampler_equals_projector(scene):
    rng = np.random.default_rng(4)
    proj = FourierProjector(scene["vol"], pad=2)
    c = rng.uniform(-34, 34, (20000, 3))
    a = trilinear_half_complex(proj.ft, c)
    b = scene["sampler"].sample(c[:, 0], c[:, 1], c[:, 2])
    assert np.abs(a - b).max() < 1e-12 * np.abs(a).max()
    rots = scene["rots"][:3]
    mine = scene["sampler"].project(rots, scene["aproj"], N)
    ref = proj.project_slices(slice_matrices(rots, scene["aproj"]), N) / N
    ky, kx = window_frequencies(N)
    same = np.broadcast_to((kx ** 2 + ky ** 2 <= (N // 2) ** 2) & (np.abs(ky) < N // 2), mine.shape)
    assert np.abs(mine - ref)[same].max() < 1e-12 * np.abs(ref).max()


def test_true_pose_has_zero_diff2_and_the_peak_weight(scene):
    """Premultiplied stack X_f = C_f²·P_f(A)·(shift by −s_f) with a grid pose (A, t): diff2 at the
    truth is 0 to rounding, every other pose is worse, the weights peak there."""
    rots, trans, aproj, ctf2 = scene["rots"], scene["trans"], scene["aproj"], scene["ctf2"]
    io, it = 217, 25
    p_true = scene["sampler"].project(rots[io:io + 1], aproj, N)[0]
    s = aproj[:, :2, :] @ trans[it]
    x = ctf2 * p_true * translation_phases(-trans[it][None], aproj, N)[0]
    assert np.allclose(translation_phases(trans[it][None], aproj, N)[0] * translation_phases(
        -trans[it][None], aproj, N)[0], 1.0)
    assert np.abs(s).max() > 0.5
    inv, _ = noise_maps(np.full(N // 2 + 1, 1e-4), N)
    p = prepare_particle(x, ctf2, aproj, inv)
    ph = translation_phases(trans, aproj, N, pix=p.pix)
    d2 = squared_differences(lambda a, b: scene["sampler"].project(rots[a:b], aproj, N, p.pix), p, ph,
                             n_orientations=len(rots))
    assert abs(d2[io, it]) < 1e-9 * p.x2
    others = np.delete(d2.ravel(), io * len(trans) + it)
    assert others.min() > 1e3
    post = weights_from_diff2(d2)
    assert post.best == (io, it) and post.pmax > 0.999 and post.n_significant == 1


def test_translation_sign_recovers_a_shifted_particle(scene):
    """A particle whose 3D centre is displaced by −t (volume rolled by −t voxels) is matched by +t,
    with the images built in real space (no phase factors), so the sign of the shift is physical."""
    vol, aproj, ctf2 = scene["vol"], scene["aproj"], scene["ctf2"]
    t_true = np.array([2.0, -1.0, 1.0])                                 # pixels (x, y, z)
    moved = np.roll(vol, shift=(-1, 1, -2), axis=(0, 1, 2))             # axes (z, y, x): content at r − t
    data = SliceSampler(FourierProjector(moved, pad=2)).project(np.eye(3)[None], aproj, N)[0]
    inv, _ = noise_maps(np.full(N // 2 + 1, 1e-3), N)
    p = prepare_particle(ctf2 * data, ctf2, aproj, inv)
    trans = translations(3.0, 1.0)
    ph = translation_phases(trans, aproj, N, pix=p.pix)
    d2 = squared_differences(scene["sampler"].project(np.eye(3)[None], aproj, N, p.pix), p, ph)
    post = weights_from_diff2(d2)
    assert np.allclose(trans[post.best[1]], t_true)
    i_minus = np.flatnonzero(np.all(trans == -t_true, axis=1))[0]
    assert d2[0, i_minus] > d2[0, post.best[1]] + 100.0


def test_weights_follow_relion_rules():
    diff2 = np.array([[3.0, 0.5, np.inf], [0.0, 2.0, 1.0]])
    lpo = orientation_log_prior(np.array([1.0, 3.0]))
    np.testing.assert_allclose(np.exp(lpo), [0.5, 1.5])
    lpt = offset_log_prior(np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0]]), np.zeros(3), 4.0, 2.0)
    raw = np.exp(-np.array([0.0, 4.0, 16.0]) / 8.0)
    np.testing.assert_allclose(np.exp(lpt), raw / raw.mean())
    post = weights_from_diff2(diff2, lpo, lpt, adaptive_fraction=0.8, log_sigma2=1.5)
    w = np.exp(lpo)[:, None] * np.exp(lpt)[None] * np.exp(-diff2)
    w[0, 2] = 0.0
    np.testing.assert_allclose(post.weights, w)
    srt = np.sort(w.ravel())[::-1]
    n = int(np.argmax(np.cumsum(srt) > 0.8 * w.sum())) + 1
    assert post.n_significant == n
    np.testing.assert_array_equal(post.significant, w >= srt[n - 1])
    assert post.best == (1, 0) and post.pmax == pytest.approx(w.max() / w.sum())
    assert post.log_likelihood == pytest.approx(np.log(w.sum()) - 0.0 - 1.5)
    capped = weights_from_diff2(diff2, lpo, lpt, adaptive_fraction=0.999, max_significants=2)
    assert capped.n_significant == 2 and capped.significant.sum() == 2
    assert weights_from_diff2(np.array([[0.0, 800.0]])).weights[0, 1] == 0.0
    # σ_offset below 0.0001 Å: RELION gives every offset prior 1
    np.testing.assert_array_equal(offset_log_prior(np.ones((3, 3)), np.zeros(3), 1e-5, 1.0), 0.0)
    assert log_sigma2_term(np.full(5, 2.0), 8, 3) == pytest.approx(
        3 * np.count_nonzero(resolution_index(8) > 0) * np.log(4 * np.pi))


def test_mstep_sums_match_slow_loops():
    rng = np.random.default_rng(5)
    p, proj, ph, trans = random_particle(rng, n_o=4, n_t=5)
    w = rng.uniform(0, 1, (4, 5))
    w /= w.sum()
    wimg, wsum = weighted_images(w, p.images, ph)
    ref = np.einsum("ot,tfyx->ofyx", w, ph) * p.images[None]
    assert np.abs(wimg - ref).max() < 1e-12 and np.allclose(wsum, w.sum(1))
    ssnr = np.where(np.arange(9) % 2 == 0, 5.0, 1.0)
    ns = noise_sums(w, proj, p, ph, scale=0.8, ssnr=ssnr)
    sig = np.zeros(9)
    xa = aa = 0.0
    for o in range(4):
        for t in range(5):
            for f in range(p.n_img):
                a = 0.8 * p.ctf2[f] * proj[o, f]
                r2 = np.abs(p.images[f] * ph[t, f] - a) ** 2
                for (yy, xx), ires in np.ndenumerate(p.resol):
                    if ires >= 0:
                        sig[ires] += w[o, t] * r2[yy, xx]
                        if ssnr[ires] > 3:
                            xa += w[o, t] * np.real(np.conj(a[yy, xx]) * p.images[f, yy, xx] * ph[t, f, yy, xx])
                            aa += w[o, t] * abs(a[yy, xx]) ** 2
    sig[7:] += p.power[:, 7:].sum(axis=0)
    np.testing.assert_allclose(ns.wsum_sigma2, sig, rtol=1e-11)
    assert ns.sumw == pytest.approx(p.n_img * w.sum())
    assert ns.scale_xa == pytest.approx(xa, rel=1e-11) and ns.scale_aa == pytest.approx(aa, rel=1e-11)
    s2, sw = offset_sums(w, trans, np.array([0.5, 0, 0]), 2.0, p.n_img)
    d2 = ((trans - [0.5, 0, 0]) ** 2).sum(1)
    assert s2 == pytest.approx(p.n_img * (w.sum(0) * d2).sum() * 4.0) and sw == pytest.approx(p.n_img)
    data, weight = backprojection_slices(wimg, wsum, p, scale=0.8)
    assert np.allclose(data, wimg * p.bp_inv_sigma2)
    assert np.allclose(weight[1, 2], wsum[1] * 0.8 * p.ctf2[2] * p.bp_inv_sigma2)


def test_noise_maps_and_prepare_constants():
    s2 = np.linspace(1.0, 2.0, 9)
    inv, bp = noise_maps(s2, 16, sigma2_fudge=2.0)
    ires = resolution_index(16)
    assert inv[0, 0] == 0.0 and bp[0, 0] == pytest.approx(1 / (2 * s2[0]))
    assert inv[3, 4] == pytest.approx(0.5 / (2 * s2[5]))
    assert np.all(inv[ires < 0] == 0) and np.all(bp[ires < 0] == 0)
    rng = np.random.default_rng(6)
    img = rng.normal(size=(2, 16, 9)) + 1j * rng.normal(size=(2, 16, 9))
    inv_full, _ = noise_maps(s2, 16)
    p = prepare_particle(img, np.ones((2, 16, 9)), np.stack([np.eye(3)] * 2), inv_full, current_size=10)
    assert p.images.shape == (2, 10, 6)
    assert p.x2 == pytest.approx(np.sum(np.abs(p.images) ** 2 * p.inv_sigma2))
    full_ires = resolution_index(16)
    hi = (full_ires >= 6)
    assert np.allclose(p.highres_xi2, (np.abs(img) ** 2)[:, hi].sum(axis=1))
    assert p.diff2_constant == pytest.approx(p.highres_xi2.sum() / 2)
