"""Faster orientation searches (issue 14): every new code path against the one it replaces.

Blocked trilinear sampling and slicing against the one-pass formula (bit for bit), phases at
the pixels against the whole window, the blocked weighted squares and the batched accuracy
search against their one-shot forms, the cross-particle slice cache (concurrency, budget,
errors), and the E-step of a small global search with the cache, across threads and without
it.
"""

import threading

import numpy as np
import pytest

from sta.geometry.euler import euler_to_matrix, rot_y
from sta.geometry.healpix import OrientationSampling
from sta.kernels import accuracy as acc
from sta.kernels import likelihood as lk
from sta.kernels.ctf import ctf_2d
from sta.kernels.fourier import centred_rfft
from sta.kernels.projector import FourierProjector
from sta.workflows.refine import engine as eng
from tests.test_likelihood import blob_map

N = 16


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.fixture(scope="module")
def samplers():
    proj = FourierProjector(blob_map(N, n_blobs=12), pad=2)
    return {np.complex64: lk.SliceSampler(proj, np.complex64), np.complex128: lk.SliceSampler(proj, np.complex128)}


def one_pass_slices(sampler, m, cs, pix=None, kz=None):
    """The slices as the code before blocking made them: every point in one sample_reference call."""
    minv = (np.linalg.inv(m) * sampler.scale).astype(sampler.real_dtype)
    ky, kx = lk.window_frequencies(cs)
    ky = np.broadcast_to(ky, (cs, cs // 2 + 1)).ravel()
    kx = np.broadcast_to(kx, (cs, cs // 2 + 1)).ravel()
    if pix is not None:
        ky, kx = ky[pix], kx[pix]
    r = cs // 2
    keep = kx * kx + ky * ky <= r * r
    kx, ky = kx[keep].astype(sampler.real_dtype), ky[keep].astype(sampler.real_dtype)
    c = minv[..., :, 0, None] * kx + minv[..., :, 1, None] * ky
    if kz is not None:
        kzf = np.asarray(kz, dtype=sampler.real_dtype).reshape(-1, 1, 1)
        c = c + minv[..., :, 2, None] * kzf
    vals = sampler.sample_reference(c[..., 0, :], c[..., 1, :], c[..., 2, :]) / sampler.n
    if kz is not None:
        vals = np.where(kx * kx + ky * ky + kzf[:, 0] * kzf[:, 0] <= r * r, vals, 0)
    out = np.zeros(m.shape[:2] + keep.shape, dtype=vals.dtype)
    out[..., keep] = vals
    return out if pix is not None else out.reshape(m.shape[:2] + (cs, cs // 2 + 1))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_blocked_sampling_is_the_one_pass_formula(samplers, dtype, monkeypatch):
    s = samplers[dtype]
    monkeypatch.setattr(lk, "SAMPLE_BLOCK", 1000)            # many blocks and a partial last one
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.3 * N, 1.3 * N, (3, 4321)).astype(s.real_dtype)   # x < 0 mates, points outside
    pts[:, :5] = [[0.0, -0.0, 3.0, -2.0, N + 0.5], [0.0, 1.0, -0.0, 2.5, 0.0], [0.0, 0.0, 0.0, -N, 1.0]]
    ref = s.sample_reference(*pts)
    assert same_bits(s.sample(*pts), ref)
    strided = np.asarray(pts.T.copy().T)                        # non-contiguous rows
    assert same_bits(s.sample(strided[0], strided[1], strided[2]), ref)
    out = np.empty(pts.shape[1], dtype=s.table.dtype)
    assert s.sample(*pts, out=out) is out and same_bits(out, ref)
    keep = pts.copy()
    s.sample(*pts)
    assert same_bits(pts, keep)                                 # inputs untouched without overwrite
    assert same_bits(s.sample(*pts.reshape(3, 29, 149)).reshape(-1), ref)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_blocked_slices_are_the_one_pass_slices(samplers, dtype, monkeypatch):
    s = samplers[dtype]
    monkeypatch.setattr(lk, "SAMPLE_BLOCK", 700)
    rng = np.random.default_rng(1)
    rots = euler_to_matrix(rng.uniform(-180, 180, 11), rng.uniform(0, 180, 11), rng.uniform(-180, 180, 11))
    aproj = rot_y(np.linspace(-60, 60, 5)) @ euler_to_matrix(10.0, 40.0, -20.0)
    m = lk.slice_matrices(rots, aproj)
    for cs in (N, 10):
        pix = np.flatnonzero(lk.noise_maps(np.ones(N // 2 + 1), cs)[0].ravel() > 0)   # "direct" path (>90% kept)
        part = pix[::3]                                                                 # scattered path
        kz = lk.plane_frequencies(cs)[:5]
        for kw in ({}, {"pix": pix}, {"pix": part}, {"kz": kz}, {"pix": pix, "kz": kz}):
            got = s.project(rots, aproj, cs, **kw)
            assert same_bits(got, one_pass_slices(s, m, cs, **kw)), (cs, sorted(kw))
        out = np.empty((11, 5, len(pix)), dtype=s.table.dtype)
        assert s.project(rots, aproj, cs, pix, out=out) is out
        with pytest.raises(ValueError):
            s.project(rots, aproj, cs, pix, out=np.empty((11, 5, len(pix) + 1), dtype=s.table.dtype))


def test_phases_at_pixels_are_the_window_phases():
    rng = np.random.default_rng(2)
    aproj = rot_y(np.linspace(-50, 50, 4))
    t = rng.normal(size=(6, 3)) * 2
    for cs in (N, 8):
        pix = np.flatnonzero(lk.noise_maps(np.ones(N // 2 + 1), cs)[0].ravel() > 0)
        for kz in (None, lk.plane_frequencies(cs)[:4]):
            full = lk.translation_phases(t, aproj, N, cs, kz=kz)
            got = lk.translation_phases(t, aproj, N, cs, pix=pix, kz=kz)
            assert got.flags.c_contiguous
            assert same_bits(got, np.ascontiguousarray(full.reshape(6, 4, -1)[..., pix]))


@pytest.mark.parametrize("noise_weight", [False, True])
def test_per_image_slices_and_pieces_give_the_same_diff2(noise_weight):
    """Slices given per image (the shared-slice path), stacked, or one orientation at a time, with
    the float32 product summed in pieces of GEMM_K: the float64 diff2 to float32 rounding."""
    rng = np.random.default_rng(9)
    n_img, s, cs, n_o, n_t = 4, 32, 32, 30, 9
    img = rng.normal(size=(n_img, s, s // 2 + 1)) + 1j * rng.normal(size=(n_img, s, s // 2 + 1))
    ctf2 = rng.uniform(0.1, 1, (n_img, s, s // 2 + 1))
    aproj = rot_y(np.linspace(-45, 45, n_img))
    inv, bp = lk.noise_maps(rng.uniform(0.5, 2.0, s // 2 + 1), cs)
    nw = lk.ctf_noise_weight(ctf2) if noise_weight else None
    p = lk.prepare_particle(img, ctf2, aproj, inv, bp_inv_sigma2=bp, noise_weight=nw)
    proj = (rng.normal(size=(n_o, n_img, len(p.pix))) + 1j * rng.normal(size=(n_o, n_img, len(p.pix))))
    proj = proj.astype(np.complex64)
    ph = lk.translation_phases(rng.uniform(-2, 2, (n_t, 3)), aproj, s, cs, pix=p.pix)
    assert 2 * n_img * len(p.pix) > 2 * lk.GEMM_K                      # several pieces
    exact = lk.squared_differences(proj.astype(np.complex128), p, ph, scale=1.2)
    stacked = lk.squared_differences(proj, p, ph, scale=1.2, dtype=np.float32)
    per_image = lk.squared_differences([np.ascontiguousarray(proj[:, f]) for f in range(n_img)], p, ph, scale=1.2,
                                       dtype=np.float32)
    one_by_one = lk.squared_differences(proj, p, ph, scale=1.2, dtype=np.float32, max_bytes=1)
    err = {k: np.abs(v - exact).max() / np.abs(exact).max() for k, v in
           (("stacked", stacked), ("per_image", per_image), ("one_by_one", one_by_one))}
    assert max(err.values()) < 1e-6, err
    with pytest.raises(ValueError):
        lk.squared_differences([proj[:, 0]], p, ph)


def test_weighted_squares_in_blocks_equal_one_product():
    """The same float64 sums (BLAS may group a block's last rows differently: 1e-16 rounding)."""
    rng = np.random.default_rng(3)
    w = rng.uniform(0, 1, 600)
    for n in (1, 3, 4, 37, 200):
        ps = rng.normal(size=(n, 600)).astype(np.float32)
        got = lk._weighted_squares(ps, w, block_bytes=8 * 600 * 5)     # blocks of 4 rows
        ref = (ps * ps).astype(np.float64) @ w                            # float32 squares, float64 sums
        assert np.abs(got - ref).max() <= 1e-14 * np.abs(ref).max()


def test_accuracy_search_stops_early_with_the_same_answer():
    rng = np.random.default_rng(4)
    n_img, n_pix = 3, 40
    ctf2 = rng.uniform(0.2, 1, (n_img, n_pix))
    inv = rng.uniform(0.5, 1, n_pix)
    calls = []

    def project(eul):                      # a smooth fake reference: changes grow with the angles
        calls.append(len(eul))
        return np.exp(1j * eul.sum(axis=-1))[..., None] * np.linspace(1, 3, n_pix) * 0.4

    got = [acc.expected_angular_error(project, np.array([10.0, 20.0, 30.0]), ctf2, inv, np.array([0, 1, 2]), batch=b)
           for b in (1, 3, 8, 1000)]
    assert len(set(got)) == 1 and got[0] < acc.relion_angle_steps()[-1]
    calls.clear()
    acc.expected_angular_error(project, np.array([10.0, 20.0, 30.0]), ctf2, inv, np.array([0, 1, 2]), batch=4)
    assert sum(calls) < len(acc.relion_angle_steps()) + 1      # stopped before trying every angle
    ref = np.exp(1j * rng.uniform(0, 6, (n_img, n_pix)))

    def phases(t):                         # (n, n_img, n_pix) phases of a shift along x, y, z
        ph = np.exp(-2j * np.pi * (t @ np.array([1.0, 0.5, 0.25]))[:, None] * np.linspace(0, 0.3, n_pix))
        return np.repeat(ph[:, None], n_img, axis=1)

    shifts = [acc.expected_shift_error(ref, phases, ctf2, inv, np.array([0, 0, 2]), batch=b) for b in (1, 5, 1000)]
    assert len(set(shifts)) == 1


# --------------------------------------------------------------------------- the slice cache

def test_slice_cache_makes_each_image_once_across_threads():
    cache = eng.SliceCache()
    owner = object.__new__(lk.SliceSampler)        # any object that can die stands for a reference
    made = []
    gate = threading.Barrier(4)

    def make_for(keys):
        def make(i):
            made.append(keys[i])
            return np.full((3, 2), keys[i], dtype=np.complex64)
        return make

    results = {}

    def work(t):
        keys = [1, 2, 3, 4] if t % 2 else [3, 4, 5]
        gate.wait()
        results[t] = cache.get(owner, b"g", keys, make_for(keys), 1 << 20)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(made) == [1, 2, 3, 4, 5]
    for t, vals in results.items():
        keys = [1, 2, 3, 4] if t % 2 else [3, 4, 5]
        assert [int(v[0, 0].real) for v in vals] == keys
    assert cache.nbytes == 5 * 3 * 2 * 8


def test_slice_cache_budget_groups_and_errors():
    cache = eng.SliceCache()
    a = object.__new__(lk.SliceSampler)
    b = object.__new__(lk.SliceSampler)
    one = np.zeros((4, 4), dtype=np.complex64)             # 128 bytes
    count = [0]

    def make(i):
        count[0] += 1
        return one.copy()

    cache.get(a, b"g", [1, 2, 3], make, 3 * 128)
    cache.get(a, b"g", [1, 2, 3], make, 3 * 128)
    assert count[0] == 3
    cache.get(a, b"other", [1], make, 3 * 128)             # another orientation set: its own entry;
    assert count[0] == 4 and cache.nbytes == 3 * 128        # the oldest one made room for it
    cache.get(b, b"g", [1], make, 3 * 128)                 # another reference
    assert count[0] == 5

    def bad(i):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get(a, b"g", [9], bad, 3 * 128)
    n = count[0]
    assert len(cache.get(a, b"g", [9], make, 3 * 128)) == 1 and count[0] == n + 1   # a failed entry is not kept
    token_b = cache._tokens[id(b)]
    assert any(k[0] == token_b for k in cache._entries)
    del b                                                     # a freed reference's entries go
    import gc

    gc.collect()
    cache.get(a, b"g", [1], make, 3 * 128)
    assert not any(k[0] == token_b for k in cache._entries)
    cache.clear()
    assert cache.nbytes == 0


def test_a_new_map_drops_the_slices_of_the_old_one():
    model = eng.HalfModel(np.zeros((8, 8, 8)), 4.0, 1)
    eng.SLICE_CACHE.clear()
    eng.SLICE_CACHE.get(model.sampler, b"g", [1, 2], lambda i: np.zeros((5, 3), np.complex64), 1 << 20)
    assert eng.SLICE_CACHE.nbytes == 2 * 5 * 3 * 8
    model.set_map(np.ones((8, 8, 8)))
    assert eng.SLICE_CACHE.nbytes == 0


# --------------------------------------------------------------------------- E-step of a global search

def _particles(n, n_img=7, seed=5):
    rng = np.random.default_rng(seed)
    tilts = np.linspace(-54, 54, n_img)
    out = []
    for i in range(n):
        vis = n_img if i % 3 else n_img - 2          # one in three sees fewer tilts (a subset of the images)
        out.append(eng_particle(i, rot_y(tilts[:vis]), rng))
    return out


def eng_particle(i, aproj, rng):
    from sta.workflows.refine.data import StackParticle

    n = len(aproj)
    du = rng.uniform(15000, 25000, n)
    return StackParticle(index=i, tomo="t1", image_path="", aproj=aproj, defocus_u=du, defocus_v=du + 200,
                         defocus_angle=np.full(n, 20.0), scale=np.ones(n), phase_shift=np.zeros(n),
                         dose=np.arange(n) * 3.0, bfactor_per_dose=0.0, voltage=300.0, cs=2.7, q0=0.1,
                         pixel_size=8.0, box=N, premultiplied=True)


def _images(model, sp, angles, rng, noise=0.3):
    """Premultiplied images: CTF² times the reference slices at ``angles``, plus noise."""
    rot = euler_to_matrix(*angles).reshape(1, 3, 3)
    slices = model.sampler.project(rot, sp.aproj, N)[0]
    from sta.kernels.fourier import centred_irfft

    img = centred_irfft(slices * sp.fctf(), (N, N))
    return (img + noise * rng.normal(size=img.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def search():
    vol = blob_map(N, n_blobs=12)
    model = eng.HalfModel(vol, 8.0, 1)
    sps = _particles(5)
    rng = np.random.default_rng(6)
    truth = [np.array([30.0 * i, 50.0 + 10 * i, -40.0 + 25 * i]) for i in range(len(sps))]
    images = [_images(model, sp, a, rng) for sp, a in zip(sps, truth)]
    ps = [centred_rfft(im.astype(np.float64), ndim=2) for im in images]
    p2 = np.mean([(np.abs(x) ** 2).mean() for x in ps])
    model.sigma2 = [np.full(N // 2 + 1, p2 / 2)]
    model.sigma2_offset = 4.0
    model.scales = {"t1": 1.0}
    params = eng.RefineParams(particle_diameter=100.0, healpix_order=1, offset_range_px=1.0, offset_step_px=1.0,
                              zero_mask=True, do_scale=False)
    sampling = OrientationSampling(1, -1.0, 1.0 * 8.0, 1.0 * 8.0, 0.5, "C1")
    sampling.perturb(np.random.default_rng(7))
    return dict(model=model, sps=sps, images=images, truth=truth, params=params, sampling=sampling)


def _run(search, indices, engine=None, sums=None):
    s = search
    engine = engine or eng.RefineEngine(s["params"], s["model"], s["sampling"], 12, 8, ["t1"],
                                        {i: 0 for i in range(len(s["sps"]))}, 2)
    sums = sums or engine.new_sums()
    out = {}
    for i in indices:
        state = {"angles": s["truth"][i] + 4.0, "offset": np.zeros(3), "prior_offset": np.zeros(3)}
        out[i] = engine.expect(s["sps"][i], s["images"][i], state, sums, np.random.default_rng([1, i]))
    return out, sums


def _same_results(a, b, sums_a, sums_b, exact=False):
    for i in a:
        assert np.array_equal(a[i].angles, b[i].angles) and np.array_equal(a[i].offset, b[i].offset)
        assert a[i].pmax == pytest.approx(b[i].pmax, rel=0 if exact else 1e-9)
        assert a[i].n_significant == b[i].n_significant
    for x, y in zip(sums_a.arrays(), sums_b.arrays()):
        if exact:
            assert np.array_equal(x, y)
        else:
            assert np.allclose(x, y, rtol=1e-9, atol=1e-12 * max(np.abs(y).max(), 1e-300))


def test_global_search_with_shared_slices_equals_per_particle_slices(search, monkeypatch):
    eng.SLICE_CACHE.clear()
    idx = range(len(search["sps"]))
    cached, sums_c = _run(search, idx)
    assert eng.SLICE_CACHE.nbytes > 0                   # the coarse slices were shared
    assert all(abs(((r.angles - search["truth"][i] + 180) % 360) - 180).max() < 20 for i, r in cached.items())
    monkeypatch.setattr(eng.RefineEngine, "_shared_projections", lambda *a: None)
    monkeypatch.setattr(eng.RefineEngine, "_fine_slices_fit", lambda *a: False)
    alone, sums_a = _run(search, idx)
    _same_results(cached, alone, sums_c, sums_a, exact=True)     # the same numbers, only made once


def test_global_search_in_threads_equals_serial(search):
    eng.SLICE_CACHE.clear()
    idx = list(range(len(search["sps"])))
    serial, sums_s = _run(search, idx)
    eng.SLICE_CACHE.clear()
    parts = [idx[0::2], idx[1::2]]
    found, sums = {}, []
    gate = threading.Barrier(2)

    def work(k):
        engine = eng.RefineEngine(search["params"], search["model"], search["sampling"], 12, 8, ["t1"],
                                  {i: 0 for i in idx}, 2)
        gate.wait()
        res, s = _run(search, parts[k], engine)
        found.update(res)
        sums.append(s)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sums[0]
    total.add(sums[1])
    _same_results(serial, found, sums_s, total)
