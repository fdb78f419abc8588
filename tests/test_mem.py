"""sta_reconstruct_particle --mem: the memory model, the plan, the refusal, a measured run."""

import json
import subprocess
import sys

import pytest

from sta.commands import reconstruct_particle
from sta.parallel import memory as m

MB = 2 ** 20


def _sizes(**kw):
    args = dict(box=96, box0=96, n_tilts=41, height=512, width=512, metadata=1000)
    args.update(kw)
    return m.Sizes(**args)


def test_component_bytes_closed_forms():
    s, n = 96, 96 * 96 * 49
    assert m.half_voxels(s) == n
    assert m.accumulator_bytes(s) == 2 * n * (16 + 8)
    assert m.relion_accumulator_gb(s) == pytest.approx(2 * 49 * 96 ** 2 * 3 * 8 / 2 ** 30)  # spec §5.2
    series = 4 * 41 * 512 * 512
    assert m.tilt_series_bytes(41, 512, 512) == series
    sz = _sizes()
    # keep + (j_out - 1) held, plus the one being loaded with its stacked copy (one file per tilt)
    assert m.tilt_data_bytes(sz, keep=1, j_out=1) == 3 * series
    assert m.tilt_data_bytes(sz, keep=2, j_out=3) == 6 * series
    assert m.tilt_data_bytes(_sizes(single_stack=True), keep=1, j_out=1) == 4 * series
    fss, e, g = 41 * 96 * 49, n // 5, 4
    work = 16 * fss + max(48 * fss, 56 * e + 8 * n + 48 * g * 96 * 49 + 32 * 96 * 96,
                          112 * g * 96 ** 2 + 40 * e) + 16 * g * 96 ** 2
    assert m.particle_work_bytes(sz) == work
    assert m.grid_bytes(s) == 24 * s * s
    assert m.finalise_bytes(sz) == 48 * n + int(3.3 * 8 * s ** 3) + 6 * MB
    assert m.finalise_bytes(_sizes(crop=64)) == m.finalise_bytes(sz) + 16 * 64 ** 3
    assert m.reduce_bytes(s, 1) == 0 and m.reduce_bytes(s, 3) == int(1.5 * 4 * MB)
    fixed = 2 * 1000 + m.METADATA_FIXED + m.SLACK
    bp = m.tilt_data_bytes(sz, 1, 2) + 2 * (m.accumulator_bytes(s) + work) + m.grid_bytes(s)
    assert m.rank_peaks(sz, 2, 1, 1) == {"serial": fixed + max(bp, m.finalise_bytes(sz))}
    peaks = m.rank_peaks(sz, 2, 1, 3)
    assert peaks["worker"] == fixed + bp + m.reduce_bytes(s, 3)
    assert peaks["leader"] == fixed + m.finalise_bytes(sz) + m.reduce_bytes(s, 3)


def test_plan_choice():
    sz = _sizes()

    def need(j, keep, ranks=1):
        return max(m.rank_peaks(sz, j, keep, ranks).values())

    assert need(1, 1) < need(1, 2) < need(2, 1) < need(2, 2) < need(3, 1)
    plan = m.plan_memory(0, sz, 3)
    assert (plan.j_out, plan.keep) == (3, 2)
    plan = m.plan_memory(need(3, 2) + 1, sz, 3)
    assert (plan.j_out, plan.keep, plan.estimate) == (3, 2, need(3, 2))
    plan = m.plan_memory(need(2, 2) - 1, sz, 3)  # j_out is kept before keep
    assert (plan.j_out, plan.keep) == (2, 1)
    plan = m.plan_memory(need(1, 2), sz, 4)
    assert (plan.j_out, plan.keep) == (1, 2)
    with pytest.raises(m.MemoryTooSmall) as err:
        m.plan_memory(need(1, 1) - 1, sz, 2)
    assert err.value.needed == need(1, 1)
    plan = m.plan_memory(need(2, 1, 3), sz, 3, n_ranks=3)  # the worker ranks decide under MPI
    assert (plan.j_out, plan.keep) == (2, 1)
    assert plan.peaks["worker"] > plan.peaks["leader"]


def test_bounded_memory_paths_give_the_same_sums():
    """Adding slices in bounded batches and symmetrising in chunks change nothing beyond
    float rounding (batches) or nothing at all (chunks)."""
    import numpy as np

    from sta.geometry.symmetry import parse_symmetry
    from sta.kernels.backproject import HalfGrid, backproject_slices_gather, symmetrise_half

    rng = np.random.default_rng(4)
    s, n = 24, 6
    sh = s // 2 + 1
    data = rng.standard_normal((n, s, sh)) + 1j * rng.standard_normal((n, s, sh))
    weight = rng.random((n, s, sh))
    q, _ = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    radii = np.full(n, s // 2)
    out = []
    for cap in (None, 500):
        d, w = np.zeros(s * s * sh, complex), np.zeros(s * s * sh)
        backproject_slices_gather(HalfGrid(s), data, weight, q, radii, d, w, max_entries=cap)
        out.append((d, w))
    assert np.abs(out[0][1]).max() > 0
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=0, atol=1e-12 * np.abs(out[0][0]).max())
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=0, atol=1e-12 * out[0][1].max())
    ops = parse_symmetry("D3").matrices[1:]
    vol = out[0][0].reshape(s, s, sh)
    assert np.array_equal(symmetrise_half(vol, ops, True, chunk=777), symmetrise_half(vol, ops, True, chunk=1 << 20))


def _simulate(path):
    from sta.simulate.project import SimulationParameters, simulate_project

    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=6, box=32, pixel_size=6.0, image_size=(200, 200),
                             tomo_size=(200, 200, 70), snr=0, seed=5)
    simulate_project(p, str(path))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem")
    _simulate(path)
    return path


def test_too_small_is_refused_before_work(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    code = reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "32", "--o", "Small/", "--mem", "0.001",
                                      "--j", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("ERROR: --mem 0.001 GB is too small for box 32: at least ")
    assert "GB per rank is needed (" in err[0]
    assert not (project / "Small").exists() or not any((project / "Small").iterdir())


_MEASURE = r"""
import importlib, json, sys
from sta.parallel.memory import RUNTIME_MODULES
for name in RUNTIME_MODULES:
    importlib.import_module(name)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
from sta.commands import reconstruct_particle
code = reconstruct_particle.main(sys.argv[1:])
print(json.dumps({"code": code, "base": base, "peak": status("VmHWM")}))
"""


def test_measured_peak_within_limit(project):
    """A real run in a fresh process: the growth of the peak RSS above the RSS after the
    imports stays within --mem."""
    mem = 0.06
    res = subprocess.run([sys.executable, "-c", _MEASURE, "--i", "optimisation_set.star", "--b", "32", "--o",
                          "Measured/", "--mem", str(mem), "--j_out", "4", "--j", "1", "--j_in", "1"],
                         cwd=project, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    assert " --mem 0.06 GB per rank: j_out " in res.stdout
    assert (project / "Measured" / "merged.mrc").exists()
    growth = out["peak"] - out["base"]
    assert 0 < growth <= mem * 2 ** 30, f"peak grew by {growth / MB:.1f} MB for --mem {mem} GB"
