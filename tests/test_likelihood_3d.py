"""Kernels of 3D pseudo-subtomograms (the planes of a 3D spectrum as images) against direct
3D computations: projection, shift phases, insertion, the multiplicity noise model and the
weights-file formats."""

import numpy as np
import pytest

from sta.geometry.euler import euler_to_matrix
from sta.geometry.healpix import translations
from sta.kernels.fourier import centred_rfft, radius_grid_3d
from sta.kernels.fourier_insert import insert_slices, new_accumulator
from sta.kernels.likelihood import (
    SliceSampler, noise_maps, noise_sums, plane_frequencies, prepare_particle, resolution_index,
    squared_differences, translation_phases, weights_from_diff2, window_frequencies)
from sta.kernels.projector import FourierProjector, trilinear_half_complex
from sta.workflows.refine.data import SubtomoParticle
from tests.test_likelihood import blob_map

N = 24


@pytest.fixture(scope="module")
def vol():
    return blob_map(N, seed=7)


def identity(n):
    return np.broadcast_to(np.eye(3), (n, 3, 3))


def test_planes_sample_the_reference_at_rotated_3d_frequencies(vol):
    """Plane ``kz`` of orientation A holds the reference at ``A⁻¹ (kx, ky, kz)``, zero beyond cs/2."""
    proj = FourierProjector(vol, pad=2)
    sampler = SliceSampler(proj)
    cs = 16
    kz = plane_frequencies(cs)
    rots = euler_to_matrix(np.array([10.0, -70.0]), np.array([40.0, 100.0]), np.array([-20.0, 160.0]))
    mine = sampler.project(rots, identity(cs), cs, kz=kz)              # (2, cs, cs, cs//2+1)
    ky, kx = window_frequencies(cs)
    k = np.stack(np.broadcast_arrays(kx[None], ky[None], kz[:, None, None]), axis=-1)   # (cs, cs, csh, 3)
    for o, rot in enumerate(rots):
        coords = 2.0 * k @ rot          # pad · Aᵀ k (rows of A are the reference axes in the image)
        ref = trilinear_half_complex(proj.ft, coords.reshape(-1, 3)).reshape(k.shape[:-1]) / N
        inside = (k ** 2).sum(-1) <= (cs // 2) ** 2
        assert np.abs(mine[o] - ref)[inside].max() < 1e-12 * np.abs(ref).max()
        assert np.all(mine[o][~inside] == 0)
    ires = resolution_index(cs, kz=kz)
    assert ires.shape == (cs, cs, cs // 2 + 1)
    assert ires[1, 0, 0] == 1 and ires[cs // 2, 0, 0] == cs // 2 and ires[cs // 2, cs // 2, 1] == -1


def test_plane_phases_are_the_3d_shift_theorem(vol):
    """φ(t) applied to the spectrum of the volume rolled by −t gives the original spectrum."""
    t = np.array([2.0, -1.0, 3.0])                                       # (x, y, z) pixels
    rolled = np.roll(vol, shift=(-3, 1, -2), axis=(0, 1, 2))             # content at r − t
    ph = translation_phases(t[None], identity(N), N, kz=plane_frequencies(N))[0]
    np.testing.assert_allclose(centred_rfft(rolled, ndim=3) * ph, centred_rfft(vol, ndim=3), atol=1e-10)


def test_planes_insert_into_the_3d_grid():
    """pad 1: identity puts every voxel of the half spectrum at its own place; the 90° turn
    ``A = Euler(90, 0, 0)`` puts it where the spectrum of the volume turned by Aᵀ about voxel N/2
    has it (points mapped to kx < 0 enter as their Hermitian mates)."""
    rng = np.random.default_rng(2)
    v = rng.normal(size=(N, N, N))
    spec = centred_rfft(v, ndim=3)
    kz = plane_frequencies(N)
    r = radius_grid_3d(N)
    ok = r <= N // 2 - 1
    for k90, mat in ((0, np.eye(3)), (1, np.round(euler_to_matrix(90.0, 0.0, 0.0)))):
        data, weight = new_accumulator(N, pad=1)
        insert_slices(data, weight, spec, np.ones(spec.shape), np.broadcast_to(mat, (N, 3, 3)), pad=1, kz=kz)
        c = data.shape[0] // 2
        idx = np.arange(N)
        logical = np.where(idx <= N // 2, idx, idx - N)
        got = data[np.ix_(logical + c, logical + c, np.arange(N // 2 + 1))]
        w = weight[np.ix_(logical + c, logical + c, np.arange(N // 2 + 1))]
        # np.rot90 turns about (N-1)/2; the roll moves the centre back to voxel N/2
        turned = centred_rfft(np.roll(np.rot90(v, k=-1, axes=(1, 2)), 1, axis=2) if k90 else v, ndim=3)
        inner = ok & (np.abs(np.arange(N // 2 + 1))[None, None] > 0)        # away from the kx = 0 mates
        good = inner & np.isclose(w, 1.0)
        assert good.sum() > 0.9 * inner.sum()
        np.testing.assert_allclose(got[good], turned[good], atol=1e-9)


def test_multiplicity_noise_model_is_calibrated():
    """Complex noise of variance 2σ²·M per voxel: σ² = Σ|X|² / (2 Σ M) per shell, diff2 per
    voxel averages 1 (weights 1/M), and voxels with M below the threshold are dropped."""
    rng = np.random.default_rng(3)
    sigma2 = np.linspace(2.0, 0.5, N // 2 + 1)
    kz = plane_frequencies(N)
    ires = np.maximum(resolution_index(N, kz=kz), 0)
    mult = rng.uniform(0.5, 8.0, (N, N, N // 2 + 1))
    mult[:, :, -2:] = 0.0                                               # never measured
    ctf2 = np.ones(mult.shape)
    inv, bp = noise_maps(sigma2, N, kz=kz)
    zero = np.zeros((1, N, N, N // 2 + 1), dtype=complex)
    wsum = count = 0.0
    for _ in range(12):
        x = (rng.normal(size=mult.shape) + 1j * rng.normal(size=mult.shape)) * np.sqrt(sigma2[ires] * mult)
        p = prepare_particle(x, ctf2, None, inv, N, volume=True, multiplicity=mult)
        ns = noise_sums(np.ones((1, 1)), zero, p, np.ones((1,) + p.images.shape))
        wsum, count = wsum + ns.wsum_sigma2, count + ns.count
    assert p.n_img == N and p.n_measured == 1 and np.allclose(p.aproj, np.eye(3))
    assert np.all(p.images[..., -2:] == 0) and np.all(p.ctf2[..., -2:] == 0)
    est = wsum / (2 * count)
    assert np.abs(est[2:-1] / sigma2[2:-1] - 1).max() < 0.06
    d2 = squared_differences(zero, p, np.ones((1, N, p.pix.size)))[0, 0]
    n_used = ((resolution_index(N, kz=kz) > 0) & (p.images != 0)).sum()
    assert d2 / n_used == pytest.approx(1.0, abs=0.03)


def test_true_shift_of_a_subtomogram_wins(vol):
    """A volume whose content sits at r − t (real-space roll, no phase factors) is matched by +t."""
    sampler = SliceSampler(FourierProjector(vol, pad=2))
    kz = plane_frequencies(N)
    t_true = np.array([1.0, -2.0, 1.0])
    rolled = np.roll(vol, shift=(-1, 2, -1), axis=(0, 1, 2))
    x = centred_rfft(rolled, ndim=3)
    inv, bp = noise_maps(np.full(N // 2 + 1, 1e-3), N, kz=kz)
    p = prepare_particle(x, np.ones(x.shape), None, inv, N, volume=True)
    trans = translations(3.0, 1.0)
    ph = translation_phases(trans, p.aproj, N, pix=p.pix, kz=p.kz)
    d2 = squared_differences(sampler.project(np.eye(3)[None], p.aproj, N, p.pix, kz=p.kz), p, ph)
    post = weights_from_diff2(d2)
    assert np.allclose(trans[post.best[1]], t_true)


def test_weights_file_formats(tmp_path):
    """CTF² + multiplicity (2c slabs), CTF² only (c slabs) and a centred cubic CTF all give the
    same ``Fctf`` on the FFTW half grid; other shapes are refused with the file name."""
    from sta.errors import InputError
    from sta.io.mrc import write_mrc

    c = 16
    r = radius_grid_3d(c)
    ctf2 = np.cos(0.4 * r) ** 2 + 0.1
    mult = 1.0 + r
    write_mrc(str(tmp_path / "both.mrc"), np.concatenate([ctf2, mult]).astype(np.float32), 1.0)
    write_mrc(str(tmp_path / "ctf.mrc"), ctf2.astype(np.float32), 1.0)
    z, y, x = np.mgrid[:c, :c, :c] - c // 2
    write_mrc(str(tmp_path / "cube.mrc"), (np.cos(0.4 * np.sqrt(x * x + y * y + z * z)) ** 2 + 0.1).astype(
        np.float32), 1.0)
    write_mrc(str(tmp_path / "bad.mrc"), np.zeros((3, c, c), np.float32), 1.0)

    def particle(name, premult=True):
        return SubtomoParticle(index=0, tomo="t", image_path="x.mrc", ctf_path=name,
                               ctf_file=str(tmp_path / name), pixel_size=1.0, box=c, premultiplied=premult)

    both = particle("both.mrc")
    np.testing.assert_allclose(both.fctf(), ctf2, rtol=1e-6)
    np.testing.assert_allclose(both.multiplicity(), mult, rtol=1e-6)
    assert particle("ctf.mrc").multiplicity() is None
    np.testing.assert_allclose(particle("ctf.mrc").fctf(), ctf2, rtol=1e-6)
    np.testing.assert_allclose(particle("cube.mrc").fctf(), ctf2, rtol=1e-5)
    with pytest.raises(InputError, match="bad.mrc"):
        particle("bad.mrc").fctf()
    with pytest.raises(InputError, match="premultiplied"):
        particle("both.mrc", premult=False).fctf()


def test_first_iteration_cc_of_a_subtomogram(vol):
    """--firstiter_cc on a 3D subtomogram: one norm over all planes, so a noise-free copy of the
    reference scores exactly −1 at the true pose whatever its scale, and the true pose wins."""
    from sta.kernels.likelihood import cross_correlation_scores

    sampler = SliceSampler(FourierProjector(vol, pad=2))
    kz = plane_frequencies(N)
    true = euler_to_matrix(30.0, 60.0, -45.0)
    x = sampler.project(true[None], identity(N), N, kz=kz)[0]
    inv, _ = noise_maps(np.full(N // 2 + 1, 1e-3), N, kz=kz)
    rots = np.concatenate([true[None], euler_to_matrix(np.array([35.0, 30.0, 30.0]), np.array([60.0, 70.0, 60.0]),
                                                       np.array([-45.0, -45.0, -35.0]))])
    trans = translations(2.0, 1.0)
    zero = int(np.flatnonzero((trans == 0).all(axis=1))[0])
    for scale in (1.0, 3.0):
        p = prepare_particle(scale * x, np.ones(x.shape), None, inv, N, volume=True)
        ph = translation_phases(trans, p.aproj, N, kz=p.kz)
        s = cross_correlation_scores(sampler.project(rots, p.aproj, N, kz=p.kz), p, ph)
        assert s.shape == (len(rots), len(trans))
        assert s[0, zero] == pytest.approx(-1.0, abs=1e-9)
        assert np.unravel_index(np.argmin(s), s.shape) == (0, zero)
        assert np.all(np.delete(s.ravel(), zero) > -1.0 + 1e-3)
