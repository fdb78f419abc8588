"""Peak RSS per rank of sta_refine at box 128 and 256, next to the figure expected from the
array sizes.

A synthetic project (no simulation): a smooth reference of N³ voxels and a few 3D
pseudo-subtomograms (the reference plus noise, no CTF), refined with ``--skip_align --iter 1``:
iteration 1 at the ``--ini_high`` image size, then the final iteration at the full box, where the
sums, the maps and the reconstruction are largest.  Every rank reports its peak RSS
(``ru_maxrss``) on exit; the interpreter-and-imports baseline is measured the same way.

Expected figures (bytes, box N, final iteration, D = 2N+3 the padded accumulator side,
A = D²·(D//2+1) its voxels):
  sums of one half       24·A                          (complex128 data + float64 weight)
  map                    8·N³                          (float64)
  projector table        8·(2N−1)²·(N+1)               (complex64, SliceSampler: not on the leader)
  projector building     192·N³ transient              (padded FFT of 2N³ and the table's copies)
  particle volume        4·N³ + 2·16·N²(N/2+1)         (float32 and its masked/unmasked spectra)
  reconstruction         130·A + 192·N³ transient      (fourier_insert.reconstruct's arrays over the
                                                        accumulator + the padded inverse FFT)
Leader: two halves' sums + two maps (no projectors), then the reconstruction; follower: one
half's sums per --j thread + its map and table, and the projector build of each model it
receives; one rank: both halves' models and sums.  What the measurement shows above these is
the kernels' per-particle working set (3D insertion, slices) and the allocator's free lists.

Usage: python bench/bench_refine_mem.py [--boxes 128 256] [--ranks 1 3] [--particles 4] [--j 1]
       (PYTHONPATH=<before>/src python bench/bench_refine_mem.py ... measures an older tree)
Prints numbers, asserts nothing.  Needs about 6 GB free at box 256 per rank (it says when not).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

MB = 2 ** 20
WRAPPER = r"""
import os, resource, sys
from sta.commands import refine
from sta.parallel.mpi import launched_rank
code = refine.main(sys.argv[1:])
print(f"PEAK_RSS rank {launched_rank()} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB", flush=True)
sys.exit(code)
"""
BASELINE = r"""
import importlib, resource
import numpy
for name in ("sta.commands.refine", "sta.commands._refine_setup", "sta.workflows.refine.loop",
             "sta.workflows.refine.files", "sta.workflows.refine.data", "sta.parallel.image_store",
             "sta.io.particles", "sta.io.tomograms", "sta.io.mrc"):
    try:
        importlib.import_module(name)
    except ImportError:   # an older layout (PYTHONPATH=<before>/src)
        pass
from sta.backend import get_fft
get_fft()
print(f"PEAK_RSS rank 0 {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")
"""


def write_project(root, n, n_particles, pixel_size=4.0, seed=0):
    """ref.mrc and particles.star with ``n_particles`` N³ subtomograms (halves alternate)."""
    from sta.io.mrc import write_mrc

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:n, :n, :n]
    c = n // 2
    ref = np.zeros((n, n, n), dtype=np.float32)
    for _ in range(12):   # Gaussian blobs inside a third of the box
        p = c + rng.uniform(-n / 6, n / 6, 3)
        s = n / rng.uniform(14, 24)
        ref += np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * s * s)).astype(np.float32)
    write_mrc(os.path.join(root, "ref.mrc"), ref, pixel_size)
    os.makedirs(os.path.join(root, "Subtomograms"), exist_ok=True)
    rows = []
    for k in range(n_particles):
        name = f"Subtomograms/{k + 1}_data.mrc"
        vol = ref + rng.normal(0, ref.std(), ref.shape).astype(np.float32)
        write_mrc(os.path.join(root, name), vol, pixel_size)
        rows.append(f"TS_01 TS_01/{k + 1} 0 0 0 0 0 0 0 0 0 {k % 2 + 1} 1 {name}")
    star = ["", "data_general", "", "_rlnTomoSubTomosAre2DStacks 0", "", "data_optics", "", "loop_",
            "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2", "_rlnVoltage #3", "_rlnSphericalAberration #4",
            "_rlnAmplitudeContrast #5", "_rlnTomoTiltSeriesPixelSize #6", "_rlnCtfDataAreCtfPremultiplied #7",
            "_rlnImageDimensionality #8", "_rlnTomoSubtomogramBinning #9", "_rlnImagePixelSize #10",
            "_rlnImageSize #11", f"1 optics1 300 2.7 0.1 {pixel_size} 1 3 1 {pixel_size} {n}", "",
            "data_particles", "", "loop_", "_rlnTomoName #1", "_rlnTomoParticleName #2",
            "_rlnCenteredCoordinateXAngst #3", "_rlnCenteredCoordinateYAngst #4", "_rlnCenteredCoordinateZAngst #5",
            "_rlnAngleRot #6", "_rlnAngleTilt #7", "_rlnAnglePsi #8", "_rlnOriginXAngst #9", "_rlnOriginYAngst #10",
            "_rlnOriginZAngst #11", "_rlnRandomSubset #12", "_rlnOpticsGroup #13", "_rlnImageName #14"] + rows + [""]
    with open(os.path.join(root, "particles.star"), "w") as fh:
        fh.write("\n".join(star))


def expected(n, ranks, threads):
    """{role: (resident MB, transient MB, text)} from the array sizes of the final iteration."""
    d = 2 * n + 3
    acc = d * d * (d // 2 + 1)                 # accumulator voxels
    sums = 24 * acc                            # complex128 data + float64 weight
    vol = 8 * n ** 3
    table = 8 * (2 * n - 1) ** 2 * (n + 1)
    build = 192 * n ** 3                       # FourierProjector + SliceSampler copies
    particle = 4 * n ** 3 + 2 * 16 * n * n * (n // 2 + 1)
    recon = 130 * acc + 192 * n ** 3           # fourier_insert.reconstruct's arrays + the padded inverse FFT
    out = {}
    if ranks == 1:
        out["single rank"] = (2 * vol + 2 * table + max(threads * (sums + particle), 2 * sums), max(recon, build),
                              f"resident: 2 maps {2 * vol / MB:.0f} + 2 tables {2 * table / MB:.0f} + sums "
                              f"max({threads}x{sums / MB:.0f} + particle, 2x{sums / MB:.0f}); transient: "
                              f"reconstruction {recon / MB:.0f} | projector build {build / MB:.0f}")
    else:
        out["leader"] = (2 * sums + 2 * vol, recon, f"resident: 2 sums {2 * sums / MB:.0f} + 2 maps {2 * vol / MB:.0f}; "
                         f"transient: reconstruction {recon / MB:.0f}")
        out["follower"] = (vol + table + threads * (sums + particle), build,
                           f"resident: map {vol / MB:.0f} + table {table / MB:.0f} + {threads}x(sums {sums / MB:.0f} + "
                           f"particle {particle / MB:.0f}); transient: projector build {build / MB:.0f}")
    return {k: (r / MB, t / MB, text) for k, (r, t, text) in out.items()}


def run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    peaks = {int(r): float(v) for r, v in re.findall(r"PEAK_RSS rank (\d+) ([\d.]+) MB", res.stdout)}
    if res.returncode != 0:
        print(f"    FAILED (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    return peaks


def available_mb():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--j", type=int, default=1)
    ap.add_argument("--keep", default="", help="keep the projects under this folder")
    args = ap.parse_args()
    env_py = sys.executable
    base = run([env_py, "-c", BASELINE], cwd=".")[0]
    print(f"baseline (interpreter + sta_refine's imports): {base:.0f} MB per process")
    for n in args.boxes:
        root = args.keep and os.path.join(args.keep, f"box{n}") or tempfile.mkdtemp(prefix=f"refine_mem_{n}_")
        os.makedirs(root, exist_ok=True)
        write_project(root, n, args.particles)
        refine_args = ["--o", "R/run", "--auto_refine", "--split_random_halves", "--i", "particles.star", "--ref",
                       "ref.mrc", "--particle_diameter", str(0.8 * n * 4.0), "--ini_high", str(4.0 * 8),
                       "--skip_align", "--iter", "1", "--random_seed", "1", "--j", str(args.j)]
        for ranks in args.ranks:
            exp = expected(n, ranks, args.j)
            per_rank = {role: r + t for role, (r, t, _) in exp.items()}
            need = (per_rank.get("single rank", 0) + per_rank.get("leader", 0)
                    + (ranks - 1) * per_rank.get("follower", 0) + ranks * base)
            if need > 0.6 * available_mb():
                print(f"box {n}, {ranks} rank(s): skipped, expected ~{need:.0f} MB (resident + transient, all ranks) "
                      f"and {available_mb():.0f} MB are available")
                continue
            shutil.rmtree(os.path.join(root, "R"), ignore_errors=True)
            cmd = [env_py, "-c", WRAPPER] + refine_args
            if ranks > 1:
                cmd = ["mpirun", "-np", str(ranks)] + cmd
            peaks = run(cmd, root)
            print(f"box {n}, {ranks} rank(s), --j {args.j}, {args.particles} particles: peak RSS (MB), above the "
                  "baseline, expected above it (resident + transient):")
            for r in sorted(peaks):
                role = "single rank" if ranks == 1 else ("leader" if r == 0 else "follower")
                res, tr, text = exp[role]
                print(f"  rank {r} {role:11s} {peaks[r]:7.0f} {peaks[r] - base:7.0f} {res + tr:7.0f}   ({text})")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
