"""Speed of sta_refine's orientation searches (issue 14): seconds per particle-iteration of the
E-step for a global (HEALPix order 2) and a local iteration at box 48 and 96, ``--j 1`` vs
``--j 2`` on one rank, before vs after.

"Before" is the same command run with ``PYTHONPATH=<before>/src`` and ``<before>/bin/sta_refine``
(default ``../base``, a worktree of the code before this session), "after" with this tree.
Both sides of a configuration run back to back (interleaved, ``--repeat`` times; the fastest
run counts), so a loaded machine slows both alike.

Simulates the HIV-1 capsid hexamer (C6, one tomogram, ``--particles`` particles, poses perturbed
by 10° / 5 Å), extracts 2D stacks at 4 Å (box 48 and box 96, ``sta_subtomo --stack2d``) and
reconstructs the references.  Each measurement runs ``sta_refine --auto_refine`` and stops it
when the E-step of iteration 1 ends:

* global: ``--healpix_order 2 --auto_local_healpix_order 4`` (iteration 1 searches all
  orientations, 7.5°);
* local: ``--healpix_order 3 --auto_local_healpix_order 3`` (local searches from the start,
  as bench_refine.py does).

The E-step time is taken from the log: from the iteration header to the ``Expectation ...
(100%)`` line (time stamps of the lines as they arrive); the set-up before it (start-up,
reading, reference scaling) is printed separately and not counted.  The per-particle figure
includes everything the E-step does per particle (reading, masking, both passes, the M-step
sums, RELION's accuracy estimate, which with so few particles every particle gets), and the
reference slices a global search makes once per tilt image and half set and shares between
the particles (so more particles per tomogram lower it further).

``--profile``: instead, cProfile the E-step of iteration 1 (``--j 1``; the after tree, or
``--profile_side before``) at every box and mode and print the top entries.

Prints numbers; asserts nothing.

Usage: python bench/bench_refine_speed.py [--out DIR] [--particles 8] [--boxes 48 96]
       [--modes global local] [--j 1 2] [--repeat 1] [--before DIR] [--after DIR]
       [--blas_threads N] [--profile [--profile_side before]]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, SHARED, measure  # noqa: E402

ROOT = HERE.parent
MODES = {"global": ["--healpix_order", "2", "--auto_local_healpix_order", "4"],
         "local": ["--healpix_order", "3", "--auto_local_healpix_order", "3"]}


def refine_args(box, mode, j, out):
    return ["--o", out, "--auto_refine", "--split_random_halves", "--i", f"Extract/b{box}/particles.star",
            "--tomograms", "tomograms.star", "--ref", f"Reconstruct/b{box}/merged.mrc", "--ini_high", "30",
            "--ctf", "--particle_diameter", "150", "--flatten_solvent", "--zero_mask", "--offset_range", "3",
            "--offset_step", "1", "--sym", "C6", "--iter", "1", "--random_seed", "1", "--j", str(j)] + MODES[mode]


def side_env(tree, blas_threads):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(tree) / "src")
    env["PYTHONUNBUFFERED"] = "1"        # the log (stdout) line by line, as it happens
    if blas_threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(blas_threads)
    return env


_HEADER = "Auto-refine: Offset search range"
_DONE = re.compile(r"Expectation: (\d+)/(\d+) .*\(100%\)")


def _cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc, or NaN."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def estep_seconds(tree, args, cwd, env, timeout):
    """Run sta_refine, stop it after iteration 1's E-step: (set-up s, E-step wall s, E-step CPU s)."""
    cmd = [sys.executable, str(Path(tree) / "bin" / "sta_refine")] + args
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    t_head = t_end = None
    c_head = c_end = float("nan")
    tail = []
    try:
        for line in proc.stdout:
            now = time.time()
            tail = (tail + [line])[-20:]
            if t_head is None:
                if _HEADER in line:
                    t_head, c_head = now, _cpu_seconds(proc.pid)
            elif _DONE.search(line) or "Expectation" not in line:
                t_end, c_end = now, _cpu_seconds(proc.pid)
                break
            if now - t0 > timeout:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    if t_head is None or t_end is None:
        raise SystemExit(f"no E-step timing from {' '.join(cmd)} in {cwd}:\n{''.join(tail)}")
    return t_head - t0, t_end - t_head, c_end - c_head


def setup(out, particles):
    if out.exists():
        shutil.rmtree(out)
    model = SHARED / "data" / "models" / "job080.cif"
    measure(["sta_simulate", "--o", str(out), "--model", str(model), "--truth_sym", "C6", "--n_tomograms", "1",
             "--particles", str(particles), "--perturb-angles", "10", "--perturb-offsets", "5"], None)
    for box in (48, 96):
        measure(["sta_subtomo", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin", "1",
                 "--stack2d", "--o", f"Extract/b{box}/"], out)
        measure(["sta_reconstruct_particle", "--i", "optimisation_set_perturbed.star", "--b", str(box), "--bin",
                 "1", "--o", f"Reconstruct/b{box}/"], out)


def n_particles(out, box):
    from sta.io.star import read_star

    blocks = read_star(out / f"Extract/b{box}/particles.star")
    return len(blocks["particles"])


def profile_child(argv):
    """(run with the tree's PYTHONPATH) cProfile RefineEngine.expect/accuracy in iteration 1."""
    import cProfile
    import pstats

    top = int(argv[0])
    rest = argv[1:]
    try:
        from sta.workflows.refine import engine as eng
    except ImportError:                      # the code before issue 14 (one module)
        from sta.workflows import refine as eng

    prof = cProfile.Profile()
    t_all = [0.0]

    def wrap(name):
        orig = getattr(eng.RefineEngine, name)

        def inner(self, *a, **k):
            if self.iteration > 1:
                st = pstats.Stats(prof, stream=sys.stderr)
                print(f"E-step of iteration 1 (expect + accuracy): {t_all[0]:.2f} s under the profiler",
                      file=sys.stderr)
                st.sort_stats("tottime").print_stats(top)
                st.sort_stats("cumtime").print_stats(top)
                sys.stderr.flush()
                os._exit(0)
            t = time.time()
            prof.enable()
            try:
                return orig(self, *a, **k)
            finally:
                prof.disable()
                t_all[0] += time.time() - t
        setattr(eng.RefineEngine, name, inner)

    wrap("expect")
    wrap("accuracy")
    from sta.commands.refine import main

    main(rest)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "refine_speed"))
    ap.add_argument("--particles", type=int, default=8, help="particles of the one simulated tomogram")
    ap.add_argument("--boxes", type=int, nargs="+", default=[48, 96], choices=(48, 96))
    ap.add_argument("--modes", nargs="+", default=["global", "local"], choices=tuple(MODES))
    ap.add_argument("--j", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="before/after pairs per configuration (fastest counts)")
    ap.add_argument("--before", default=str(ROOT.parent / "base"), help="tree of the 'before' code (src/, bin/)")
    ap.add_argument("--after", default=str(ROOT), help="tree of the 'after' code (src/, bin/)")
    ap.add_argument("--blas_threads", type=int, default=0,
                    help="set OPENBLAS/OMP/MKL_NUM_THREADS for both sides (0: leave the environment as it is)")
    ap.add_argument("--skip_setup", action="store_true", help="reuse the project in --out")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--profile", action="store_true", help="cProfile the E-step of iteration 1 (--j 1)")
    ap.add_argument("--profile_side", choices=("after", "before"), default="after", help="tree --profile runs")
    ap.add_argument("--top", type=int, default=25, help="entries printed per profile")
    ap.add_argument("--_profile_child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._profile_child is not None:
        profile_child(args._profile_child)
        return
    out = Path(args.out).resolve()
    if not args.skip_setup:
        t = time.time()
        setup(out, args.particles)
        print(f"set-up (simulate, extract, reconstruct): {time.time() - t:.1f} s")
    sides = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for name, tree in sides.items():
        if not (tree / "bin" / "sta_refine").exists():
            raise SystemExit(f"--{name} {tree}: no bin/sta_refine there")
    counts = {box: n_particles(out, box) for box in args.boxes}
    blas = f"{args.blas_threads} BLAS threads" if args.blas_threads else "BLAS threads as the environment sets"
    print(f"project: 1 tomogram, 41 tilts, C6, {counts} particles per box; one rank, {blas}, "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f}")
    if args.profile:
        tree = sides[args.profile_side]
        for box in args.boxes:
            for mode in args.modes:
                print(f"\n===== profile: box {box}, {mode} iteration, --j 1 ({args.profile_side}: {tree})")
                sys.stdout.flush()
                cmd = [sys.executable, __file__, "--_profile_child", str(args.top)] + refine_args(
                    box, mode, 1, f"Refine/profile_{box}_{mode}/run")
                subprocess.run(cmd, cwd=out, env=side_env(tree, args.blas_threads),
                               stdout=subprocess.DEVNULL)      # the refine's log; the profile comes on stderr
        return
    rows = []
    for box in args.boxes:
        for mode in args.modes:
            for j in args.j:
                best = {}
                for rep in range(args.repeat):
                    for name, tree in sides.items():
                        label = f"{name}_b{box}_{mode}_j{j}_{rep}"
                        s, e, c = estep_seconds(tree, refine_args(box, mode, j, f"Refine/{label}/run"), out,
                                                side_env(tree, args.blas_threads), args.timeout)
                        if name not in best or e < best[name][1]:
                            best[name] = (s, e, c)
                        shutil.rmtree(out / "Refine" / label, ignore_errors=True)
                n = counts[box]
                b, a = best["before"][1] / n, best["after"][1] / n
                cb, ca = best["before"][2] / n, best["after"][2] / n
                rows.append((box, mode, j, b, a, cb, ca))
                print(f"box {box:3d} {mode:6s} --j {j}: before {b:7.3f} s  after {a:7.3f} s per particle-iteration  "
                      f"({b / a:5.2f}x; CPU {cb:.3f} / {ca:.3f} s)   set-up {best['before'][0]:5.1f} / "
                      f"{best['after'][0]:5.1f} s", flush=True)
    print("\nseconds per particle-iteration of the E-step (iteration 1, one rank): wall (CPU = user + system of "
          "all threads)")
    print(f"{'box':>4} {'search':7} {'--j':>3} {'before':>9} {'after':>9} {'before/after':>13} {'j1/jN after':>12} "
          f"{'CPU before':>11} {'CPU after':>10} {'CPU ratio':>10}")
    for box, mode, j, b, a, cb, ca in rows:
        j1 = [r for r in rows if r[0] == box and r[1] == mode and r[2] == 1]
        scale = f"{j1[0][4] / a:12.2f}" if j1 else f"{'':12}"
        print(f"{box:4d} {mode:7} {j:3d} {b:9.3f} {a:9.3f} {b / a:13.2f} {scale} {cb:11.3f} {ca:10.3f} {cb / ca:10.2f}")


if __name__ == "__main__":
    main()
