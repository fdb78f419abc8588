"""RELION's expected-accuracy estimate (calculateExpectedAngularErrors) against direct sums."""

import numpy as np

from sta.geometry.euler import euler_to_matrix, rot_y
from sta.kernels.accuracy import (P_VALUE, expected_angular_error, expected_shift_error, relion_angle_steps,
                                  relion_shift_steps)
from sta.kernels.likelihood import SliceSampler, noise_maps, resolution_index, translation_phases
from sta.kernels.projector import FourierProjector

N = 24


def test_step_sequences_follow_relion():
    a = relion_angle_steps()
    np.testing.assert_allclose(a[:6], [0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
    assert np.all(np.diff(a) > 0) and a[-2] <= 30.0 < a[-1]
    # the same double arithmetic as RELION: 0.1 added ten times stays below 1, so 1.1 follows
    assert np.isclose(a, 1.1).any() and np.isclose(a, 30.1).any()
    s = relion_shift_steps()
    np.testing.assert_allclose(s[:3], [0.1, 0.2, 0.3])
    assert s[-2] <= 10.0 < s[-1]


def _pixels(cs, sigma2):
    inv, _ = noise_maps(sigma2, cs)
    inv = inv * (resolution_index(cs) > 0)
    pix = np.flatnonzero(inv.ravel() > 0)
    return pix, inv.ravel()[pix]


def test_shift_error_is_the_first_step_past_the_threshold():
    """One image, shift along x: Σ |F|²·Fctf²·|1 − exp(−2πi kx s/N)|²/(2σ²) crosses 4.605 at the
    returned step and not before (direct evaluation at every step)."""
    rng = np.random.default_rng(0)
    pix, inv = _pixels(N, np.full(N // 2 + 1, 40.0))
    ref = (rng.normal(size=(1, pix.size)) + 1j * rng.normal(size=(1, pix.size)))
    ctf2 = rng.uniform(0.2, 1.0, (1, pix.size))
    aproj = np.eye(3)[None]
    got = expected_shift_error(ref, lambda t: translation_phases(t, aproj, N, N, pix=pix), ctf2, inv, np.array([0]))
    kx = np.broadcast_to(np.fft.rfftfreq(N, 1.0 / N)[None], (N, N // 2 + 1)).ravel()[pix]
    snr = [np.sum(np.abs(ref[0]) ** 2 * ctf2[0] ** 2 * inv * 4 * np.sin(np.pi * kx * s / N) ** 2)
           for s in relion_shift_steps()]
    first = relion_shift_steps()[np.flatnonzero(np.array(snr) > P_VALUE)[0]]
    assert got == first and 0.1 < got < 10


def test_angular_error_matches_per_image_projections_and_scales_with_noise():
    """Three tilts, each moving its own Euler angle: equals the first step at which a slow loop over
    images (one projection each) passes 4.605; 16x the noise gives a larger error (about 4x for a
    quadratic rise), and the estimate is finite (< 30°) for a structured map."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:N, :N, :N] - N // 2
    vol = sum(np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 2.0)
              for c in rng.uniform(-5, 5, (12, 3)))
    sampler = SliceSampler(FourierProjector(vol, pad=2))
    aproj = rot_y(np.array([-30.0, 0.0, 30.0])) @ euler_to_matrix(10.0, 50.0, -20.0)
    angles = np.array([30.0, 60.0, 90.0])
    choice = np.array([0, 1, 2])
    out = []
    for sigma2 in (1.0, 16.0):
        pix, inv = _pixels(N, np.full(N // 2 + 1, sigma2))
        ctf2 = np.full((3, pix.size), 0.8)

        def project(eul):
            rots = euler_to_matrix(eul[..., 0], eul[..., 1], eul[..., 2]).reshape(eul.shape[:2] + (3, 3))
            return sampler.project_matrices(np.matmul(aproj[None], rots), N, pix)

        got = expected_angular_error(project, angles, ctf2, inv, choice)
        p0 = [sampler.project(euler_to_matrix(*angles)[None], aproj[f:f + 1], N, pix)[0, 0] for f in range(3)]
        first = None
        for step in relion_angle_steps():
            snr = 0.0
            for f in range(3):
                a = angles.copy()
                a[choice[f]] += step
                p1 = sampler.project(euler_to_matrix(*a)[None], aproj[f:f + 1], N, pix)[0, 0]
                snr += np.sum(np.abs((p1 - p0[f]) * ctf2[f]) ** 2 * inv)
            if snr > P_VALUE:
                first = step
                break
        assert got == first
        out.append(got)
    assert out[0] < 30.0 and 2.5 * out[0] <= out[1] <= 6.0 * out[0]
