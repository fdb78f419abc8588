"""Run the embedded demo: simulate a small project with known truth, then process it.

Steps (each a real sta tool run as a separate process, MPI tools under ``mpirun``, from
inside the project directory as RELION runs them):

  1. sta_simulate              HIV-1 capsid hexamer (C6) or the built-in phantom, poses
                               perturbed by 10° and 5 Å
  2. sta_subtomo               (mpirun) 2D-stack pseudo-subtomograms at bin 2
  3. sta_reconstruct_particle  (mpirun) reference from the perturbed poses, bin 2
  4. sta_refine                (mpirun) gold-standard auto-refine at bin 2
  5. sta_reconstruct_particle  (mpirun) bin-1 half maps from the refined poses
  6. sta_mask_create           soft mask from the merged map
  7. sta_postprocess           gold-standard resolution; then the pose errors and the FSC
                               against the ground truth

Example:
  sta_demo --o demo --np 3
"""

import logging
import os
import shutil
import subprocess
import sys
import time

from sta.commands import _cli

log = logging.getLogger("sta.demo")
PROG = "sta_demo"

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.normpath(os.path.join(HERE, "..", "..", "..", "..", "shared", "data", "models",
                                              "job080.cif"))


def add_args(parser):
    parser.add_argument("--o", default="demo", help="project directory to create (replaced if it exists)")
    parser.add_argument("--np", type=_cli.positive_int, default=3, help="MPI ranks for the parallel steps")
    parser.add_argument("--j", type=_cli.positive_int, default=1, help="threads per rank")
    parser.add_argument("--model", default=None,
                        help="atomic model for the truth (default: the HIV-1 capsid hexamer of ../shared if "
                             "present, else the built-in phantom)")
    parser.add_argument("--particles", type=_cli.positive_int, default=24, help="particles per tomogram")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed")


def _tool(name):
    """Command prefix for an sta tool: the installed script, else ``python -m``."""
    exe = shutil.which(name)
    if exe:
        return [exe]
    module = name.replace("sta_", "sta.commands.", 1)
    return [sys.executable, "-m", module]


def _mpirun(np_):
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    return [exe, "-np", str(np_)] if exe and np_ > 1 else []


def _run(cmd, cwd):
    log.info(" $ %s", " ".join(cmd))
    t0 = time.time()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        sys.stdout.write(res.stdout)
        raise _cli.StaError(f"demo step failed ({res.returncode}): {' '.join(cmd)}")
    log.info("   ... %.1f s", time.time() - t0)
    return res.stdout


def _body(args):
    out = os.path.abspath(args.o)
    if os.path.isdir(out):
        shutil.rmtree(out)
    model = args.model or (DEFAULT_MODEL if os.path.exists(DEFAULT_MODEL) else "phantom")
    sym = "C6" if model.endswith("job080.cif") else "C1"
    _run(_tool("sta_simulate") + ["--o", out, "--model", model, "--truth_sym", sym, "--particles",
                                  str(args.particles), "--seed", str(args.seed), "--perturb-angles", "10",
                                  "--perturb-offsets", "5"], cwd=None)
    mpi = _mpirun(args.np)
    _run(mpi + _tool("sta_subtomo") + ["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2",
                                       "--stack2d", "--o", "Extract/job001/", "--j", str(args.j)], cwd=out)
    _run(mpi + _tool("sta_reconstruct_particle") + ["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin",
                                                    "2", "--sym", sym, "--o", "Reconstruct/job002/", "--j",
                                                    str(args.j)], cwd=out)
    text = _run(_mpirun(max(args.np, 3) if args.np > 1 else 1) + _tool("sta_refine") + [
        "--o", "Refine3D/job003/run", "--auto_refine", "--split_random_halves", "--i", "Extract/job001/particles.star",
        "--tomograms", "tomograms.star", "--ref", "Reconstruct/job002/merged.mrc", "--ini_high", "30", "--ctf",
        "--particle_diameter", "150", "--flatten_solvent", "--zero_mask", "--healpix_order", "3",
        "--auto_local_healpix_order", "3", "--offset_range", "3", "--offset_step", "1", "--sym", sym,
        "--low_resol_join_halves", "40", "--iter", "8", "--random_seed", "1", "--j", str(args.j)], cwd=out)
    for line in text.splitlines():
        if "Final resolution" in line:
            log.info(" Demo result (refinement, bin 2):%s", line.split(":", 1)[1])
    _run(mpi + _tool("sta_reconstruct_particle") + ["--p", "Refine3D/job003/run_data.star", "--t", "tomograms.star",
                                                    "--b", "48", "--bin", "1", "--sym", sym, "--o",
                                                    "Reconstruct/job004/", "--j", str(args.j)], cwd=out)
    _run(_tool("sta_mask_create") + ["--i", "Reconstruct/job004/merged.mrc", "--o", "MaskCreate/job005/mask.mrc",
                                     "--lowpass", "15", "--ini_threshold", "0.5", "--extend_inimask", "3",
                                     "--width_soft_edge", "3"], cwd=out)
    text = _run(_tool("sta_postprocess") + ["--i", "Reconstruct/job004/half1.mrc", "--mask",
                                            "MaskCreate/job005/mask.mrc", "--o", "PostProcess/job006/postprocess",
                                            "--auto_bfac", "--autob_lowres", "20"], cwd=out)
    for line in text.splitlines():
        if "FINAL RESOLUTION" in line:
            log.info(" Demo result (postprocess, bin 1): %s", line.strip())
    _report_poses(out, sym)
    _report_truth(out)


def _report_poses(out, sym):
    """Median angular and offset errors of the input and refined poses against the truth."""
    import numpy as np

    from sta.simulate.evaluate import pose_errors

    for label, rel in (("perturbed input", "particles_perturbed.star"), ("refined", "Refine3D/job003/run_data.star")):
        ang, off = pose_errors(out, rel, sym)
        log.info(" Demo result (%s poses): median angular error %.2f deg, median offset error %.2f Å", label,
                 float(np.median(ang)), float(np.median(off)))


def _report_truth(out):
    """FSC between the merged map and the simulated ground truth (0.5 criterion)."""
    import numpy as np

    from sta.io.mrc import read_mrc
    from sta.kernels.fsc import fsc

    merged, px = read_mrc(os.path.join(out, "Reconstruct", "job004", "merged.mrc"))
    truth, _ = read_mrc(os.path.join(out, "ground_truth.mrc"))
    curve = fsc(merged, truth)
    below = np.flatnonzero(curve[1:] < 0.5)
    shell = (below[0] if below.size else len(curve) - 1)
    res = merged.shape[0] * px / max(shell, 1)
    log.info(" Demo result: FSC against the ground truth drops below 0.5 at %.2f Å (Nyquist %.2f Å)", res, 2 * px)


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
