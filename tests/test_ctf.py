"""CTF and dose weighting against spec §3.1/§3.3 computed independently here."""

import math

import numpy as np
import pytest

from sta.kernels.ctf import ctf_2d, ctf_values, dose_weights_2d, wavelength


def spec_ctf(fx, fy, du, dv, ang, kv, cs, q0, phase=0.0, bfac=0.0, scale=1.0, dose=None):
    """Scalar re-derivation of spec §3.1 with the math module only."""
    v = kv * 1000.0
    lam = 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))
    k1 = math.pi * lam
    k2 = math.pi / 2 * cs * 1e7 * lam ** 3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    k5 = math.radians(phase)
    a = math.cos(math.radians(ang)) * fx + math.sin(math.radians(ang)) * fy
    b = -math.sin(math.radians(ang)) * fx + math.cos(math.radians(ang)) * fy
    u2 = fx * fx + fy * fy
    gamma = k1 * (-du * a * a - dv * b * b) + k2 * u2 * u2 - k5 - k3
    if dose is not None:
        env = math.exp(-0.5 * dose / (0.245 * math.sqrt(u2) ** -1.665 + 2.81)) if u2 > 0 else 1.0
    else:
        env = math.exp(-bfac * u2 / 4)
    return -math.sin(gamma) * env * scale


def test_wavelength_300kv():
    assert abs(wavelength(300.0) - 0.019687) < 1e-6


@pytest.mark.parametrize("fx,fy", [(0.0, 0.0), (0.01, 0.0), (0.03, -0.02), (-0.05, 0.07), (0.1, 0.1)])
@pytest.mark.parametrize("extra", [{}, {"phase": 35.0}, {"bfac": 120.0, "scale": 0.7}, {"dose": 30.0}])
def test_ctf_values_match_spec(fx, fy, extra):
    kw = dict(du=31000.0, dv=29500.0, ang=37.0, kv=300.0, cs=2.7, q0=0.07)
    ours = ctf_values(fx, fy, kw["du"], kw["dv"], kw["ang"], kw["kv"], kw["cs"], kw["q0"],
                      phase_shift=extra.get("phase", 0.0), bfactor=extra.get("bfac", 0.0),
                      scale=extra.get("scale", 1.0), dose=extra.get("dose"))
    ref = spec_ctf(fx, fy, **kw, **extra)
    if abs(ref) < 1e-8:
        ref = math.copysign(1e-8, ref)
    assert abs(float(ours) - ref) < 1e-12


def test_ctf_at_zero_is_amplitude_contrast():
    assert abs(float(ctf_values(0.0, 0.0, 20000, 20000, 0, 300, 2.7, 0.1)) - 0.1) < 1e-12


def test_first_zero_3um_300kv():
    """First zero where pi*lambda*dF*k^2 - pi/2*Cs*lambda^3*k^4 + asin(Q0) = pi."""
    lam = wavelength(300.0)
    df, cs, q0 = 30000.0, 2.7e7, 0.1
    # solve the quadratic in u = k^2: K2 u^2 - K1 df u + (pi - asin q0) = 0 (smaller root)
    k1, k2 = math.pi * lam, math.pi / 2 * cs * lam ** 3
    c = math.pi - math.asin(q0)
    u = (k1 * df - math.sqrt((k1 * df) ** 2 - 4 * k2 * c)) / (2 * k2)
    k_zero = math.sqrt(u)
    # small-Cs estimate sqrt(lambda*dF/(1 - asin(Q0)/pi)) = 24.7 Å
    assert 1 / k_zero == pytest.approx(math.sqrt(lam * df / (1 - math.asin(q0) / math.pi)), rel=2e-3)
    assert 1 / k_zero == pytest.approx(24.7, abs=0.1)
    k = np.linspace(0.5 * k_zero, 1.5 * k_zero, 200001)
    vals = ctf_values(k, 0.0 * k, df, df, 0.0, 300.0, 2.7, q0)
    first = k[np.argmax(np.sign(vals) != np.sign(vals[0]))]
    assert abs(first - k_zero) < 1e-5 * k_zero


def test_astigmatism_direction():
    """ΔfU acts along the azimuth angle: the zero along angle α comes at the ΔfU position."""
    du, dv, ang = 30000.0, 20000.0, 30.0
    d = np.array([np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))])
    k = np.linspace(0.01, 0.04, 30001)
    along = ctf_values(k * d[0], k * d[1], du, dv, ang, 300.0, 2.7, 0.1)
    iso = ctf_values(k, 0 * k, du, du, 0.0, 300.0, 2.7, 0.1)
    np.testing.assert_allclose(along, iso, atol=1e-12)


def test_ctf_2d_layout_and_batch():
    box, px = 64, 2.0
    du = np.array([20000.0, 25000.0])
    grid = ctf_2d(box, px, du, du - 500, [10.0, 20.0], 300.0, 2.7, 0.1, scale=[1.0, 0.5])
    assert grid.shape == (2, box, box // 2 + 1)
    y, x = 40, 7  # y >= box/2 -> negative frequency
    fy, fx = (y - box) / (box * px), x / (box * px)
    ref = spec_ctf(fx, fy, 25000.0, 24500.0, 20.0, 300.0, 2.7, 0.1, scale=0.5)
    assert abs(grid[1, y, x] - ref) < 1e-12


def test_dose_weights():
    w = dose_weights_2d(32, 3.0, [0.0, 60.0])
    assert np.all(w[0] == 1.0)
    k = 5 / (32 * 3.0)
    ref = math.exp(-60.0 / (2 * (0.245 * k ** -1.665 + 2.81)))
    assert abs(w[1, 0, 5] - ref) < 1e-12 and w[1, 0, 0] == 1.0
    wb = dose_weights_2d(32, 3.0, [60.0], bfactor_per_dose=4.0)
    assert abs(wb[0, 0, 5] - math.exp(-4.0 * 60.0 * k * k / 4)) < 1e-12
