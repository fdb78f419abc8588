"""Benchmark sta_reconstruct_particle --mem (issue 13): peak RSS per rank against the limit.

Simulates a project with 512 x 512 tilt images (41 tilts), then runs the reconstruction at
box 96 and 192, on 1 rank and under ``mpirun -np 3``, for a few --mem values (the first of
each box must be refused) and without --mem.  Every rank reports its VmHWM when it ends
(``STA_REPORT_PEAK_RSS=FILE``, see sta.parallel.memory).  The baseline is the RSS of a
process that imported what a run imports (sta.parallel.memory.RUNTIME_MODULES; under
mpirun with MPI initialised); --mem bounds the growth above it.

Prints per rank: limit, baseline, peak RSS, the model's estimate, (peak - baseline) / limit.
Nothing is asserted.

Usage: python bench/bench_mem.py [--out DIR] [--particles 8] [--quick]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE  # noqa: E402

MIB = 2 ** 20
CASES = {96: [0.03, 0.2, 0.3, None], 192: [0.2, 0.45, 0.75, None]}
BASELINE = ("import sys; from sta.parallel.memory import RUNTIME_MODULES; import importlib; "
            "[importlib.import_module(m) for m in RUNTIME_MODULES]; from sta.parallel.mpi import world; "
            "c = world(); line = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0]; "
            "sys.stdout.write(f'<rank {c.Get_rank()} rss {int(line.split()[1])}>'); sys.stdout.flush()")


def baseline(ranks, cwd):
    """{rank: baseline RSS in bytes}."""
    pre = ["mpirun", "-np", str(ranks)] if ranks > 1 else []
    out = subprocess.run(pre + [sys.executable, "-c", BASELINE], cwd=cwd, capture_output=True, text=True, check=True)
    return {int(r): int(kb) * 1024 for r, kb in re.findall(r"<rank (\d+) rss (\d+)>", out.stdout)}


def run(box, ranks, mem, cwd, tag):
    peaks = Path(cwd) / f"peaks_{tag}.txt"
    if peaks.exists():
        peaks.unlink()
    env = dict(os.environ, STA_REPORT_PEAK_RSS=str(peaks))
    pre = ["mpirun", "-np", str(ranks)] if ranks > 1 else []
    cmd = pre + [sys.executable, "-m", "sta.commands.reconstruct_particle", "--i", "optimisation_set.star",
                 "--b", str(box), "--o", f"R_{tag}/", "--j", "2", "--j_out", "3", "--j_in", "1"]
    if mem is not None:
        cmd += ["--mem", str(mem)]
    t0 = time.time()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    text = res.stdout + res.stderr
    est = re.search(r"j_out (\d+), tilt series kept (\d+), estimated peak ([0-9.]+) GB", text)
    need = re.search(r"at least ([0-9.]+) GB per rank", text)
    got = {}
    if peaks.exists():
        for line in peaks.read_text().split("\n"):
            if line.strip():
                r, kb = line.split()
                got[int(r)] = int(kb) * 1024
    return res.returncode, wall, got, est, need, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "mem"))
    ap.add_argument("--particles", type=int, default=8, help="particles per tomogram (2 tomograms)")
    ap.add_argument("--quick", action="store_true", help="box 96 only")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    from sta.simulate.project import SimulationParameters, simulate_project

    t0 = time.time()
    simulate_project(SimulationParameters(n_tomograms=2, particles_per_tomogram=args.particles, box=48,
                                          pixel_size=4.0, image_size=(512, 512), tomo_size=(512, 512, 128),
                                          snr=0.1, seed=2, min_separation=0.1), str(out))
    print(f"project: 2 tomograms x {args.particles} particles, 41 tilts of 512 x 512 (one tilt series "
          f"{4 * 41 * 512 * 512 / MIB:.0f} MiB), simulated in {time.time() - t0:.0f} s; --j_out 3 --j_in 1 --j 2")
    base = {n: baseline(n, out) for n in (1, 3)}
    print("baseline RSS (imports, MPI initialised): " + ", ".join(
        f"{n} rank(s) {max(b.values()) / MIB:.0f} MiB" for n, b in base.items()))
    print(f"{'box':>4} {'np':>3} {'--mem':>6} {'rank':>4} {'limit':>7} {'base':>6} {'peak':>7} {'estim.':>7} "
          f"{'(peak-base)/limit':>18} {'plan':>12} {'wall':>6}")
    print(f"{'':>4} {'':>3} {'GB':>6} {'':>4} {'MiB':>7} {'MiB':>6} {'MiB':>7} {'MiB':>7} {'':>18} {'':>12} {'s':>6}")
    for box in ([96] if args.quick else [96, 192]):
        for ranks in (1, 3):
            for mem in CASES[box]:
                tag = f"b{box}_np{ranks}_m{mem}"
                code, wall, peaks, est, need, text = run(box, ranks, mem, out, tag)
                limit = f"{mem * 1024:7.0f}" if mem else f"{'-':>7}"
                if code != 0:
                    why = f"refused: needs {float(need.group(1)) * 1024:.0f} MiB" if need else text[-300:]
                    print(f"{box:4d} {ranks:3d} {mem if mem else '-':>6} {'all':>4} {limit} {'':>6} {'':>7} "
                          f"{'':>7} {'':>18} {why}")
                    continue
                plan = f"j{est.group(1)} keep{est.group(2)}" if est else "unlimited"
                estimate = f"{float(est.group(3)) * 1024:7.0f}" if est else f"{'-':>7}"
                for r in sorted(peaks):
                    b = base[ranks].get(r, max(base[ranks].values()))
                    ratio = f"{(peaks[r] - b) / (mem * 2 ** 30):18.2f}" if mem else f"{'-':>18}"
                    print(f"{box:4d} {ranks:3d} {mem if mem else '-':>6} {r:4d} {limit} {b / MIB:6.0f} "
                          f"{peaks[r] / MIB:7.0f} {estimate} {ratio} {plan:>12} {wall:6.1f}")


if __name__ == "__main__":
    main()
