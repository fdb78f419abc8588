"""HEALPix directions, psi/translation grids, oversampling, asymmetric units and priors (spec §12)."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from sta.errors import InputError
from sta.geometry.euler import angular_distance, euler_to_matrix
from sta.geometry.healpix import (OrientationSampling, angular_step, direction_vectors, effective_psi_step,
                                  geometric_asymmetric_unit, healpix_directions, limit_tilt_mask,
                                  max_pixel_radius, n_pixels, oversample_directions, oversample_psi,
                                  oversample_translations, pix2ang_z_phi, psi_angles,
                                  reduce_to_asymmetric_unit, translations, wrap_into)
from sta.geometry.symmetry import parse_symmetry

healpy = pytest.importorskip("healpy")

# Directions kept by RELION's logic (geometric unit + greedy seam removal), orders 2 and 3.
AU_COUNTS = {
    2: {"C1": 192, "C2": 96, "C6": 28, "D7": 13, "T": 14, "O": 7, "I1": 3, "I2": 2},
    3: {"C1": 768, "C2": 384, "C6": 118, "D7": 53, "T": 59, "O": 32, "I1": 12, "I2": 11},
}


def _mates(group, v):
    """Symmetry mates ``L R^T v`` written out independently of SymmetryGroup.direction_mates."""
    out = []
    for left, right in zip(group.left_matrices, group.matrices):
        out.append((left @ right.T @ v.T).T)
    return np.array(out)  # (order, n, 3)


# --------------------------------------------------------------------------- HEALPix grid

@pytest.mark.parametrize("order", range(6))
def test_pix2ang_matches_healpy(order):
    nside = 2 ** order
    ipix = np.arange(12 * nside * nside)
    z, phi = pix2ang_z_phi(order, ipix)
    theta_ref, phi_ref = healpy.pix2ang(nside, ipix, nest=True)
    assert np.abs(np.arccos(z) - theta_ref).max() < 1e-10
    assert np.abs(phi - phi_ref).max() < 1e-10
    rot, tilt = healpix_directions(order)
    assert len(rot) == n_pixels(order) == 12 * 4 ** order
    assert np.abs(np.radians(tilt) - theta_ref).max() < 1e-10
    rot_ref = np.degrees(phi_ref)
    rot_ref = np.where(rot_ref > 180.0, rot_ref - 360.0, rot_ref)
    assert np.abs(rot - rot_ref).max() < 1e-10
    assert rot.min() >= -180.0 and rot.max() <= 180.0 and tilt.min() >= 0.0 and tilt.max() <= 180.0


def test_healpy_is_not_needed_at_runtime():
    code = "import sys, sta.geometry.healpix; assert 'healpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_angular_step_and_pixel_radius():
    steps = [angular_step(o) for o in range(9)]
    assert steps == [60.0, 30.0, 15.0, 7.5, 3.75, 1.875, 0.9375, 0.46875, 0.234375]
    for order in range(8):
        ref = healpy.max_pixrad(2 ** order, degrees=True)
        assert abs(max_pixel_radius(order) - ref) < 1e-9


@pytest.mark.parametrize("bad", [-1, 14, 2.5])
def test_bad_order_raises(bad):
    with pytest.raises(InputError, match="HEALPix order"):
        healpix_directions(bad)


# --------------------------------------------------------------------------- psi and translations

def test_psi_angles():
    psi = psi_angles(2)
    assert len(psi) == 24 and psi[1] == 15.0 and psi[-1] == 345.0
    assert len(psi_angles(3)) == 48
    psi = psi_angles(2, psi_step=7.0)  # ceil(360/7) = 52 values, step re-set to 360/52
    assert len(psi) == 52
    assert effective_psi_step(7.0) == pytest.approx(360.0 / 52)
    np.testing.assert_allclose(np.diff(psi), 360.0 / 52)
    assert psi[0] == 0.0


def test_translations_3d_count_and_content():
    t = translations(5.0, 2.0, dim=3)
    # definition: (2i, 2j, 2k), |i|,|j|,|k| <= ceil(5/2) = 3, inside the sphere of radius 5
    expected = [(2 * i, 2 * j, 2 * k) for i, j, k in itertools.product(range(-3, 4), repeat=3)
                if 4 * (i * i + j * j + k * k) <= 25]
    assert len(expected) == 81  # 1 + 6 + 12 + 8 + 6 + 24 + 24 integer points with |n|^2 <= 6
    assert t.shape == (81, 3)
    np.testing.assert_array_equal(t, np.array(expected, dtype=float))  # x slowest, z fastest


def test_translations_2d_disc_tolerance():
    # RELION 4 log (3dem/relion#1097): offset range 27 A, step 5.4 A -> NrTranslations= 81
    t = translations(27.0, 5.4, dim=2)
    assert t.shape == (81, 2)
    assert translations(5.0, 2.0, dim=2).shape == (21, 2)
    assert translations(0.0, 2.0, dim=3).shape == (1, 3)
    with pytest.raises(InputError):
        translations(5.0, 0.0)


# --------------------------------------------------------------------------- oversampling

@pytest.mark.parametrize("order", [1, 2])
def test_children_are_nest_block_and_within_parent_radius(order):
    rot, tilt = healpix_directions(order)
    parent_v = direction_vectors(rot, tilt)
    radius = max_pixel_radius(order)
    for p in range(n_pixels(order)):
        for os_ in (1, 2):
            c_rot, c_tilt, children = oversample_directions(order, p, os_)
            n = 4 ** os_
            assert sorted(children) == list(range(n * p, n * p + n))
            fine_rot, fine_tilt = healpix_directions(order + os_, children)
            np.testing.assert_array_equal(c_rot, fine_rot)
            np.testing.assert_array_equal(c_tilt, fine_tilt)
            cosang = direction_vectors(c_rot, c_tilt) @ parent_v[p]
            assert np.degrees(np.arccos(np.clip(cosang, -1, 1))).max() <= radius + 1e-9


def test_children_of_pixel_in_relion_loop_order():
    _, _, children = oversample_directions(2, 5, 1)
    np.testing.assert_array_equal(children, [20, 21, 22, 23])
    _, _, children = oversample_directions(0, 1, 2)  # fine y outer, x inner
    np.testing.assert_array_equal(children[:4], [16, 17, 20, 21])


def test_oversample_psi_and_translations():
    np.testing.assert_allclose(oversample_psi(15.0, 15.0, 1), [11.25, 18.75])
    np.testing.assert_allclose(oversample_psi(0.0, 7.5, 2), [-2.8125, -0.9375, 0.9375, 2.8125])
    fine = oversample_translations([2.0, 0.0, -2.0], 2.0, 1)
    assert fine.shape == (8, 3)
    np.testing.assert_allclose(fine.mean(axis=0), [2.0, 0.0, -2.0])
    np.testing.assert_allclose(np.unique(fine[:, 0]), [1.5, 2.5])
    np.testing.assert_allclose(fine[:2], [[1.5, -0.5, -2.5], [1.5, -0.5, -1.5]])
    assert oversample_translations([0.0, 0.0], 2.0, 2).shape == (16, 2)


# --------------------------------------------------------------------------- asymmetric unit

@pytest.mark.parametrize("order", [2, 3])
def test_asymmetric_unit_counts(order):
    rot, tilt = healpix_directions(order)
    for name, count in AU_COUNTS[order].items():
        kept = reduce_to_asymmetric_unit(rot, tilt, name, order)
        assert len(kept) == count, name
        assert np.all(np.diff(kept) > 0)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 12])
def test_cyclic_counts_close_to_sphere_over_n(n):
    rot, tilt = healpix_directions(3)
    kept = reduce_to_asymmetric_unit(rot, tilt, f"C{n}", 3)
    assert abs(len(kept) - 768 / n) <= 0.1 * 768 / n + 2


def _relion_loop(rot, tilt, group, order):
    """Direct transcription of the rule with healpy and plain loops (slow oracle)."""
    cos_max = math.cos(math.radians(0.5 * healpy.max_pixrad(2 ** order, degrees=True)))
    v = direction_vectors(rot, tilt)
    kept = []
    for i in range(len(v)):
        if not any((_mates(group, v[k][None])[:, 0] @ v[i] > cos_max).any() for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("name, order", [("C6", 2), ("D7", 2), ("C5", 3), ("D3", 3)])
def test_greedy_seam_removal_matches_plain_loop(name, order):
    nside = 2 ** order
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    rot = np.degrees(phi)
    rot = np.where(rot > 180.0, rot - 360.0, rot)
    tilt = np.degrees(theta)
    n = parse_symmetry(name).n
    if name.startswith("C"):
        window = (rot >= -180.0 / n - 1e-9) & (rot <= 180.0 / n + 1e-9)
    else:
        window = (rot >= -180.0 / n + 90 - 1e-9) & (rot <= 180.0 / n + 90 + 1e-9) & (tilt <= 90.0)
    idx = np.flatnonzero(window)
    expected = idx[_relion_loop(rot[idx], tilt[idx], parse_symmetry(name), order)]
    ours = reduce_to_asymmetric_unit(*healpix_directions(order), name, order)
    np.testing.assert_array_equal(ours, expected)


def _coverage(name, order):
    """Worst angle (deg) from any pixel of the sphere to a symmetry mate of a kept direction."""
    rot, tilt = healpix_directions(order)
    kept = reduce_to_asymmetric_unit(rot, tilt, name, order)
    v = direction_vectors(rot, tilt)
    mates = _mates(parse_symmetry(name), v[kept]).reshape(-1, 3)
    return np.degrees(np.arccos(np.clip((v @ mates.T).max(axis=1), -1.0, 1.0))).max()


@pytest.mark.parametrize("name, order", [("C6", 2), ("D7", 2), ("O", 2), ("T", 2), ("I2", 3), ("I1", 3)])
def test_coverage_within_sampling_step(name, order):
    assert _coverage(name, order) <= angular_step(order)


def test_icosahedral_order_2_is_coarse():
    # Only 2 pixel centres fall inside the I2 unit at order 2, so the covering radius exceeds 15 deg.
    assert 15.0 < _coverage("I2", 2) < 25.0


@pytest.mark.parametrize("name", ["C6", "D7", "O", "I2"])
def test_kept_directions_are_not_equivalent(name):
    order = 3
    rot, tilt = healpix_directions(order)
    kept = reduce_to_asymmetric_unit(rot, tilt, name, order)
    v = direction_vectors(rot[kept], tilt[kept])
    mates = _mates(parse_symmetry(name), v)  # (order, n, 3)
    dots = np.einsum("kad,bd->kab", mates, v)
    dots[:, np.arange(len(v)), np.arange(len(v))] = -1.0  # a direction with itself
    min_angle = np.degrees(np.arccos(np.clip(dots.max(), -1.0, 1.0)))
    assert min_angle >= 0.5 * max_pixel_radius(order)


def test_geometric_units_of_cyclic_and_dihedral_groups():
    rot, tilt = healpix_directions(3)
    c4 = geometric_asymmetric_unit(rot, tilt, "C4")
    np.testing.assert_array_equal(c4, (rot >= -45.0) & (rot <= 45.0))
    d2 = geometric_asymmetric_unit(rot, tilt, "D2")
    np.testing.assert_array_equal(d2, (rot >= 0.0) & (rot <= 180.0) & (tilt <= 90.0))
    assert geometric_asymmetric_unit(rot, tilt, "D1").sum() == (tilt <= 90.0).sum()


def test_limit_tilt():
    tilt = np.array([0.0, 30.0, 60.0, 90.0, 120.0, 170.0])
    np.testing.assert_array_equal(limit_tilt_mask(tilt, -91), [True] * 6)
    np.testing.assert_array_equal(limit_tilt_mask(tilt, 45), [False, False, True, True, True, False])
    np.testing.assert_array_equal(limit_tilt_mask(tilt, -45), [True, True, False, False, False, True])


# --------------------------------------------------------------------------- OrientationSampling

def test_orientations_enumerate_direction_times_psi():
    s = OrientationSampling(healpix_order=2, symmetry="C1")
    ori = s.orientations()
    assert ori.shape == (192 * 24, 3)
    rot, tilt = healpix_directions(2)
    np.testing.assert_array_equal(ori[:24, 0], rot[0])
    np.testing.assert_array_equal(ori[:24, 2], np.arange(24) * 15.0)
    np.testing.assert_array_equal(ori[24::24, 1], tilt[1:])
    s6 = OrientationSampling(healpix_order=3, symmetry="C6")
    # consistent with a RELION 4 log (3dem/relion#1097, symmetry not shown): 7.5 deg, NrOrientations= 5664
    assert s6.orientations().shape == (118 * 48, 3)
    assert len(s.translations) == len(translations(6.0, 2.0))


def test_empty_asymmetric_unit_is_an_input_error():
    with pytest.raises(InputError, match="no sampling directions"):
        OrientationSampling(healpix_order=1, symmetry="I2")


def _direction_distance(sampling, prior_rot, prior_tilt):
    v = direction_vectors(sampling.rot, sampling.tilt)
    p = direction_vectors(prior_rot, prior_tilt)
    best = (_mates(sampling.group, v) @ p).max(axis=0)
    return np.degrees(np.arccos(np.clip(best, -1.0, 1.0)))


@pytest.mark.parametrize("sym", ["C1", "C6", "D7"])
def test_local_search_keeps_exactly_within_three_sigma(sym):
    s = OrientationSampling(healpix_order=3, symmetry=sym)
    sel = s.local_orientations(30.0, 60.0, 100.0, 5.0, 5.0, 5.0)
    dist = _direction_distance(s, 30.0, 60.0)
    np.testing.assert_array_equal(sel.directions, np.flatnonzero(dist < 15.0))
    assert len(sel.directions) > 3
    w = np.exp(-0.5 * (dist[sel.directions] / 5.0) ** 2)
    np.testing.assert_allclose(sel.direction_weights, w / w.sum())
    np.testing.assert_array_equal(s.psi[sel.psi], [90.0, 97.5, 105.0, 112.5])
    dpsi = np.array([10.0, 2.5, 5.0, 12.5])
    wpsi = np.exp(-0.5 * (dpsi / 5.0) ** 2)
    np.testing.assert_allclose(sel.psi_weights, wpsi / wpsi.sum())
    ori = s.orientations()[sel.orientation_indices]
    assert np.isin(ori[:, 2], [90.0, 97.5, 105.0, 112.5]).all()
    assert sel.weights.sum() == pytest.approx(1.0)


def test_local_search_psi_wraps_and_nearest_fallback():
    s = OrientationSampling(healpix_order=2, symmetry="C1")
    sel = s.local_orientations(0.0, 90.0, -170.0, 0.1, 0.1, 5.0)
    np.testing.assert_array_equal(s.psi[sel.psi], [180.0, 195.0])  # |psi - (-170)| wrapped below 15
    near = s.local_orientations(7.0, 90.0, 0.0, 0.01, 0.01, 0.01)  # nothing within 0.03 deg
    assert len(near.directions) == 1 and near.direction_weights[0] == 1.0
    dist = _direction_distance(s, 7.0, 90.0)
    assert near.directions[0] == np.argmin(dist)
    assert s.psi[near.psi[0]] == 0.0


def test_local_search_tilt_only_leaves_rot_free():
    s = OrientationSampling(healpix_order=3, symmetry="C1")
    sel = s.local_orientations(0.0, 90.0, 0.0, -1.0, 6.0, -1.0)
    np.testing.assert_array_equal(sel.directions, np.flatnonzero(np.abs(s.tilt - 90.0) < 18.0))
    assert len(sel.psi) == s.n_psi
    np.testing.assert_allclose(sel.psi_weights, 1.0 / s.n_psi)


def test_no_prior_keeps_everything():
    s = OrientationSampling(healpix_order=2, symmetry="C2")
    sel = s.local_orientations(0.0, 0.0, 0.0, -1.0, -1.0, -1.0)
    assert len(sel.orientation_indices) == len(s.orientations())
    assert sel.weights.sum() == pytest.approx(1.0)


def test_random_perturbation_rule():
    s = OrientationSampling(healpix_order=2, perturbation_factor=0.5)
    rng = np.random.default_rng(7)
    first = s.perturb(rng)
    assert 0.25 <= first <= 0.5
    values = [s.perturb(rng) for _ in range(200)]
    assert min(values) >= -0.5 and max(values) <= 0.5 and min(values) < 0.0
    assert wrap_into(0.7, -0.5, 0.5) == pytest.approx(-0.3)
    assert wrap_into(-0.7, -0.5, 0.5) == pytest.approx(0.3)
    # every orientation is post-multiplied by the same Euler(d, d, d), d = rho * 15 deg
    s.random_perturbation = 0.4
    base = s.orientations()[::97]
    moved = s.perturb_orientations(base)
    a, b = euler_to_matrix(*base.T), euler_to_matrix(*moved.T)
    delta = euler_to_matrix(6.0, 6.0, 6.0)
    np.testing.assert_allclose(b, a @ delta, atol=1e-9)
    np.testing.assert_allclose(angular_distance(a, b), angular_distance(np.eye(3), delta), atol=1e-6)
    np.testing.assert_allclose(s.perturb_translations([[0.0, 2.0, -2.0]]), [[0.8, 2.8, -1.2]])


def test_oversampled_orientations_and_translations():
    s = OrientationSampling(healpix_order=2, symmetry="C1", offset_range=4.0, offset_step=2.0)
    fine = s.oversampled_orientations(10, 3, 1)
    assert fine.shape == (8, 3)
    np.testing.assert_allclose(np.unique(fine[:, 2]), [41.25, 48.75])
    assert s.oversampled_translations(0, 1).shape == (8, 3)
    np.testing.assert_array_equal(s.oversampled_orientations(10, 3, 0), [[s.rot[10], s.tilt[10], 45.0]])
