"""Benchmark sta_refine (issue 4): seconds per iteration and per particle at two box sizes,
peak RSS per rank, parallel efficiency on 1, 3 and 5 ranks, and 5 ranks with --preread_images
and --scratch_dir.

Simulates the hexamer (C6) with poses perturbed by 10° / 5 Å, extracts 2D stacks at bin 2
(box 24, 8 Å) and bin 1 (box 48, 4 Å), reconstructs references, and runs a fixed number of
local-search iterations.  Prints numbers from one run; nothing is asserted.

``--volume``: the same with 3D pseudo-subtomograms (sta_subtomo without ``--stack2d``).

Usage: python bench/bench_refine.py [--out DIR] [--tomograms 2] [--particles 24] [--iter 2] [--volume]
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, SHARED, measure  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "refine"))
    ap.add_argument("--tomograms", type=int, default=2)
    ap.add_argument("--particles", type=int, default=24)
    ap.add_argument("--iter", type=int, default=2)
    ap.add_argument("--volume", action="store_true", help="3D pseudo-subtomograms instead of 2D stacks")
    args = ap.parse_args()
    kind = [] if args.volume else ["--stack2d"]
    tomos = [] if args.volume else ["--tomograms", "tomograms.star"]
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model = SHARED / "data" / "models" / "job080.cif"
    measure(["sta_simulate", "--o", str(out), "--model", str(model), "--truth_sym", "C6", "--n_tomograms",
             str(args.tomograms), "--particles", str(args.particles), "--perturb-angles", "10",
             "--perturb-offsets", "5"], None)
    n = args.tomograms * args.particles
    for box, binning in ((24, 2), (48, 1)):
        measure(["sta_subtomo", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin", str(binning),
                 ] + kind + ["--o", f"Extract/b{box}/"], out)
        measure(["sta_reconstruct_particle", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin",
                 str(binning), "--o", f"Reconstruct/b{box}/"], out)
    print(f"project: {n} particles ({'3D pseudo-subtomograms' if args.volume else '2D stacks'}), 41 tilts, C6, "
          f"local searches (healpix 3), {args.iter} iterations + final")
    rows = {}
    scratch = out / "scratch"
    runs = [("b24_np1", 24, 1, []), ("b48_np1", 48, 1, []), ("b24_np3", 24, 3, []), ("b24_np5", 24, 5, []),
            ("b24_np5_preread", 24, 5, ["--preread_images"]),
            ("b24_np5_scratch", 24, 5, ["--scratch_dir", str(scratch), "--keep_free_scratch", "0"])]
    for label, box, ranks, extra in runs:
        cmd = (["mpirun", "-np", str(ranks)] if ranks > 1 else []) + [
            "sta_refine", "--o", f"Refine/{label}/run", "--auto_refine", "--split_random_halves", "--i",
            f"Extract/b{box}/particles.star"] + tomos + ["--ref", f"Reconstruct/b{box}/merged.mrc",
            "--ini_high", "30", "--ctf", "--particle_diameter", "150", "--flatten_solvent", "--zero_mask",
            "--healpix_order", "3", "--auto_local_healpix_order", "3", "--offset_range", "3", "--offset_step", "1",
            "--sym", "C6", "--iter", str(args.iter), "--random_seed", "1"] + extra
        r = measure(cmd, out)
        iters = args.iter + 1
        rows[label] = r
        print(f"{label:18s} box {box:3d} ranks {ranks}: wall {r['wall_s']:7.1f} s, {r['wall_s'] / iters:6.1f} s/iteration, "
              f"{r['wall_s'] / iters / n * 1000:6.1f} ms per particle-iteration, peak RSS (largest rank) "
              f"{r['peak_rss_mb']:6.1f} MB")
    t1 = rows["b24_np1"]["wall_s"]
    for label, ranks in (("b24_np3", 3), ("b24_np5", 5)):
        followers = ranks - 1
        t = rows[label]["wall_s"]
        print(f"parallel efficiency 1 -> {ranks} ranks ({followers} followers): speed-up {t1 / t:.2f}x, "
              f"efficiency per follower {t1 / t / followers:.2f} (on {_cores()} cores)")
    base = rows["b24_np5"]["wall_s"]
    for label in ("b24_np5_preread", "b24_np5_scratch"):
        print(f"{label}: {base / rows[label]['wall_s']:.2f}x the speed of reading the stacks every iteration")
    print("(shared-memory pages of --preread_images count in the RSS of every rank that reads them)")


def _cores():
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
