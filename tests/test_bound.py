"""Cramér–Rao bound of simulated poses (sta.simulate.bound) against closed forms for a Gaussian blob."""

import numpy as np
import pytest

from sta.geometry.tilt import projection_matrices
from sta.kernels.projector import FourierProjector
from sta.simulate.bound import median_angle_error, pose_fisher
from sta.simulate.project import SimulationParameters, simulation_padding

A, B, C = 2.0, 3.5, 2.5  # blob widths (px) along the reference x, y, z
PX, SIGMA = 4.0, 0.7


@pytest.fixture(scope="module")
def fisher():
    """One tilt at 0°, no CTF: the image is the ray sum of the blob along z."""
    box = 24
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol = np.exp(-x ** 2 / (2 * A ** 2) - y ** 2 / (2 * B ** 2) - z ** 2 / (2 * C ** 2))
    params = SimulationParameters(box=box, pixel_size=PX, ctf=False, tomo_size=(96, 96, 48), image_size=(96, 96))
    tomo = {"angles": np.zeros(1), "scale": np.ones(1), "pre_exposure": np.zeros(1)}
    zero = np.zeros(1)
    proj = projection_matrices(zero, zero, zero, zero, zero, PX, params.tomo_size, params.image_size)
    return pose_fisher(FourierProjector(vol, pad=simulation_padding(box)), tomo, params, proj,
                       np.array([48.0, 48.0, 24.0]), np.eye(3), np.zeros(1), SIGMA, 2 * box, float(box))


def test_shift_information_is_the_gradient_energy(fisher):
    """Σ(∂s/∂x)² of the projected Gaussian (amplitude √(2π)·C) is amp²·π·B/(2A) per px²."""
    amp2 = 2 * np.pi * C ** 2
    assert fisher[3, 3] == pytest.approx(amp2 * np.pi * B / (2 * A) / (SIGMA * PX) ** 2, rel=0.02)
    assert fisher[4, 4] == pytest.approx(amp2 * np.pi * A / (2 * B) / (SIGMA * PX) ** 2, rel=0.02)
    # a shift along the beam does not change an image without CTF
    assert abs(fisher[5, 5]) < 1e-6 * fisher[3, 3]


def test_rotation_information_about_the_beam(fisher):
    """Turning the projected ellipse in its plane: amp²·(1/A² − 1/B²)²·π·A³B³/4 per rad²;
    turning about x or y changes the ray sum only to second order."""
    amp2 = 2 * np.pi * C ** 2
    expect = amp2 * (1 / A ** 2 - 1 / B ** 2) ** 2 * np.pi * A ** 3 * B ** 3 / 4 * np.radians(1) ** 2 / SIGMA ** 2
    assert fisher[2, 2] == pytest.approx(expect, rel=0.03)
    assert abs(fisher[0, 0]) < 1e-3 * fisher[2, 2] and abs(fisher[1, 1]) < 1e-3 * fisher[2, 2]
    assert np.allclose(fisher, fisher.T)


def test_median_angle_error_of_an_isotropic_gaussian():
    """|v| of a 3D standard normal is chi-distributed with 3 degrees of freedom: median 1.5382."""
    assert median_angle_error(np.eye(3) * 4.0) == pytest.approx(2 * 1.5382, rel=0.02)
