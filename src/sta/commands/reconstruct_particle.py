"""Reconstruct a particle map straight from the tilt series (relion_tomo_reconstruct_particle).

Fourier-space back-projection of CTF-weighted tilt images of every particle into two
half-set sums (``rlnRandomSubset``), then symmetrisation, gridding and CTF correction.
Writes ``half1.mrc``, ``half2.mrc``, ``merged.mrc`` (+ ``*_full.mrc`` with ``--crop``),
``data_*.mrc`` and ``weight_*.mrc`` into ``--o``, and ``optimisation_set.star`` with the half
maps as references (the output node RELION 5's GUI declares).  Under ``mpirun`` the particles are split
into batches handed out dynamically to all ranks; rank 0 writes the outputs.

``--mem`` is a bound per MPI rank on everything the run holds beyond the interpreter's
baseline (tilt series, accumulators, working buffers, the final maps): --j_out and the
tilt series kept in memory are lowered to fit, and a limit that cannot be met is refused
before any work (RELION's --mem counts the accumulators only).

Example:
  mpirun -np 3 sta_reconstruct_particle --i optimisation_set.star --b 48 --bin 1 --sym C6 --o Reconstruct/job001/
"""

import logging
import os
import sys
import time

from sta.commands import _cli
from sta.commands._tomo_inputs import add_input_args, load_inputs
from sta.errors import InputError
from sta.io.atomic import output_set, remove_stale

log = logging.getLogger("sta.reconstruct_particle")
PROG = "sta_reconstruct_particle"


def add_args(parser):
    add_input_args(parser)
    g = parser.add_argument_group("Reconstruction options")
    g.add_argument("--b", type=_cli.even_box, required=True, help="box size (binned pixels)")
    g.add_argument("--o", required=True, help="output directory")
    g.add_argument("--crop", type=int, default=-1, help="size of the (additionally written) cropped map")
    g.add_argument("--whiten", action="store_true", help="whiten the noise (not implemented: refused)")
    g.add_argument("--no_ctf", action="store_true", help="do not apply CTFs")
    g.add_argument("--bin", type=_cli.positive_float, default=1.0, help="binning factor")
    g.add_argument("--taper", type=_cli.nonneg_float, default=10.0, help="taper against the sphere by this many pixels")
    g.add_argument("--SNR", type=float, default=-1.0, help="assumed SNR for Wiener division (<= 0: heuristic)")
    g.add_argument("--sym", default="C1", help="point-group symmetry")
    g.add_argument("--nr_helical_asu", type=_cli.positive_int, default=1, help="helical units (only 1 supported)")
    g.add_argument("--helical_rise", type=float, default=0.0, help="helical rise (Å)")
    g.add_argument("--helical_twist", type=float, default=0.0, help="helical twist (deg)")
    g.add_argument("--mem", type=float, default=-1.0,
                   help="max memory per MPI rank (GB = 2^30 bytes) beyond the interpreter's ~0.14 GB: tilt series, "
                        "accumulators, buffers and final maps; lowers --j_out and the tilt series kept, refuses a "
                        "limit that cannot be met (sta deviation: RELION's --mem counts the accumulators only)")
    g.add_argument("--only_do_unfinished", action="store_true", help="skip the job when its outputs exist")
    g.add_argument("--no_backup", action="store_true", help="accepted (sta writes no restart files)")
    g.add_argument("--no_circle_crop", action="store_true", help="do not crop the 2D images to a circle")
    g.add_argument("--j", type=_cli.positive_int, default=6, help="threads (FFT and whole-volume steps)")
    g.add_argument("--j_in", type=_cli.positive_int, default=3, help="threads inside one particle (FFT threads)")
    g.add_argument("--j_out", type=_cli.positive_int, default=2, help="particles processed concurrently per rank")
    g.add_argument("--no_recon", action="store_true", help="only back-project (benchmarking)")
    g.add_argument("--cutoff_fract", type=float, default=0.01, help="ignore shells whose dose weight is below this")
    d = parser.add_argument_group("Display options")
    d.add_argument("--theme", default="classic", help="accepted for RELION compatibility")


def _outputs(args, has_halves):
    tags = (["half1", "half2"] if has_halves else []) + ["merged"]
    return [os.path.join(args.o, f"{t}.mrc") for t in tags]


def _body(args, comm):
    from sta.backend import set_fft_threads
    from sta.geometry.symmetry import parse_symmetry
    from sta.workflows import reconstruct_particle as wf

    if args.whiten:
        raise InputError("--whiten is not implemented in this version of sta_reconstruct_particle")
    if args.nr_helical_asu > 1:
        raise InputError("helical symmetry (--nr_helical_asu > 1) is not implemented in this version")
    parse_symmetry(args.sym)  # validate early, on every rank
    if args.crop > args.b:
        raise InputError(f"--crop {args.crop} is larger than the box --b {args.b}")
    if args.crop > 0 and args.crop % 2:
        raise InputError(f"--crop {args.crop}: expected an even size (odd boxes are not supported)")
    if os.path.exists(args.o) and not os.path.isdir(args.o):
        raise InputError(f"--o {args.o}: exists and is not a directory")
    params = wf.ReconstructParams(box=args.b, crop=args.crop, binning=args.bin, symmetry=args.sym, snr=args.SNR,
                                  taper=args.taper, do_ctf=not args.no_ctf, circle_crop=not args.no_circle_crop,
                                  cutoff_fract=args.cutoff_fract)
    set_fft_threads(args.j_in)
    t0 = time.time()
    opt, tomograms, particles, trajectories = load_inputs(args)
    if comm.Get_rank() == 0:
        remove_stale(args.o)  # temporary files of a killed earlier run
    has_halves = "rlnRandomSubset" in particles.df.columns
    if not has_halves and comm.Get_rank() == 0:
        log.warning("WARNING: %s has no rlnRandomSubset: all particles go into one half (only merged.mrc "
                    "is written)", particles.path)
    if args.only_do_unfinished and all(os.path.exists(p) for p in _outputs(args, has_halves)):
        log.info(" --only_do_unfinished: the outputs already exist in %s, nothing to do", args.o)
        if comm.Get_rank() == 0 and not os.path.exists(os.path.join(args.o, "optimisation_set.star")):
            _write_optimisation_set(args, opt, has_halves)
        return
    plan = _memory_plan(args, comm, tomograms, particles, params)  # before any heavy work
    t_read = time.time() - t0
    sums = _backproject(args, comm, tomograms, particles, trajectories, params, plan)
    t_bp = time.time() - t0 - t_read
    if comm.Get_rank() != 0 or args.no_recon:
        return
    set_fft_threads(args.j)
    pixel_size = params.binning * tomograms[particles.tomo_name(0)].pixel_size
    with output_set(last=[os.path.join(args.o, "optimisation_set.star")]):  # all maps together, or none
        _finalise_and_write(args, sums, params, has_halves, pixel_size)
        _write_optimisation_set(args, opt, has_halves)
    log.info(" Timing: reading %.2f s, back-projection %.2f s, reconstruction and writing %.2f s",
             t_read, t_bp, time.time() - t0 - t_read - t_bp)


def _memory_plan(args, comm, tomograms, particles, params):
    """--j_out and the tilt series kept per rank (:func:`sta.parallel.memory.plan_memory`)."""
    from sta.parallel import memory
    from sta.workflows.reconstruct_particle import TILT_GROUP, max_entries, tilt_series_shape

    shapes = [tilt_series_shape(tomograms[name]) for name in sorted(set(particles.tomo_names()))]
    f, h, w, single = max(shapes, key=lambda t: t[0] * t[1] * t[2])
    sizes = memory.Sizes(box=params.box, box0=params.box0, n_tilts=f, height=h, width=w,
                         single_stack=any(t[3] for t in shapes), crop=params.crop, tilt_group=TILT_GROUP,
                         max_entries=max_entries(params.box),
                         metadata=int(particles.df.memory_usage(deep=True).sum()))
    n_ranks = comm.Get_size()
    limit = int(args.mem * memory.GB) if args.mem > 0 else 0
    try:
        plan = memory.plan_memory(limit, sizes, args.j_out, n_ranks)
    except memory.MemoryTooSmall as err:
        if comm.Get_rank() != 0:
            comm.Barrier()  # rank 0 reports and ends the job
        raise InputError(f"--mem {args.mem:g} GB is too small for box {args.b}: at least {err.needed / memory.GB:.3f} "
                         f"GB per rank is needed (--j_out 1, one tilt series of {f} x {w} x {h} kept: "
                         f"{memory.describe(sizes, 1, 1, n_ranks)} GB)") from None
    if limit:
        memory.return_freed_memory()
        log.info(" --mem %g GB per rank: j_out %d, tilt series kept %d, estimated peak %.3f GB", args.mem,
                 plan.j_out, plan.keep, plan.estimate / memory.GB)
        if plan.j_out < args.j_out:
            log.info(" --j_out reduced from %d to %d to fit --mem", args.j_out, plan.j_out)
    return plan


def _backproject(args, comm, tomograms, particles, trajectories, params, plan):
    from sta.kernels.backproject import HalfGrid
    from sta.parallel.batches import TiltCache, make_batches, run_batches
    from sta.workflows.reconstruct_particle import HalfSums, backproject_particles
    from sta.workflows.tilt_data import TiltData

    cache = TiltCache(lambda name: TiltData(tomograms[name]), keep=plan.keep)
    grid = HalfGrid(params.box)
    batches = make_batches(particles.indices_by_tomogram(), comm.Get_size() * plan.j_out)

    def process(state, batch):
        name, idx = batch
        backproject_particles(cache.get(name), particles, idx, params, state, trajectories, grid)

    states = run_batches(comm, batches, process, lambda: HalfSums(params.box), n_threads=plan.j_out,
                         label="Back-projected", is_leader=comm.Get_rank() == 0,
                         check_abort=lambda: _cli.check_abort(args.pipeline_control))
    del cache, process  # the tilt series
    sums = states.pop(0)
    while states:  # each thread's accumulators are freed once added
        sums.add(states.pop())
    _reduce(comm, sums.data)
    _reduce(comm, sums.weight)
    return sums


def _reduce(comm, array):
    """Sum ``array`` over the ranks onto rank 0, a few MB at a time (MPI's temporary
    buffers stay small)."""
    from sta.parallel.memory import REDUCE_CHUNK
    from sta.parallel.mpi import reduce_sum

    if comm.Get_size() == 1:
        return
    flat = array.reshape(-1)
    step = max(REDUCE_CHUNK // flat.itemsize, 1)
    for start in range(0, flat.size, step):
        reduce_sum(comm, flat[start:start + step])


def _finalise_and_write(args, sums, params, has_halves, pixel_size):
    """Make and write the maps one at a time (:func:`~sta.workflows.reconstruct_particle.finalise_outputs`)."""
    from sta.io.mrc import write_mrc
    from sta.parallel.memory import fft_plans_not_kept
    from sta.workflows.reconstruct_particle import finalise_outputs

    names = {"data": "data_{}.mrc", "weight": "weight_{}.mrc", "full": "{}_full.mrc", "map": "{}.mrc"}
    maps = []
    with fft_plans_not_kept():
        for kind, tag, vol in finalise_outputs(sums, params, has_halves):
            write_mrc(os.path.join(args.o, names[kind].format(tag)), vol, pixel_size)
            del vol
            if kind == "map":
                maps.append(f"{tag}.mrc")
    log.info(" Wrote %s to %s", ", ".join(maps), args.o)


def _write_optimisation_set(args, opt, has_halves):
    """``<o>/optimisation_set.star``: the input particle, tomogram and trajectory sets with
    ``half1.mrc``/``half2.mrc`` as ``rlnTomoReferenceMap1/2File`` (RELION 5's GUI declares
    this output node; the program itself writes none, spec §5)."""
    if has_halves:
        opt.ref1, opt.ref2 = os.path.join(args.o, "half1.mrc"), os.path.join(args.o, "half2.mrc")
    else:
        opt.ref1 = opt.ref2 = None
    opt.fsc = None  # an FSC of earlier maps does not describe these
    path = os.path.join(args.o, "optimisation_set.star")
    opt.write(path, only_tomo_files=False)
    log.info(" Wrote %s", path)


def main(argv=None):
    from sta.parallel.threads import limit_threads_for_mpi

    limit_threads_for_mpi(sys.argv[1:] if argv is None else argv, option=None)
    from sta.parallel.memory import report_peak_rss
    from sta.parallel.mpi import world

    comm = world()
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    try:
        return _cli.run(PROG, parser, lambda args: _body(args, comm), argv, note_dir=lambda a: a.o, comm=comm)
    finally:
        report_peak_rss(comm.Get_rank())  # STA_REPORT_PEAK_RSS test hook


if __name__ == "__main__":
    raise SystemExit(main())
