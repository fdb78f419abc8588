"""sta_reconstruct_particle: conformance with RELION, truth, parallel runs, bad input."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from sta.commands import reconstruct_particle
from sta.kernels.fsc import fsc
from tests.conftest import REFERENCE, need, requires_mpirun

CONF = REFERENCE / "conformance"
VARIANTS = [("bin1_C1", 48, 1, "C1"), ("bin1_C6", 48, 1, "C6"), ("bin2_C1", 24, 2, "C1"), ("bin2_C6", 24, 2, "C6")]


def particle_mask(ref):
    """Voxels inside the particle: where the smoothed RELION map is above 20% of its maximum."""
    from scipy.ndimage import gaussian_filter

    sm = gaussian_filter(ref, 1.0)
    return sm > 0.2 * sm.max()


@pytest.mark.parametrize("variant,box,binning,sym", VARIANTS)
def test_conformance_with_relion(variant, box, binning, sym, tmp_path, monkeypatch):
    need(CONF / "Reconstruct" / variant / "merged.mrc")
    monkeypatch.chdir(CONF)
    out = tmp_path / variant
    code = reconstruct_particle.main(["--i", "optimisation_set.star", "--b", str(box), "--bin", str(binning),
                                      "--sym", sym, "--o", f"{out}/", "--j", "2", "--theme", "classic"])
    assert code == 0
    for tag in ("half1", "half2", "merged"):
        ours = mrcfile.read(out / f"{tag}.mrc")
        ref = mrcfile.read(CONF / "Reconstruct" / variant / f"{tag}.mrc")
        curve = fsc(ours, ref)[1:]  # shell 0 is the (tapered, ~0) mean: compared below instead
        assert curve.min() >= 0.99, f"{tag}: min FSC {curve.min():.5f}"
        assert abs(ours.mean() - ref.mean()) < 1e-4 * ref.std()
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < 1e-4, f"{tag}: relative RMS difference {rel:.2e}"
        m = particle_mask(ref)
        assert abs(ours[m].mean() / ref[m].mean() - 1) < 0.01
        assert abs(ours[m].std() / ref[m].std() - 1) < 0.01
        with mrcfile.open(out / f"{tag}.mrc") as f:
            assert abs(float(f.voxel_size.x) - 4.0 * binning) < 1e-5
    for name in ("data_merged", "weight_merged", "data_half1", "weight_half2"):
        ours = mrcfile.read(out / f"{name}.mrc")
        ref = mrcfile.read(CONF / "Reconstruct" / variant / f"{name}.mrc")
        assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-4, name
    assert (out / "note.txt").read_text().startswith("Command:")


def _simulate(tmp_path, **kw):
    from sta.simulate.project import SimulationParameters, simulate_project

    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=12, box=32, pixel_size=6.0, image_size=(200, 200),
                             tomo_size=(200, 200, 70), snr=0, seed=5, **kw)
    truth = simulate_project(p, str(tmp_path))
    return truth


def _shift(a, b):
    """Sub-voxel position of the cross-correlation peak of a against b (voxels)."""
    cc = np.fft.irfftn(np.fft.rfftn(a) * np.conj(np.fft.rfftn(b)), s=a.shape, axes=(0, 1, 2))
    cc = np.fft.fftshift(cc)
    c = np.array(np.unravel_index(np.argmax(cc), cc.shape))
    out = []
    for ax in range(3):
        lo, hi = c.copy(), c.copy()
        lo[ax] -= 1
        hi[ax] += 1
        y0, y1, y2 = cc[tuple(lo)], cc[tuple(c)], cc[tuple(hi)]
        out.append(c[ax] - a.shape[ax] // 2 + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))
    return np.array(out)


def test_truth_noise_free(tmp_path, monkeypatch):
    """True poses, no noise (HIV capsid hexamer, box 48 at 4 Å, 2 x 24 particles): FSC vs
    truth >= 0.9 up to 0.8 Nyquist, correct hand (mirrored truth clearly worse), no shift."""
    from sta.simulate.project import SimulationParameters, simulate_project
    from tests.conftest import MODELS

    model = need(MODELS / "job080.cif")
    p = SimulationParameters(model=str(model), truth_symmetry="C6", snr=0, seed=3, subtomo_fraction=0.3,
                             defocus_min=31000, defocus_max=32000)
    simulate_project(p, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "48", "--o", "Rec/", "--j", "1"]) == 0
    truth = mrcfile.read(tmp_path / "ground_truth.mrc")
    ours = mrcfile.read(tmp_path / "Rec" / "merged.mrc")
    curve = fsc(ours, truth)
    upto = int(0.8 * 24)
    assert curve[1:upto + 1].min() >= 0.9, np.round(curve, 3)
    mirrored = fsc(ours, truth[::-1].copy())
    assert mirrored[2:upto + 1].mean() < curve[2:upto + 1].mean() - 0.3
    assert np.abs(_shift(ours, truth)).max() < 0.1


def _run_mpi(np_, args, cwd, timeout=120):
    cmd = ["mpirun", "-np", str(np_), sys.executable, "-m", "sta.commands.reconstruct_particle"] + args
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@requires_mpirun
def test_mpi_1_3_5_ranks_agree(tmp_path):
    _simulate(tmp_path)
    maps = {}
    for np_ in (1, 3, 5):
        res = _run_mpi(np_, ["--i", "optimisation_set.star", "--b", "32", "--o", f"R{np_}/", "--j", "1",
                             "--j_out", "1"], tmp_path)
        assert res.returncode == 0, res.stderr
        maps[np_] = {t: mrcfile.read(tmp_path / f"R{np_}" / f"{t}.mrc") for t in ("half1", "half2", "merged")}
    for np_ in (3, 5):
        for t, ref in maps[1].items():
            assert np.abs(maps[np_][t] - ref).max() <= 1e-5 * np.abs(ref).max(), (np_, t)


@requires_mpirun
def test_killed_rank_ends_job(tmp_path):
    """A follower killed mid-run: non-zero exit naming the rank within 30 s, no final outputs."""
    _simulate(tmp_path)
    env = dict(os.environ, STA_TEST_KILL_RANK="1")
    cmd = ["mpirun", "-np", "3", sys.executable, "-m", "sta.commands.reconstruct_particle", "--i",
           "optimisation_set.star", "--b", "32", "--o", "Rk/", "--j", "1", "--j_out", "1"]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode != 0
    assert time.time() - t0 < 30
    text = res.stdout + res.stderr
    assert "rank 1" in text.lower() or "rank: 1" in text.lower(), text[-2000:]
    assert not list((tmp_path / "Rk").glob("*.mrc"))


def test_bad_input_one_line(tmp_path, monkeypatch, capsys):
    _simulate(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = []
    # unknown symmetry
    cases.append((["--i", "optimisation_set.star", "--b", "32", "--o", "X/", "--sym", "Q7"], "unknown symmetry"))
    # missing MRC (a tilt image)
    img = next((tmp_path / "tilt_images" / "TS_01").glob("*.mrc"))
    img.rename(img.with_suffix(".bak"))
    cases.append((["--i", "optimisation_set.star", "--b", "32", "--o", "X/"], img.name))
    for argv, expected in cases:
        code = reconstruct_particle.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        assert len(err) == 1 and err[0].startswith("ERROR:") and expected in err[0], err
    img.with_suffix(".bak").rename(img)
    # truncated STAR file
    text = Path("particles.star").read_text()
    Path("particles_cut.star").write_text(text[: int(len(text) * 0.8)].rsplit(" ", 3)[0])
    code = reconstruct_particle.main(["--p", "particles_cut.star", "--t", "tomograms.star", "--b", "32", "--o", "X/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "particles_cut.star" in err[0], err
    # missing rlnTomoName in the tomogram set
    Path("tomograms_bad.star").write_text(Path("tomograms.star").read_text().replace("_rlnTomoName ", "_rlnTomoNameX "))
    code = reconstruct_particle.main(["--p", "particles.star", "--t", "tomograms_bad.star", "--b", "32", "--o", "X/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "rlnTomoName" in err[0], err
    # a tilt-series table whose row count disagrees with its images
    ts = Path("tilt_series/TS_01.star")
    lines = ts.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("tilt_images/"))
    del lines[last]
    Path("tilt_series/TS_01.star").write_text("\n".join(lines) + "\n")
    n_images = len(list((tmp_path / "tilt_images" / "TS_01").glob("*.mrc")))
    with mrcfile.new(tmp_path / "stack.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((n_images, 8, 8), np.float32))
    # point every row at one stack of n_images sections: the table now has one row fewer
    body = [line if not line.startswith("tilt_images/") else f"{k}@stack.mrcs" + line[line.index(" "):]
            for k, line in enumerate(lines, start=1 - lines.index(next(x for x in lines if x.startswith("tilt_"))))]
    Path("tilt_series/TS_01.star").write_text("\n".join(body) + "\n")
    code = reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "32", "--o", "X/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "TS_01" in err[0], err
    assert not (tmp_path / "X" / "merged.mrc").exists()


def test_pipeline_control_and_mem(tmp_path, monkeypatch, capsys):
    _simulate(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "32", "--o", "Job/", "--mem", "0.0001",
                                      "--pipeline_control", "Job/"])
    assert code == 1 and (tmp_path / "Job" / "RELION_JOB_EXIT_FAILURE").exists()
    assert "--mem" in capsys.readouterr().err
    code = reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "32", "--o", "Job2/", "--mem", "0.06",
                                      "--j_out", "4", "--pipeline_control", "Job2/"])
    assert code == 0 and (tmp_path / "Job2" / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (tmp_path / "Job2" / "note.txt").exists()
    out = capsys.readouterr().out
    assert "--j_out reduced from 4 to" in out
