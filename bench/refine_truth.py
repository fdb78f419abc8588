"""Issue 4 truth check of sta_refine at a realistic size: auto-refine against the simulated truth.

Simulates the HIV-1 capsid hexamer (C6) in several tomograms (>= 200 particles, per-tilt SNR
0.05 by default), perturbs every pose by exactly 10° and 5 Å, extracts 2D stacks at bin 2
(8 Å, box 24; ``--bin 1``: 4 Å, box 48), reconstructs the starting reference from the perturbed poses, runs
``mpirun -np N sta_refine --auto_refine`` until it converges, and prints:

* median angular error against the truth (symmetry-aware) and the final angular step,
* median translation error in pixels of the binning used,
* the gold-standard resolution (``Final resolution`` line) and the resolution where the FSC of
  ``run_class001.mrc`` against the truth drops below 0.5, and their ratio,
* the FSC against the truth at 0.8 x Nyquist,
* the errors with each half-set's gauge (drift of its map about the symmetry axis) removed, and the
  Cramér–Rao bound of the poses for this box and binning (see docs/validation.md).

Prints numbers from one run, and PASS/FAIL per criterion of the issue; nothing else.

``--volume`` refines 3D pseudo-subtomograms (sta_subtomo without ``--stack2d``) of the same project.

Usage: python bench/refine_truth.py [--out DIR] [--np 5] [--tomograms 5] [--particles 48] [--snr 0.05] [--volume]
       [--evaluate_only] [--bound_particles 12]
"""

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, SHARED  # noqa: E402


def run(cmd, cwd, log):
    t0 = time.time()
    res = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(res.stdout)
    if res.returncode != 0:
        sys.stdout.write(res.stdout[-3000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "refine_truth"))
    ap.add_argument("--np", type=int, default=5)
    ap.add_argument("--tomograms", type=int, default=5)
    ap.add_argument("--particles", type=int, default=48)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--bin", type=int, default=2, choices=(1, 2), help="binning of the refinement (box 48 / 24)")
    ap.add_argument("--healpix_order", type=int, default=3)
    ap.add_argument("--auto_local_healpix_order", type=int, default=3)
    ap.add_argument("--volume", action="store_true",
                    help="refine 3D pseudo-subtomograms (sta_subtomo without --stack2d) instead of 2D stacks")
    ap.add_argument("--skip_setup", action="store_true", help="reuse the simulated project in --out")
    ap.add_argument("--extra", default="", help="extra sta_refine arguments")
    ap.add_argument("--evaluate_only", action="store_true",
                    help="only evaluate the refinement already in --out (its saved log gives the iterations)")
    ap.add_argument("--bound_particles", type=int, default=12,
                    help="particles for the Cramér–Rao bound (0: skip it)")
    args = ap.parse_args()
    out = Path(args.out)
    rdir = f"Refine{'3D' if args.volume else ''}_bin{args.bin}_np{args.np}"
    if args.evaluate_only:
        evaluate(out, rdir, (out / f"{rdir}.log").read_text(), None, args)
        return
    mpi = ["mpirun", "-np", str(args.np)] if args.np > 1 else []
    if not args.skip_setup:
        if out.exists():
            shutil.rmtree(out)
        model = SHARED / "data" / "models" / "job080.cif"
        run(["sta_simulate", "--o", str(out), "--model", str(model), "--truth_sym", "C6", "--n_tomograms",
             str(args.tomograms), "--particles", str(args.particles), "--snr", str(args.snr), "--seed", str(args.seed),
             "--perturb-angles", "10", "--perturb-offsets", "5"], None, Path("/tmp/refine_truth_sim.log"))
    box = 48 // args.bin
    extract = f"Extract{'3D' if args.volume else ''}_bin{args.bin}"
    if not args.skip_setup or not (out / extract / "particles.star").exists():
        run(mpi + ["sta_subtomo", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin", str(args.bin)]
            + ([] if args.volume else ["--stack2d"]) + ["--o", f"{extract}/"], out, out / "subtomo.log")
    if not args.skip_setup or not (out / f"Reconstruct_bin{args.bin}" / "merged.mrc").exists():
        run(mpi + ["sta_reconstruct_particle", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin",
                   str(args.bin), "--sym", "C6", "--o", f"Reconstruct_bin{args.bin}/"], out, out / "reconstruct.log")
    if (out / rdir).exists():
        shutil.rmtree(out / rdir)
    cmd = mpi + ["sta_refine", "--o", f"{rdir}/run", "--auto_refine", "--split_random_halves", "--i",
                 f"{extract}/particles.star"] + ([] if args.volume else ["--tomograms", "tomograms.star"]) + ["--ref",
                 f"Reconstruct_bin{args.bin}/merged.mrc",
                 "--ini_high", "30", "--ctf", "--particle_diameter", "150", "--flatten_solvent", "--zero_mask",
                 "--healpix_order", str(args.healpix_order), "--auto_local_healpix_order",
                 str(args.auto_local_healpix_order), "--offset_range", "3", "--offset_step", "1", "--sym", "C6",
                 "--low_resol_join_halves", "40", "--random_seed", "1"] + args.extra.split()
    text, wall = run(cmd, out, out / f"{rdir}.log")
    evaluate(out, rdir, text, wall, args)


def evaluate(out, rdir, text, wall, args):
    from sta.io.star import read_star
    from sta.simulate.bound import project_bound
    from sta.simulate.evaluate import crossing_resolution, fsc_against_truth, pose_error_report, pose_errors
    from sta.workflows.refine.schedule import healpix_step

    n = args.tomograms * args.particles
    iters = len(re.findall(r"Auto-refine: Iteration=", text))
    gold = float(re.search(r"Final resolution \(without masking\) is: ([0-9.eE+-]+)", text).group(1))
    samp = read_star(str(out / rdir / "run_sampling.star"))["sampling_general"]
    order = int(samp.df["rlnHealpixOrder"].iloc[0])
    step = healpix_step(order + 1)
    ang0, off0 = pose_errors(str(out), f"Extract{'3D' if args.volume else ''}_bin{args.bin}/particles.star", "C6")
    rep = pose_error_report(str(out), f"{rdir}/run_data.star", "C6")
    ang, off = rep["angles"], rep["offsets"]
    px = 4.0 * args.bin
    curve, mpx = fsc_against_truth(str(out), str(out / rdir / "run_class001.mrc"))
    box = 48 // args.bin
    truth_res = crossing_resolution(curve, box, mpx, 0.5)
    shell08 = 0.8 * (box // 2)
    fsc08 = float(np.interp(shell08, np.arange(len(curve)), curve))
    print(f"project: {n} {'3D pseudo-subtomograms' if args.volume else '2D stacks'} in {args.tomograms} tomograms, "
          f"41 tilts, per-tilt SNR {args.snr}, C6, "
          f"bin {args.bin} ({px:g} Å, box {box}); {args.np} MPI ranks; {iters} iterations"
          + (f" in {wall:.0f} s" if wall is not None else ""))
    print(f"median angular error: {np.median(ang0):.2f} -> {np.median(ang):.2f} deg "
          f"(final angular step {step:.2f} deg, HEALPix order {order} + oversampling)")
    acc = re.findall(r"Estimated accuracy angles= ([0-9.eE+-]+)", text)
    if acc:
        print(f"last accuracy estimate: {float(acc[-1]):.2f} deg (RELION's rule stops refining the step below "
              f"0.75 x this)")
    print(f"median translation error: {np.median(off0) / px:.2f} -> {np.median(off) / px:.3f} px "
          f"({np.median(off):.2f} Å)")
    gauge = ", ".join(f"half {h}: {g[0]:.2f} deg about ({g[1][0]:.2f}, {g[1][1]:.2f}, {g[1][2]:.2f}), "
                      f"{np.linalg.norm(g[2]):.2f} Å" for h, g in rep["gauge"].items())
    print(f"with each half's gauge removed ({gauge}): median angular error {np.median(rep['angles_gauge']):.2f} "
          f"deg, translation {np.median(rep['offsets_gauge']) / px:.3f} px")
    if args.bound_particles > 0:
        bound = project_bound(str(out), args.bin, box, args.bound_particles)
        cr = float(np.median(bound["angle"]))
        print(f"Cramér–Rao bound ({len(bound['angle'])} particles, true map, this box and binning): median "
              f"angular error >= {cr:.2f} deg (per-axis sd {np.median(bound['angle_sd']):.2f} deg), shift sd "
              f"{np.median(bound['shift_sd']):.2f} Å; measured/bound {np.median(ang) / cr:.2f}, "
              f"final step/bound {step / cr:.2f}")
    print(f"gold-standard resolution {gold:.2f} Å; FSC against truth < 0.5 at {truth_res:.2f} Å; "
          f"ratio {gold / truth_res:.3f}")
    print(f"FSC against truth at 0.8 x Nyquist ({box * mpx / shell08:.1f} Å): {fsc08:.3f}")
    checks = [("median angular error <= final step", np.median(ang) <= step),
              ("median translation error <= 1 px", np.median(off) / px <= 1.0),
              ("gold-standard within 10% of truth resolution", abs(gold / truth_res - 1) <= 0.10),
              ("FSC vs truth >= 0.5 at 0.8 Nyquist", fsc08 >= 0.5)]
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")


if __name__ == "__main__":
    main()
