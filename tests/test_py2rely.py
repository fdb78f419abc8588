"""py2rely / ccpem-pipeliner command lines (../shared/spec/py2rely-commands.md) against the alias
directory, under ``mpirun --oversubscribe -n 5`` as py2rely runs them: extract, reconstruct,
Refine3D (with ``--gpu ''``), reconstruct from the refined poses, mask create and postprocess.
Flags and their order are py2rely's; only paths, box sizes, binning, --ini_high, the particle
diameter and the mask threshold are adapted to the small simulated project, and the Refine3D
line gets ``--iter 2`` appended (two iterations and the final one) so that the global searches
of its ``--healpix_order 2`` fit the test budget on two cores; convergence itself is tested in
test_refine.py and bench/refine_truth.py."""

import os
import re
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

from sta.commands import relion_aliases
from sta.io.star import read_star
from tests.conftest import MODELS, need, requires_mpirun

pytestmark = requires_mpirun


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from sta.simulate.project import SimulationParameters, simulate_project

    root = tmp_path_factory.mktemp("py2rely")
    bindir = root / "bin"
    assert relion_aliases.main(["--o", str(bindir)]) == 0
    project = root / "project"
    p = SimulationParameters(model=str(need(MODELS / "job080.cif")), truth_symmetry="C1", n_tomograms=2,
                             particles_per_tomogram=8, tilt_step=6.0, snr=0.2, seed=5, perturb_angles=5,
                             perturb_offsets=3)
    simulate_project(p, str(project))
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env.pop("STA_ARGV0", None)
    return project, env


def _run(line, project, env, timeout=900):
    """Run one py2rely command line (a shell line, as the pipeliner's runner does)."""
    res = subprocess.run(line, shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{line}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout, res.stderr


def _job_ok(project, job):
    d = project / job
    assert (d / "RELION_JOB_EXIT_SUCCESS").exists(), job
    assert not (d / "RELION_JOB_EXIT_FAILURE").exists() and not (d / "note.txt").exists(), job


def test_py2rely_pipeline(pipeline):
    project, env = pipeline
    mpi = "mpirun --oversubscribe -n 5"
    _run(f"{mpi} relion_tomo_subtomo_mpi --t tomograms.star --p particles_perturbed.star --o Extract/job001/ "
         "--b 24 --crop -1 --bin 2 --min_frames 1 --float16 --stack2d --theme classic --j 8 "
         "--pipeline_control Extract/job001/", project, env)
    _job_ok(project, "Extract/job001")
    star = read_star(project / "Extract/job001/particles.star")
    assert int(star["general"].df["rlnTomoSubTomosAre2DStacks"].iloc[0]) == 1
    assert (project / "Extract/job001/optimisation_set.star").exists()

    _run(f"{mpi} relion_tomo_reconstruct_particle_mpi --t tomograms.star --p particles_perturbed.star "
         "--o Reconstruct/job002/ --b 24 --crop -1 --bin 2 --sym C1 --theme classic --j 8 --j_out 8 --j_in 1 "
         "--pipeline_control Reconstruct/job002/", project, env)
    _job_ok(project, "Reconstruct/job002")

    out, _ = _run(f"{mpi} relion_refine_mpi --o Refine3D/job003/run --auto_refine --split_random_halves "
                  "--ref Reconstruct/job002/merged.mrc --trust_ref_size --ini_high 40 --i Extract/job001/particles.star "
                  "--tomograms tomograms.star --ctf --particle_diameter 150.0 --flatten_solvent --zero_mask "
                  "--oversampling 1 --healpix_order 2 --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 "
                  "--sym C1 --low_resol_join_halves 40 --norm --scale --pool 30 --pad 2 --j 8 --gpu '' "
                  "--pipeline_control Refine3D/job003/ --iter 2", project, env)
    _job_ok(project, "Refine3D/job003")
    for name in ("run_data.star", "run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_optimiser.star", "run_optimisation_set.star"):
        assert (project / "Refine3D/job003" / name).exists(), name
    final = [line for line in out.splitlines() if "Final resolution" in line]
    assert final, out[-2000:]
    first_number = float(re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", final[0].split("Final resolution")[1]).group())
    assert 16.0 <= first_number < 100.0

    _run(f"{mpi} relion_tomo_reconstruct_particle_mpi --t tomograms.star --p Refine3D/job003/run_data.star "
         "--o Reconstruct/job005/ --b 48 --crop -1 --bin 1 --sym C1 --theme classic --j 8 --j_out 8 --j_in 1 "
         "--pipeline_control Reconstruct/job005/", project, env)
    _job_ok(project, "Reconstruct/job005")
    merged = mrcfile.read(project / "Reconstruct/job005/merged.mrc")
    threshold = 0.3 * float(merged.max())

    version, _ = _run("relion_mask_create --version", project, env)
    assert version.startswith("RELION version: 5")
    _run(f"relion_mask_create --i Reconstruct/job005/merged.mrc --o MaskCreate/job006/mask.mrc --lowpass 12.5 "
         f"--angpix -1.0 --ini_threshold {threshold:.5g} --extend_inimask 3 --width_soft_edge 5 --j 1 "
         "--pipeline_control MaskCreate/job006/", project, env)
    _job_ok(project, "MaskCreate/job006")
    mask = mrcfile.read(project / "MaskCreate/job006/mask.mrc")
    assert 0.0 < mask.mean() < 0.5

    _run("relion_postprocess --version", project, env)
    out, _ = _run("relion_postprocess --mask MaskCreate/job006/mask.mrc --i Reconstruct/job005/half1.mrc "
                  "--o PostProcess/job007/postprocess --pipeline_control PostProcess/job007/", project, env)
    _job_ok(project, "PostProcess/job007")
    assert any("RESOLUTION" in line for line in out.splitlines()), out[-2000:]
    fsc = read_star(project / "PostProcess/job007/postprocess.star")["fsc"].df
    assert {"rlnFourierShellCorrelationCorrected", "rlnAngstromResolution"} <= set(fsc.columns)
    assert np.all(np.isfinite(fsc["rlnFourierShellCorrelationCorrected"].to_numpy()))
