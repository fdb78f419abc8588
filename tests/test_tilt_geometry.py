"""Projection matrices, centring quirks and positions (spec §2.2, §2.3, §13.1)."""

import numpy as np
from scipy.spatial.transform import Rotation

from sta.geometry.euler import euler_to_matrix
from sta.geometry.tilt import (centred_from_positions, defocus_offsets, particle_positions, project,
                               projection_angles_from_matrices, projection_matrices, visible)

# first row of cets-relion Polish/job070/tilt_series/TS_01.star (EMPIAR-10164, RELION 5)
XT, YT, ZR, SX, SY = -0.05288, -57.16442, 85.186642, 37.322454, 108.033600
PX = 1.35
TOMO = (4000, 4000, 2000)
IMG = (4000, 4000)


def hand_derived_matrix():
    """Written out step by step: centre, rotate x then y then z, shift, image centre."""
    r = Rotation.from_euler("xyz", [XT, YT, ZR], degrees=True).as_matrix()  # extrinsic = Rz Ry Rx
    p = np.eye(4)
    p[:3, :3] = r
    t = -r @ np.array([2000.0, 2000.0, 1000.0])
    p[:3, 3] = t + np.array([SX / PX + 2000.0, SY / PY + 2000.0, 0.0])
    return p


PY = PX


def test_projection_matrix_real_tilt_series():
    from tests.conftest import CORPUS, need

    path = need(CORPUS / "cets-relion" / "Polish" / "job070" / "tilt_series" / "TS_01.star")
    row = next(line for line in path.read_text().splitlines() if "TS_01_038" in line).split()
    xt, yt, zr, sx, sy = (float(v) for v in row[22:27])
    assert (xt, yt, zr, sx, sy) == (XT, YT, ZR, SX, SY)
    p = projection_matrices([xt], [yt], [zr], [sx], [sy], PX, TOMO, IMG)[0]
    np.testing.assert_allclose(p, hand_derived_matrix(), atol=1e-6, rtol=0)
    # literal values (computed once by hand from the formula) for the first two rows
    c, s = np.cos(np.deg2rad(ZR)), np.sin(np.deg2rad(ZR))
    cy = np.cos(np.deg2rad(YT))
    assert abs(p[0, 0] - c * cy) < 1e-12 and abs(p[1, 0] - s * cy) < 1e-12


def test_inverse_recovers_angles_and_shifts():
    rng = np.random.default_rng(3)
    n = 41
    xt, yt, zr = rng.normal(0, 1, n), np.linspace(-60, 60, n), 85 + rng.normal(0, 1, n)
    sx, sy = rng.uniform(-50, 50, n), rng.uniform(-50, 50, n)
    p = projection_matrices(xt, yt, zr, sx, sy, 2.0, (400, 380, 100), (410, 400))
    out = projection_angles_from_matrices(p, 2.0, (400, 380, 100), (410, 400))
    for a, b in zip(out, (xt, yt, zr, sx, sy)):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_odd_size_centre_quirk():
    """c_spec = floor(size/2) in the matrix, size/2.0 for particle centring: 0.5 px apart."""
    size = (301, 287, 97)
    p = projection_matrices([0.0], [0.0], [0.0], [0.0], [0.0], 1.0, size, (300, 300))[0]
    # the tomogram point floor(size/2) projects to the image centre
    q = project(p[None], np.array([150.0, 143.0, 48.0]))[0]
    np.testing.assert_allclose(q[:2], [150.0, 150.0], atol=1e-12)
    # a particle at centred coordinate 0 sits at size/2.0 = (150.5, 143.5, 48.5)
    pos = particle_positions(np.zeros((1, 3)), 1.0, size)
    np.testing.assert_allclose(pos[0], [150.5, 143.5, 48.5])
    q0 = project(p[None], pos[0])[0]
    np.testing.assert_allclose(q0[:2], [150.5, 150.5], atol=1e-12)
    # even sizes: no difference
    pos_even = particle_positions(np.zeros((1, 3)), 1.0, (300, 288, 96))
    np.testing.assert_allclose(pos_even[0], [150, 144, 48])


def test_centred_pixel_round_trip():
    rng = np.random.default_rng(5)
    c = rng.uniform(-500, 500, (50, 3))
    for size in ((300, 288, 96), (301, 287, 97)):
        pos = particle_positions(c, 4.0, size)
        np.testing.assert_allclose(centred_from_positions(pos, 4.0, size), c, atol=1e-10)


def test_origin_offsets_rotated_by_subtomogram_frame():
    a_sub = euler_to_matrix(30.0, 60.0, 10.0)[None]
    o = np.array([[4.0, -8.0, 12.0]])
    pos = particle_positions(np.zeros((1, 3)), 2.0, (100, 100, 50), origins_angst=o, a_sub=a_sub)
    np.testing.assert_allclose(pos[0], np.array([50, 50, 25.0]) - a_sub[0] @ (o[0] / 2.0))


def test_depth_defocus_sign_follows_hand():
    p = projection_matrices([0.0], [0.0], [0.0], [0.0], [0.0], 2.0, (100, 100, 50), (100, 100))
    above = np.array([[50.0, 50.0, 35.0]])  # 10 px above the centre (z = 25)
    d_minus = defocus_offsets(p, above, (100, 100, 50), 2.0, hand=-1)
    d_plus = defocus_offsets(p, above, (100, 100, 50), 2.0, hand=+1)
    assert d_minus[0, 0] == -20.0 and d_plus[0, 0] == 20.0


def test_visibility_strict():
    xy = np.array([[10.0, 50.0], [10.001, 50.0], [89.999, 50.0], [90.0, 50.0]])
    np.testing.assert_array_equal(visible(xy, (100, 100), 10.0), [False, True, True, False])
