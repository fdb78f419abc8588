"""RELION ZYZ Euler angles: matrix formula, inverse, scipy relation (spec §2.4)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sta.geometry.euler import angular_distance, euler_to_matrix, matrix_to_euler, matrix_to_euler_simple


def test_matrix_rows_match_spec_formula():
    rot, tilt, psi = 30.0, 50.0, -70.0
    f, t, s = np.deg2rad([rot, tilt, psi])
    cf, sf, ct, st, cs, ss = np.cos(f), np.sin(f), np.cos(t), np.sin(t), np.cos(s), np.sin(s)
    expected = np.array([
        [cs * ct * cf - ss * sf, cs * ct * sf + ss * cf, -cs * st],
        [-ss * ct * cf - cs * sf, -ss * ct * sf + cs * cf, ss * st],
        [st * cf, st * sf, ct],
    ])
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), expected, atol=1e-12)


def test_scipy_relation():
    rng = np.random.default_rng(0)
    ang = rng.uniform(-180, 180, (200, 3))
    a = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    b = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix()
    np.testing.assert_allclose(a, np.swapaxes(b, 1, 2), atol=1e-12)


def test_round_trip_random():
    rng = np.random.default_rng(1)
    ang = rng.uniform(-180, 180, (1000, 3))
    a = euler_to_matrix(*ang.T)
    back = euler_to_matrix(*matrix_to_euler(a))
    assert np.max(np.abs(back - a)) < 1e-10
    back2 = euler_to_matrix(*matrix_to_euler_simple(a))
    assert np.max(np.abs(back2 - a)) < 1e-10
    rot, tilt, psi = matrix_to_euler(a)
    assert np.all((rot > -180 - 1e-9) & (rot <= 180 + 1e-9))
    assert np.all((psi > -180 - 1e-9) & (psi <= 180 + 1e-9))


@pytest.mark.parametrize("rot,tilt,psi", [(20, 0, 30), (-75, 0, 10), (40, 180, -25), (0, 1e-9, 0), (90, 180, 90)])
def test_round_trip_gimbal_lock(rot, tilt, psi):
    a = euler_to_matrix(rot, tilt, psi)
    r, t, p = matrix_to_euler(a)
    assert t in (0.0, 180.0)
    assert r == 0.0
    np.testing.assert_allclose(euler_to_matrix(r, t, p), a, atol=1e-7)


def test_angles_outside_range_equivalent():
    a = euler_to_matrix(3867.465, -200.0, 725.0)
    b = euler_to_matrix(3867.465 - 3600 - 360, -200.0 + 360, 725.0 - 720)
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_angular_distance():
    a = euler_to_matrix(10, 20, 30)
    b = a @ Rotation.from_rotvec([0, 0, np.deg2rad(7.0)]).as_matrix()
    assert abs(angular_distance(a, b) - 7.0) < 1e-9
