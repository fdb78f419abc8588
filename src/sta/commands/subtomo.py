"""Extract pseudo-subtomograms (relion_tomo_subtomo).

For every particle and every tilt in which it is visible, cut out the particle, multiply it
by its CTF and dose weight and write either a 2D stack (``--stack2d``, RELION 5's default:
``<o>Subtomograms/<tomo>/<n>_stack2d.mrcs``) or a 3D pseudo-subtomogram
(``<n>_data.mrc`` + ``<n>_weights.mrc``).  Writes ``<o>particles.star``,
``<o>optimisation_set.star`` and, when particles were dropped from a set with
trajectories, ``<o>motion.star``.  Under ``mpirun`` particle batches are handed out to all
ranks; rank 0 writes the STAR files.

Example:
  mpirun -np 4 sta_subtomo --i optimisation_set.star --b 48 --bin 2 --stack2d --float16 --o Extract/job005/
"""

import logging
import os
import sys
import time

from sta.commands import _cli
from sta.commands._tomo_inputs import add_input_args, load_inputs
from sta.errors import InputError
from sta.io.atomic import output_set, remove_stale

log = logging.getLogger("sta.subtomo")
PROG = "sta_subtomo"

#: RELION options whose outputs sta does not produce: refused with one clear line
_REFUSED = {
    "real_subtomo": "extract true subtomograms from the reconstructed tomogram",
    "whiten": "whiten the noise",
    "div": "write CTF-corrected subtomograms",
    "sum": "sum all subtomograms",
    "no_writing": "write only the sum",
    "multi": "write multiplicity volumes",
    "ctf": "write 3D CTFs",
    "nrm": "write multiplicity-normalised subtomograms",
    "circle_precrop": "crop to the large circle before CTF modulation",
    "grid_precorr": "gridding pre-correction",
}


def add_args(parser):
    add_input_args(parser)
    g = parser.add_argument_group("Reconstruction options")
    g.add_argument("--b", type=_cli.even_box, required=True, help="binned projection box size (pixels)")
    g.add_argument("--o", required=True, help="output directory")
    g.add_argument("--crop", type=int, default=-1, help="output box size (binned pixels; <0: = --b)")
    g.add_argument("--bin", type=_cli.positive_float, default=1.0, help="binning factor")
    g.add_argument("--stack2d", action="store_true", help="write 2D stacks instead of 3D pseudo-subtomograms")
    g.add_argument("--min_frames", type=int, default=1,
                   help="minimum number of visible tilts; particles with fewer are dropped")
    g.add_argument("--max_dose", type=float, default=-1.0,
                   help="maximum pre-exposure (e/Å²) of the tilts used (<= 0: all)")
    g.add_argument("--cone_weight", action="store_true", help="weight down a double cone along Z (3D only)")
    g.add_argument("--cone_angle", type=_cli.positive_float, default=10.0, help="full opening angle of the cone (deg)")
    g.add_argument("--cone_sig0", type=_cli.nonneg_float, default=2.0, help="cone width at Z = 0 (Fourier pixels)")
    g.add_argument("--no_circle_crop", action="store_true", help="do not crop the 2D images to a circle")
    g.add_argument("--no_ic", action="store_true", help="do not invert the contrast (keep particles dark)")
    g.add_argument("--no_ctf", action="store_true", help="do not apply CTFs")
    g.add_argument("--no_comb", action="store_true", help="do not write the CTF²/multiplicity weights file (3D)")
    g.add_argument("--dont_apply_offsets", action="store_true",
                   help="do not fold rlnOriginX/Y/ZAngst into the particle positions")
    g.add_argument("--apply_orientations", action="store_true",
                   help="fold rlnAngleRot/Tilt/Psi into rlnTomoSubtomogramRot/Tilt/Psi (implies offsets)")
    g.add_argument("--only_do_unfinished", action="store_true", help="skip particles whose output already exists")
    g.add_argument("--float16", action="store_true", help="write MRC mode 12 (half precision)")
    g.add_argument("--cutoff_fract", type=_cli.nonneg_float, default=0.01,
                   help="3D insertion ignores frequencies whose dose weight is below this")
    g.add_argument("--j", type=_cli.positive_int, default=6, help="threads per rank (particles in parallel)")
    g.add_argument("--SNR", type=float, default=-1.0, help="accepted; only used by --div/--sum (not implemented)")
    g.add_argument("--taper", type=float, default=5.0, help="accepted; only used by --div (not implemented)")
    g.add_argument("--env", type=float, default=-1.0, help="accepted; unused by RELION's main path")
    g.add_argument("--no_center", action="store_true", help="accepted; only used by --div (not implemented)")
    g.add_argument("--diag", action="store_true", help="accepted; writes nothing extra")
    n = parser.add_argument_group("Not implemented in sta (refused)")
    for name, what in _REFUSED.items():
        n.add_argument(f"--{name}", action="store_true", help=f"RELION: {what}")
    d = parser.add_argument_group("Display options")
    d.add_argument("--theme", default="classic", help="accepted for RELION compatibility")


def _params(args):
    from sta.workflows.subtomo import SubtomoParams

    for name in _REFUSED:
        if getattr(args, name):
            raise InputError(f"--{name} ({_REFUSED[name]}) is not implemented in this version of {PROG}")
    if args.crop > args.b:
        raise InputError(f"--crop {args.crop} is larger than the box --b {args.b}")
    if args.crop == 0:
        raise InputError("--crop 0: give a positive output box size (or -1 for the same as --b)")
    if args.stack2d and args.crop > 0 and (args.b - args.crop) % 2:
        raise InputError(f"--b {args.b} minus --crop {args.crop} is odd: 2D stacks need an even difference")
    if args.min_frames < 0:
        raise InputError(f"--min_frames must be >= 0, got {args.min_frames}")
    return SubtomoParams(box=args.b, crop=args.crop, binning=args.bin, stack2d=args.stack2d, do_ctf=not args.no_ctf,
                         invert_contrast=not args.no_ic, circle_crop=not args.no_circle_crop,
                         apply_offsets=not args.dont_apply_offsets, apply_orientations=args.apply_orientations,
                         max_dose=args.max_dose, min_frames=args.min_frames, cone_weight=args.cone_weight,
                         cone_angle=args.cone_angle, cone_sig0=args.cone_sig0, cutoff_fract=args.cutoff_fract,
                         write_weights=not args.no_comb)


def _body(args, comm):
    from sta.backend import set_fft_threads
    from sta.workflows import subtomo as wf
    from sta.workflows.tilt_data import TiltData

    params = _params(args)
    out_dir = args.o if args.o.endswith("/") else args.o + "/"
    set_fft_threads(1)
    t0 = time.time()
    opt, tomograms, particles, trajectories = load_inputs(args)
    _check_supported(particles, tomograms)
    geometry = {name: TiltData(tomograms[name], load_images=False) for name in set(particles.tomo_names())}
    plan = wf.make_plan(particles, tomograms, geometry, trajectories, params, out_dir)
    is_leader = comm.Get_rank() == 0
    if is_leader:
        log.info(" %d particles in %d tomograms: %d to extract, %d dropped (fewer than --min_frames %d visible "
                 "tilts)", particles.n, len(plan.by_tomogram()), len(plan.order), plan.removed, params.min_frames)
        if plan.removed:
            log.warning("WARNING: %d particle(s) removed: too close to the edge (or above --max_dose) in too many "
                        "images", plan.removed)
        for tomo in sorted(set(plan.tomo.values())):
            os.makedirs(os.path.dirname(plan.roots[plan.by_tomogram()[tomo][0]]), exist_ok=True)
        remove_stale(out_dir, recursive=True)  # temporary files of a killed earlier run
    t_plan = time.time() - t0
    # new stacks stay under temporary names until every rank has written its own and the leader
    # the STAR files: a failed run leaves the previous run's outputs as they were
    with output_set(commit=False) as stage:
        counts = _extract(args, comm, tomograms, particles, trajectories, plan, params)
        t_extract = time.time() - t0 - t_plan
        if is_leader:
            _write_star_files(opt, particles, tomograms, trajectories, plan, params, out_dir)
        comm.Barrier()  # everything is written (under temporary names) on every rank
    if not is_leader:
        stage.commit()
    comm.Barrier()
    if not is_leader:
        return
    stage.commit(last=[out_dir + name for name in ("motion.star", "particles.star", "optimisation_set.star")])
    log.info(" Timing: reading and planning %.2f s, extraction %.2f s (%d written, %d skipped as finished), "
             "STAR files %.2f s", t_plan, t_extract, counts[0], counts[1], time.time() - t0 - t_plan - t_extract)


def _check_supported(particles, tomograms):
    """Refuse inputs whose effect sta does not reproduce (instead of ignoring them)."""
    for label in ("rlnEvenZernike", "rlnOddZernike"):
        if particles.optics is not None and label in particles.optics.columns:
            raise InputError(f"{particles.path}: table optics has {label}: higher-order aberrations are not "
                             f"implemented in this version of {PROG}")
    for name in set(particles.tomo_names()):
        kind = tomograms[name].get("rlnTomoDeformationType", "")
        if str(kind) not in ("", "none", '""'):
            raise InputError(f"{tomograms.path}: tomogram {name} has a deformation model "
                             f"(rlnTomoDeformationType {kind}): not implemented in this version of {PROG}")


def _extract(args, comm, tomograms, particles, trajectories, plan, params):
    """Extract and write every planned particle on all ranks; returns (written, skipped) summed."""
    import numpy as np

    from sta.io.mrc import write_mrc
    from sta.parallel.batches import TiltCache, make_batches, run_batches
    from sta.workflows import subtomo as wf
    from sta.workflows.tilt_data import TiltData

    cache = TiltCache(lambda name: TiltData(tomograms[name]))
    batches = make_batches(plan.by_tomogram(), comm.Get_size() * args.j)
    px = {name: args.bin * tomograms[name].pixel_size for name in plan.by_tomogram()}

    def process(state, batch):
        name, idx = batch
        if args.only_do_unfinished:
            todo = [i for i in idx.tolist() if not os.path.exists(wf.output_names(plan.roots[i], params)[0])]
            state[1] += len(idx) - len(todo)
            idx = np.asarray(todo, dtype=np.int64)
            if not len(idx):
                return

        def write(i, data, weights):
            data_file, weights_file = wf.output_names(plan.roots[i], params)
            if weights is not None and params.write_weights:
                write_mrc(weights_file, weights, 1.0 / px[name], float16=args.float16)  # [QUIRK] 1/px header
            write_mrc(data_file, data, px[name], float16=args.float16)
            state[0] += 1

        wf.extract_particles(cache.get(name), particles, idx, plan, params, trajectories, write)

    states = run_batches(comm, batches, process, lambda: [0, 0], n_threads=args.j, label="Extracted",
                         is_leader=comm.Get_rank() == 0,
                         check_abort=lambda: _cli.check_abort(args.pipeline_control))
    mine = [sum(s[0] for s in states), sum(s[1] for s in states)]
    totals = comm.gather(mine, root=0)
    if comm.Get_rank() != 0:
        return mine
    return [sum(t[0] for t in totals), sum(t[1] for t in totals)]


def _write_star_files(opt, particles, tomograms, trajectories, plan, params, out_dir):
    from sta.workflows import subtomo as wf

    out = wf.output_particle_set(particles, tomograms, plan, params)
    if not len(plan.order):
        log.warning("WARNING: no particle is visible in at least --min_frames %d tilts; %sparticles.star has no "
                    "particles", params.min_frames, out_dir)
    out.write(out_dir + "particles.star")
    if trajectories is not None and plan.removed > 0:
        wf.output_trajectories(particles, trajectories, plan).write(out_dir + "motion.star")
        opt.trajectories = out_dir + "motion.star"
    opt.particles = out_dir + "particles.star"
    opt.write(out_dir + "optimisation_set.star")
    log.info(" Wrote %sparticles.star (%d particles) and %soptimisation_set.star", out_dir, len(plan.order), out_dir)


def main(argv=None):
    from sta.parallel.threads import limit_threads_for_mpi

    limit_threads_for_mpi(sys.argv[1:] if argv is None else argv, option=None)
    from sta.parallel.mpi import world

    comm = world()
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, lambda args: _body(args, comm), argv, note_dir=lambda a: a.o, comm=comm)


if __name__ == "__main__":
    raise SystemExit(main())
