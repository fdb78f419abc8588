"""sta_refine: convergence on simulated data, MPI equivalence, RELION stacks, bad input."""

import os
import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from sta.commands import reconstruct_particle, refine, subtomo
from sta.io.star import read_star
from sta.simulate.evaluate import pose_errors
from tests.conftest import MODELS, REFERENCE, need, requires_mpirun

REFINE_ARGS = ["--auto_refine", "--split_random_halves", "--i", "Extract/particles.star", "--tomograms",
               "tomograms.star", "--ref", "Reconstruct/merged.mrc", "--ini_high", "30", "--ctf",
               "--particle_diameter", "150", "--flatten_solvent", "--zero_mask", "--healpix_order", "3",
               "--auto_local_healpix_order", "3", "--offset_range", "3", "--offset_step", "1", "--sym", "C6",
               "--low_resol_join_halves", "40", "--random_seed", "1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Hexamer (C6), 2 tomograms x 24 particles, poses perturbed by 10° and 5 Å; 2D stacks at
    bin 2 (8 Å, box 24) extracted at the perturbed poses; reference reconstructed from them."""
    from sta.simulate.project import SimulationParameters, simulate_project

    model = need(MODELS / "job080.cif")
    out = tmp_path_factory.mktemp("refine_project")
    p = SimulationParameters(model=str(model), truth_symmetry="C6", snr=0.1, seed=4, perturb_angles=10,
                             perturb_offsets=5, tilt_step=4.0, subtomo_fraction=0.3)
    simulate_project(p, str(out))
    import os

    cwd = os.getcwd()
    os.chdir(out)
    try:
        assert subtomo.main(["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2", "--stack2d",
                             "--o", "Extract/", "--j", "1"]) == 0
        assert reconstruct_particle.main(["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2",
                                          "--o", "Reconstruct/", "--j", "1"]) == 0
    finally:
        os.chdir(cwd)
    return out


def errors(project, data_file, sym="C6"):
    """Median angular (deg, symmetry-aware) and offset (Å) errors against the truth."""
    ang, off = pose_errors(str(project), data_file, sym)
    return float(np.median(ang)), float(np.median(off))


@pytest.fixture(scope="module")
def refined(project):
    """The project refined for 6 iterations (+ the final one) into Refine3D/run; returns its stdout."""
    import contextlib
    import io
    import os

    cwd = os.getcwd()
    os.chdir(project)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            assert refine.main(["--o", "Refine3D/run"] + REFINE_ARGS + ["--iter", "6"]) == 0
    finally:
        os.chdir(cwd)
    return buf.getvalue()


def test_refinement_recovers_poses(project, refined, monkeypatch):
    monkeypatch.chdir(project)
    a0, o0 = errors(project, "Extract/particles.star")
    assert 9.0 < a0 < 11.0 and 4.0 < o0 < 6.0  # the perturbation
    out = refined
    final = [line for line in out.splitlines() if "Final resolution (without masking) is:" in line]
    assert final and abs(float(final[0].split()[-1]) - 16.0) < 1e-6  # Nyquist of the bin-2 data
    a1, o1 = errors(project, "Refine3D/run_data.star")
    print(f"refinement: median angular error {a0:.2f} -> {a1:.2f} deg, offset error {o0:.2f} -> {o1:.2f} A")
    assert a1 < 3.0, a1          # from 10° to the order of the fine angular step (0.94°-1.9°)
    assert o1 < 0.5 * 8.0, o1    # from 5 Å to well below one 8 Å pixel
    for name in ["run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_model.star", "run_data.star", "run_optimiser.star", "run_sampling.star",
                 "run_optimisation_set.star", "run_it001_half1_class001.mrc", "run_it001_half2_model.star",
                 "run_it001_data.star", "run_it001_optimiser.star", "run_it001_sampling.star"]:
        assert (project / "Refine3D" / name).exists(), name
    model = read_star(project / "Refine3D" / "run_model.star")
    assert list(model)[:2] == ["model_general", "model_classes"]
    assert int(model["model_general"].as_dict()["rlnDataDimensionality"]) == 2  # 2D stacks
    # the refined poses feed back into the reconstruction and the extraction
    assert reconstruct_particle.main(["--p", "Refine3D/run_data.star", "--t", "tomograms.star", "--b", "24",
                                      "--bin", "2", "--o", "Reconstruct_refined/", "--j", "1"]) == 0
    assert subtomo.main(["--p", "Refine3D/run_data.star", "--t", "tomograms.star", "--b", "24", "--bin", "2",
                         "--stack2d", "--o", "Extract_refined/", "--j", "1"]) == 0
    assert len(read_star(project / "Extract_refined" / "particles.star")["particles"].df) == len(
        read_star(project / "Refine3D" / "run_data.star")["particles"].df)


def test_refines_3d_pseudo_subtomograms(project, monkeypatch, capsys):
    """3D pseudo-subtomograms (sta_subtomo without --stack2d; no tomogram set needed): the same
    perturbed poses come back to a few degrees and well below a pixel."""
    monkeypatch.chdir(project)
    assert subtomo.main(["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2", "--o", "Extract3D/",
                         "--j", "1"]) == 0
    args = list(REFINE_ARGS)
    args[args.index("Extract/particles.star")] = "Extract3D/particles.star"
    k = args.index("--tomograms")
    del args[k:k + 2]
    assert refine.main(["--o", "Refine3D_vol/run"] + args + ["--iter", "3"]) == 0
    out = capsys.readouterr().out
    assert "3D pseudo-subtomograms" in out and "Final resolution (without masking) is: 16" in out
    a1, o1 = errors(project, "Refine3D_vol/run_data.star")
    print(f"3D subtomograms: median angular error 10 -> {a1:.2f} deg, offset error 5 -> {o1:.2f} A")
    assert a1 < 4.0 and o1 < 0.5 * 8.0
    data = read_star(project / "Refine3D_vol" / "run_data.star")
    df = data["particles"].df
    assert df["rlnCtfImage"].str.endswith("_weights.mrc").all() and df["rlnImageName"].str.endswith("_data.mrc").all()
    assert int(data["optics"].df["rlnImageDimensionality"].iloc[0]) == 3
    for model in ("Refine3D_vol/run_model.star", "Refine3D_vol/run_it001_half1_model.star"):
        assert int(read_star(project / model)["model_general"].as_dict()["rlnDataDimensionality"]) == 3
    # bad 3D input: one clear line naming the file
    from sta.io.star import write_star

    star = read_star(project / "Extract3D" / "particles.star")
    df = star["particles"].df
    star["particles"].df = df.drop(columns=["rlnCtfImage"])
    write_star(project / "Bad3D" / "noctf.star", star)
    d2 = df.copy()
    d2.loc[0, "rlnCtfImage"] = "Extract3D/missing_weights.mrc"
    star["particles"].df = d2
    write_star(project / "Bad3D" / "missing.star", star)
    capsys.readouterr()
    for name, text in (("noctf.star", "without rlnCtfImage"), ("missing.star", "missing_weights.mrc: file not found")):
        bad = [a if a != "Extract3D/particles.star" else f"Bad3D/{name}" for a in args]
        assert refine.main(["--o", "Bad3D/run", "--iter", "1"] + bad) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err


def test_angle_priors_centre_user_sigma_searches(project, monkeypatch):
    """With --sigma_ang before the local-search stage the search is centred on rlnAngle*Prior (here
    the true angles), as in RELION; without prior columns on the current (10° off) angles."""
    from sta.io.star import write_star

    monkeypatch.chdir(project)
    star = read_star(project / "Extract" / "particles.star")
    true = read_star(project / "particles.star")["particles"].df.set_index("rlnTomoParticleName")
    df = star["particles"].df
    for a in ("Rot", "Tilt", "Psi"):
        df[f"rlnAngle{a}Prior"] = true.loc[df["rlnTomoParticleName"], f"rlnAngle{a}"].to_numpy()
    write_star(project / "Prior" / "particles.star", star)
    args = list(REFINE_ARGS)
    args[args.index("--auto_local_healpix_order") + 1] = "5"     # order 3: before the auto local stage
    errs = {}
    for name, particles in (("prior", "Prior/particles.star"), ("none", "Extract/particles.star")):
        run = [a if a != "Extract/particles.star" else particles for a in args]
        assert refine.main(["--o", f"Prior/{name}/run", "--sigma_ang", "1.5", "--iter", "1"] + run) == 0
        errs[name] = errors(project, f"Prior/{name}/run_it001_data.star")[0]
    print(f"after one iteration with --sigma_ang 1.5: {errs}")
    assert errs["prior"] < 6.0 and errs["none"] > errs["prior"] + 2.0, errs


def test_continue_reproduces_the_run(project, refined, monkeypatch, capsys):
    """--continue from iteration 4 finishes with exactly the uninterrupted run's map and poses."""
    monkeypatch.chdir(project)
    assert refine.main(["--continue", "Refine3D/run_it004_optimiser.star", "--o", "Refine3D/run_ct4"]) == 0
    assert "Continuing from iteration 4" in capsys.readouterr().out
    assert not (project / "Refine3D" / "run_ct4_it004_data.star").exists()
    assert (project / "Refine3D" / "run_ct4_it005_data.star").exists()
    a = mrcfile.read(project / "Refine3D" / "run_class001.mrc")
    b = mrcfile.read(project / "Refine3D" / "run_ct4_class001.mrc")
    assert np.array_equal(a, b)
    da = read_star(project / "Refine3D" / "run_data.star")["particles"].df
    db = read_star(project / "Refine3D" / "run_ct4_data.star")["particles"].df
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    assert np.array_equal(da[cols].to_numpy(), db[cols].to_numpy())
    # a RELION optimiser file without sta's state is refused with one line
    (project / "Foreign").mkdir(exist_ok=True)
    shutil.copy(project / "Refine3D" / "run_it004_optimiser.star", project / "Foreign" / "run_it004_optimiser.star")
    assert refine.main(["--continue", "Foreign/run_it004_optimiser.star", "--o", "Foreign/run_ct4"]) == 1
    assert "run_it004_sta_state.npz is missing" in capsys.readouterr().err


@requires_mpirun
def test_one_three_five_ranks_preread_and_scratch_agree(project, tmp_path):
    """1, 3 and 5 ranks, pre-read images (node-shared memory) and a scratch copy give the same
    maps and poses; the scratch copy is removed at the end."""
    scratch = tmp_path / "scratch"
    runs = {"np1": (1, []), "np3": (3, []), "np5": (5, []), "np3_preread": (3, ["--preread_images"]),
            "np3_scratch": (3, ["--scratch_dir", str(scratch), "--keep_free_scratch", "0"])}
    maps = {}
    for name, (np_, extra) in runs.items():
        cmd = (["mpirun", "-np", str(np_), sys.executable, "-m", "sta.commands.refine", "--o", f"R_{name}/run"]
               + REFINE_ARGS + ["--iter", "1"] + extra)
        res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        maps[name] = mrcfile.read(project / f"R_{name}" / "run_class001.mrc")
        assert errors(project, f"R_{name}/run_data.star") == errors(project, "R_np1/run_data.star")
        if extra:
            held = "ram" if "--preread_images" in extra else "scratch"
            assert f"held in {held}" in res.stdout, res.stdout[-2000:]
    ref = maps["np1"]
    for name, m in maps.items():
        assert np.abs(m - ref).max() <= 1e-5 * np.abs(ref).max(), name
    assert np.array_equal(maps["np3_preread"], maps["np3"]) and np.array_equal(maps["np3_scratch"], maps["np3"])
    assert not (scratch / "relion_volatile").exists()


def test_scratch_falls_back_when_disk_is_short(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    args = ["--o", "Rfb/run"] + REFINE_ARGS + ["--iter", "1", "--skip_align", "--scratch_dir", str(tmp_path),
                                              "--keep_free_scratch", "1e9"]
    assert refine.main(args) == 0
    captured = capsys.readouterr()
    assert "must stay free" in captured.out + captured.err and "held in disk" in captured.out
    assert not (tmp_path / "relion_volatile").exists()


@requires_mpirun
def test_two_ranks_refused(project):
    cmd = ["mpirun", "-np", "2", sys.executable, "-m", "sta.commands.refine", "--o", "R2/run"] + REFINE_ARGS
    res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "needs 1 or at least 3 MPI ranks" in res.stderr


def test_relion_written_stacks(tmp_path, monkeypatch):
    """Refines RELION's own 2D stacks (conformance set, bin 2) for one iteration."""
    conf = need(REFERENCE / "conformance" / "Subtomo" / "bin2_float32" / "particles.star").parents[2]
    need(conf / "Reconstruct" / "bin2_C6" / "merged.mrc")
    monkeypatch.chdir(conf)
    out = tmp_path / "run"
    args = ["--o", str(out), "--auto_refine", "--split_random_halves", "--i", "Subtomo/bin2_float32/particles.star",
            "--tomograms", "tomograms.star", "--ref", "Reconstruct/bin2_C6/merged.mrc", "--ini_high", "30", "--ctf",
            "--particle_diameter", "150", "--zero_mask", "--healpix_order", "3", "--auto_local_healpix_order", "3",
            "--offset_range", "2", "--offset_step", "1", "--sym", "C6", "--iter", "1", "--random_seed", "2"]
    assert refine.main(args) == 0
    df = read_star(f"{out}_data.star")["particles"].df
    assert len(df) == 48 and {"rlnLogLikeliContribution", "rlnMaxValueProbDistribution"} <= set(df.columns)


def test_bad_input(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    cases = [(["--K", "2"], "--K 2"), (["--bimodal_psi"], "--bimodal_psi"),
             (["--gpu"], "--gpu"), (["--sym", "Q3"], "unknown symmetry")]
    for extra, text in cases:
        code = refine.main(["--o", "Bad/run"] + REFINE_ARGS + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and text in err[0], err
    args = [a for a in REFINE_ARGS if a not in ("--tomograms", "tomograms.star")]
    assert refine.main(["--o", "Bad/run"] + args) == 1
    assert "--tomograms" in capsys.readouterr().err


def test_print_symmetry_ops(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert refine.main(["--o", "x", "--sym", "D2", "--print_symmetry_ops"]) == 0
    out = capsys.readouterr().out
    assert "Using symmetry group D2, with the following 4 transformation matrices" in out
    assert not (tmp_path / "note.txt").exists()


def test_solvent_correct_fsc(project, monkeypatch, capsys):
    """--solvent_mask + --solvent_correct_fsc: unfil half maps every iteration, the masked corrected
    FSC in the model, RELION's 'already with masking' line."""
    from sta.io.mrc import write_mrc
    from sta.kernels.filters import raised_cosine_sphere

    monkeypatch.chdir(project)
    write_mrc("mask_sphere.mrc", raised_cosine_sphere((24,) * 3, 8.0, 11.0).astype(np.float32), 8.0)
    base = ["--o", "Rsc/run"] + REFINE_ARGS + ["--iter", "1", "--skip_align", "--solvent_mask", "mask_sphere.mrc"]
    assert refine.main(base + ["--solvent_correct_fsc"]) == 0
    out = capsys.readouterr().out
    assert "Final resolution (already with masking) is:" in out
    assert "Calculating solvent-corrected gold-standard FSC" in out
    assert (project / "Rsc" / "run_it001_half1_class001_unfil.mrc").exists()
    corrected = read_star(project / "Rsc" / "run_it001_half1_model.star")["model_class_1"].df
    assert refine.main(["--o", "Rplain/run"] + base[2:]) == 0
    plain = read_star(project / "Rplain" / "run_it001_half1_model.star")["model_class_1"].df
    a = corrected["rlnGoldStandardFsc"].to_numpy()
    b = plain["rlnGoldStandardFsc"].to_numpy()
    assert not np.allclose(a, b) and a[1] > 0.9


def test_ctf_noise_model_is_more_cautious(project, refined, monkeypatch):
    """--ctf_noise: per-pixel CTF²·σ² noise of the premultiplied stacks.  After the same two
    iterations as the RELION-model run (`refined`), σ² (raw-image noise, per unit CTF²) is larger
    than RELION's shell mean at the signal shells, the accuracy estimate is less optimistic, and
    the poses still improve from the 10° perturbation."""
    monkeypatch.chdir(project)
    assert refine.main(["--o", "Rctf/run"] + REFINE_ARGS + ["--iter", "2", "--ctf_noise"]) == 0

    def overall(path):
        df = read_star(path)["optimiser_general"].df
        return float(df["rlnOverallAccuracyRotations"].iloc[0])

    def sigma2(path):
        return read_star(path)["model_optics_group_1"].df["rlnSigma2Noise"].to_numpy()

    acc_ctf = overall(project / "Rctf" / "run_it002_optimiser.star")
    acc_rel = overall(project / "Refine3D" / "run_it002_optimiser.star")
    s_ctf = sigma2(project / "Rctf" / "run_it002_half1_model.star")
    s_rel = sigma2(project / "Refine3D" / "run_it002_half1_model.star")
    print(f"accuracy estimate after 2 iterations: --ctf_noise {acc_ctf:.2f} deg, RELION model {acc_rel:.2f} deg")
    assert acc_ctf > 1.2 * acc_rel
    assert np.median(s_ctf[2:10] / s_rel[2:10]) > 1.5
    a, _ = errors(project, "Rctf/run_data.star")
    assert a < 6.0, a


def test_prior_angle_columns():
    """rlnAngle*Prior: 999 (RELION's 'no prior') and missing columns read as NaN."""
    from types import SimpleNamespace

    import pandas as pd

    from sta.workflows.refine.loop import AutoRefinement

    df = pd.DataFrame({"rlnAngleTiltPrior": [90.0, 999.0, 45.0], "rlnAnglePsiPrior": [999.0, 10.0, -5.0]})
    got = AutoRefinement._prior_angles(SimpleNamespace(particles=SimpleNamespace(df=df, n=3)))
    expect = np.array([[np.nan, 90.0, np.nan], [np.nan, np.nan, 10.0], [np.nan, 45.0, -5.0]])
    np.testing.assert_array_equal(got, expect)


TINY_ARGS = ["--auto_refine", "--split_random_halves", "--i", "Extract/particles.star", "--tomograms",
             "tomograms.star", "--ref", "Reconstruct/merged.mrc", "--ini_high", "30", "--ctf", "--particle_diameter",
             "150", "--healpix_order", "2", "--auto_local_healpix_order", "3", "--offset_range", "2", "--offset_step",
             "1", "--sym", "C6", "--random_seed", "1", "--iter", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.test_refine_halves import tiny_project

    return tiny_project(tmp_path_factory.mktemp("refine_tiny") / "p")


def _poses_and_map(run_dir):
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
            "rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples"]
    poses = [read_star(run_dir / f"{p}_data.star")["particles"].df[cols].to_numpy() for p in ("run_it001", "run")]
    return poses, mrcfile.read(run_dir / "run_class001.mrc").astype(np.float64)


def test_threads_give_the_same_poses(tiny, monkeypatch):
    """--j 2 (two E-step threads per rank, each with its own sums) and, under mpirun, 3 ranks with
    --j 2: the same poses as --j 1 and the same maps to float rounding (the threads' sums are
    added in another order)."""
    from tests.conftest import need_mpirun

    monkeypatch.chdir(tiny)
    runs = {}
    for j in ("1", "2"):
        assert refine.main(["--o", f"J{j}/run", "--j", j] + TINY_ARGS) == 0
        runs[j] = _poses_and_map(tiny / f"J{j}")

    def same(name):
        (p1, m1), (p, m) = runs["1"], runs[name]
        for a, b in zip(p1, p):
            assert np.array_equal(a, b), name
        assert np.abs(m - m1).max() <= 1e-6 * np.abs(m1).max(), name

    same("2")
    mpirun = need_mpirun()
    res = subprocess.run([mpirun, "-np", "3", sys.executable, "-m", "sta.commands.refine", "--o", "J3x2/run",
                          "--j", "2"] + TINY_ARGS, cwd=tiny, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, STA_TEST_OVERSUBSCRIBE="1"))  # 2 threads x 3 ranks on 2 cores
    assert res.returncode == 0, res.stderr[-2000:]
    runs["np3_j2"] = _poses_and_map(tiny / "J3x2")
    same("np3_j2")
