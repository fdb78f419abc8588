"""Benchmark sta_reconstruct_particle (issue 3): wall time and peak RSS.

Simulates a project of realistic size (several tomograms, hundreds of particles, 41 tilts),
then runs the reconstruction at --j 1 and --j 2 (particles processed concurrently), on 1 and
3 MPI ranks, and with --mem set below the unlimited peak.  Also times sta on RELION's
conformance command lines and prints the ratio to RELION's own wall times (timings.tsv).

Prints ratios from one run; nothing is asserted.

Usage: python bench/bench_reconstruct.py [--out DIR] [--tomograms 4] [--particles 75] [--box 64]
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, SHARED, measure  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "reconstruct"))
    ap.add_argument("--tomograms", type=int, default=4)
    ap.add_argument("--particles", type=int, default=75)
    ap.add_argument("--box", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model = SHARED / "data" / "models" / "job080.cif"
    sim = ["sta_simulate", "--o", str(out), "--model", str(model) if model.exists() else "phantom",
           "--n_tomograms", str(args.tomograms), "--particles", str(args.particles), "--box", str(args.box),
           "--angpix", "3", "--image_size", "512,512", "--tomo_size", "512,512,128", "--min_separation", "0.1"]
    r = measure(sim, None)
    n = args.tomograms * args.particles
    print(f"project: {args.tomograms} tomograms x {args.particles} particles = {n}, box {args.box}, 41 tilts "
          f"(simulated in {r['wall_s']:.1f} s)")
    base = ["sta_reconstruct_particle", "--i", "optimisation_set.star", "--b", str(args.box), "--j_in", "1"]
    rows = []
    for label, pre, extra in [("np1 j1", [], ["--j", "1", "--j_out", "1"]),
                              ("np1 j2", [], ["--j", "2", "--j_out", "2"]),
                              ("np3 j1", ["mpirun", "-np", "3"], ["--j", "1", "--j_out", "1"]),
                              ("np1 j4 (unlimited)", [], ["--j", "4", "--j_out", "4"])]:
        r = measure(pre + base + extra + ["--o", f"R_{label.split()[0]}_{label.split()[1]}/"], out)
        rows.append((label, r))
        print(f"{label:22s} wall {r['wall_s']:7.2f} s  {n / r['wall_s']:7.1f} particles/s  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MB")
    unlimited = rows[-1][1]["peak_rss_mb"]
    acc_gb = 2 * args.box ** 2 * (args.box // 2 + 1) * 24 / 2 ** 30
    mem = max(1.5 * acc_gb, 0.3)  # --mem bounds the whole rank (at least its fixed part)
    r = measure(base + ["--j", "4", "--j_out", "4", "--mem", f"{mem:.4f}", "--o", "R_mem/"], out)
    print(f"{'np1 j4 --mem %.3f' % mem:22s} wall {r['wall_s']:7.2f} s  peak RSS {r['peak_rss_mb']:7.1f} MB "
          f"(unlimited {unlimited:.1f} MB; one accumulator pair {acc_gb * 1024:.1f} MB)")
    t = {label: r["wall_s"] for label, r in rows}
    print(f"ratios: j2/j1 speed-up {t['np1 j1'] / t['np1 j2']:.2f}x, 3 ranks/1 rank speed-up "
          f"{t['np1 j1'] / t['np3 j1']:.2f}x, --mem peak / unlimited peak {r['peak_rss_mb'] / unlimited:.2f}")
    relion_vs_sta(out)


def relion_vs_sta(out):
    conf = SHARED / "data" / "relion-reference" / "conformance"
    timings = conf / "timings.tsv"
    if not timings.exists():
        return
    print("RELION conformance commands (RELION wall from timings.tsv, 2 cores):")
    for line in timings.read_text().splitlines():
        label, wall, rss, code, cmd = line.split("\t")
        if not label.startswith("reconstruct") or "mpi" in label:
            continue
        argv = cmd.split()
        argv[0] = "sta_reconstruct_particle"
        o = argv.index("--o")
        argv[o + 1] = str(out / "conf" / label) + "/"
        r = measure(argv, conf)
        print(f"  {label:22s} RELION {float(wall):5.2f} s / {int(rss) / 1024:6.1f} MB   sta {r['wall_s']:5.2f} s / "
              f"{r['peak_rss_mb']:6.1f} MB   time ratio sta/RELION {r['wall_s'] / float(wall):.2f}")


if __name__ == "__main__":
    main()
