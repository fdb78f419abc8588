"""Truth comparison of refined poses (sta.simulate.evaluate): raw errors and the half-set gauge."""

import json

import numpy as np
import pandas as pd

from sta.geometry.euler import matrix_to_euler
from sta.geometry.symmetry import parse_symmetry
from sta.io.star import write_star
from sta.simulate.evaluate import pose_error_report, pose_errors
from sta.simulate.project import _axis_angle as _rot


def test_gauge_of_each_half_is_removed(tmp_path):
    """Half 1 turned 2° about the C6 axis and shifted 1.5 Å along it (a map that drifted), half 2
    not; every pose also carries its own small error and a random symmetry copy."""
    rng = np.random.default_rng(3)
    n = 60
    sym = parse_symmetry("C6").matrices
    gauge_rot = {1: _rot([0, 0, 1], 2.0), 2: np.eye(3)}
    gauge_shift = {1: np.array([0.0, 0.0, 1.5]), 2: np.zeros(3)}
    truth, rows = [], []
    for i in range(n):
        m = _rot(rng.normal(size=3), rng.uniform(0, 180))
        centre = rng.uniform(-500, 500, 3)
        half = 1 + i % 2
        noise_rot = _rot(rng.normal(size=3), 0.3)
        est = m @ gauge_rot[half] @ noise_rot @ sym[rng.integers(len(sym))]
        c_est = centre + m @ gauge_shift[half] + rng.normal(0, 0.1, 3)
        rot, tilt, psi = (float(np.ravel(a)[0]) for a in matrix_to_euler(est))
        truth.append({"name": f"TS_01/{i + 1}", "M": m.tolist(), "A_sub": np.eye(3).tolist(),
                      "centred_A": centre.tolist()})
        rows.append({"rlnTomoParticleName": f"TS_01/{i + 1}", "rlnAngleRot": rot, "rlnAngleTilt": tilt,
                     "rlnAnglePsi": psi, "rlnCenteredCoordinateXAngst": c_est[0],
                     "rlnCenteredCoordinateYAngst": c_est[1], "rlnCenteredCoordinateZAngst": c_est[2],
                     "rlnRandomSubset": half})
    (tmp_path / "truth.json").write_text(json.dumps({"particles": truth}))
    write_star(tmp_path / "run_data.star", {"particles": pd.DataFrame(rows)})

    rep = pose_error_report(str(tmp_path), "run_data.star", "C6")
    h1, h2 = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    # raw: half 1 is off by about its 2° gauge, half 2 only by its own 0.3°
    assert 1.8 < np.median(rep["angles"][h1]) < 2.2
    assert np.allclose(rep["angles"][h2], 0.3, atol=1e-4)  # STAR keeps ~9 digits
    # the gauge found is the one applied, and removing it leaves the particles' own errors
    angle, axis, shift = rep["gauge"][1]
    assert abs(angle - 2.0) < 0.1 and abs(axis[2]) > 0.99
    assert np.allclose(shift, [0, 0, 1.5], atol=0.05)
    assert rep["gauge"][2][0] < 0.1 and np.linalg.norm(rep["gauge"][2][2]) < 0.05
    assert np.all(np.abs(rep["angles_gauge"] - 0.3) < 0.12)
    assert np.median(rep["offsets"][h1]) > 1.4 and np.median(rep["offsets_gauge"]) < 0.2
    # pose_errors is the raw part of the report
    ang, off = pose_errors(str(tmp_path), "run_data.star", "C6")
    assert np.array_equal(ang, rep["angles"]) and np.array_equal(off, rep["offsets"])
