"""Gold-standard 3D auto-refine of tomography particles, 2D stacks or 3D pseudo-subtomograms
(relion_refine --auto_refine --split_random_halves).

Regularised likelihood optimisation as RELION defines it: Gaussian noise with per-shell σ²
estimated from the data, τ² from the half-set FSC, marginalisation over HEALPix
orientations × 3D translations with adaptive oversampling, CTF² of the premultiplied
stacks per tilt image (3D subtomograms: their CTF² and multiplicity volumes), symmetry,
auto-sampling (finer HEALPix orders, then local searches) and a final iteration joining the
halves.  Writes RELION's files: run_itNNN_half{1,2}_class001.mrc, run_itNNN_half{1,2}_model.star,
run_itNNN_data.star, run_itNNN_optimiser.star, run_itNNN_sampling.star, and at the end
run_class001.mrc, run_half{1,2}_class001_unfil.mrc, run_model.star, run_data.star,
run_optimiser.star, run_sampling.star, run_optimisation_set.star.

Under mpirun rank 0 is the leader and the other ranks form two half-set groups
(odd ranks half 1, even ranks half 2); -np 1 runs both halves in one process.

Example:
  mpirun -np 3 sta_refine --o Refine3D/job001/run --auto_refine --split_random_halves \\
      --i Extract/job001/particles.star --tomograms tomograms.star --ref Reconstruct/job002/merged.mrc \\
      --ini_high 30 --ctf --particle_diameter 150 --flatten_solvent --zero_mask --healpix_order 2 \\
      --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 --sym C6 --low_resol_join_halves 40
"""

import logging
import os
import sys

from sta.commands import _cli
from sta.errors import InputError

log = logging.getLogger("sta.refine")
PROG = "sta_refine"

# accepted for drop-in use, no effect on the result (warned when given)
NO_EFFECT = {"pool": 1, "dont_combine_weights_via_disc": 0, "no_parallel_disc_io": 0,
             "onthefly_shifts": 0, "verb": 1, "norm": 0, "no_norm": 0, "trust_ref_size": 0, "cpu": 0,
             "free_gpu_memory": 1, "dont_check_norm": 0, "random_halves": 0}
# RELION options that change the result and are not implemented yet: refused by name
REFUSED = {"solvent_mask2": 1, "blush": 0, "denovo_3dref": 0,
           "grad": 0, "helix": 0, "local_symmetry": 1, "tau": 1, "relax_sym": 1, "bimodal_psi": 0,
           "skip_rotate": 0, "offset_range_x": 1, "offset_range_y": 1, "offset_range_z": 1,
           "ctf_intact_first_peak": 0, "pad_ctf": 0, "fast_subsets": 0, "external_reconstruct": 0,
           "limit_tilt": 1, "psi_step": 1, "center_classes": 0, "maxsig": 1, "coarse_size": 1,
           "strict_highres_exp": 1, "strict_lowres_exp": 1, "fix_sigma_noise": 0, "fix_sigma_offset": 0,
           "auto_ignore_angles": 0, "auto_resol_angles": 0, "allow_coarser_sampling": 0, "NN": 0,
           "normalised_subtomo": 0, "skip_subtomo_multi": 0, "ctf3d_not_squared": 0}


def add_args(parser):
    g = parser.add_argument_group("General")
    g.add_argument("--i", default="", help="input particles: 2D stacks or 3D pseudo-subtomograms from sta_subtomo / "
                   "relion_tomo_subtomo")
    g.add_argument("--tomograms", default="", help="tomogram set (mandatory for 2D stacks, not used for 3D)")
    g.add_argument("--trajectories", default="", help="trajectory set (motion.star)")
    g.add_argument("--ios", default="", help="tomo optimisation set: fills --i, --tomograms, --trajectories")
    g.add_argument("--o", required=True, help="output rootname, e.g. Refine3D/job001/run")
    g.add_argument("--continue", dest="continue_from", default="",
                   help="continue from this run_itNNN_optimiser.star of an sta_refine run (its other options are "
                        "taken from that run; options given here override them)")
    g.add_argument("--iter", type=int, default=-1, help="maximum number of iterations (-1: until convergence)")
    g.add_argument("--tau2_fudge", type=float, default=-1.0, help="regularisation parameter (-1: 1)")
    g.add_argument("--K", type=int, default=1, help="number of references (only 1)")
    g.add_argument("--particle_diameter", type=float, default=-1.0, help="circular mask diameter (Å)")
    g.add_argument("--zero_mask", action="store_true", help="fill the images' background with its mean, not noise")
    g.add_argument("--flatten_solvent", action="store_true", help="mask the references")
    g.add_argument("--solvent_mask", default="", help="mask for the references (default: sphere of the diameter)")
    g.add_argument("--solvent_correct_fsc", action="store_true",
                   help="FSC of the half maps inside --solvent_mask, corrected by phase randomisation")
    g.add_argument("--split_random_halves", action="store_true", help="gold-standard half sets (required)")
    g.add_argument("--low_resol_join_halves", type=float, default=-1.0, help="join halves up to this resolution (Å)")
    g = parser.add_argument_group("Initialisation")
    g.add_argument("--ref", default="", help="reference map; a name with 'half1' gives each half its own")
    g.add_argument("--ref_angpix", type=float, default=-1.0, help="reference pixel size (Å; -1: header)")
    g.add_argument("--offset", type=float, default=10.0, help="initial stddev of the offsets (Å)")
    g.add_argument("--firstiter_cc", action="store_true", help="cross-correlation in the first iteration")
    g.add_argument("--ini_high", type=float, default=-1.0, help="low-pass of the reference in iteration 1 (Å)")
    g = parser.add_argument_group("Orientations")
    g.add_argument("--oversampling", type=int, default=1, help="adaptive oversampling order (0 or 1)")
    g.add_argument("--healpix_order", type=int, default=2, help="HEALPix order before oversampling")
    g.add_argument("--sym", default="C1", help="symmetry group")
    g.add_argument("--offset_range", type=float, default=6.0, help="offset search range (pixels)")
    g.add_argument("--offset_step", type=float, default=2.0, help="offset step before oversampling (pixels)")
    g.add_argument("--perturb", type=float, default=0.5, help="perturbation factor of the sampling")
    g.add_argument("--auto_refine", action="store_true", help="3D auto-refine (required)")
    g.add_argument("--auto_local_healpix_order", type=int, default=4, help="order from which searches are local")
    for name in ("sigma_ang", "sigma_rot", "sigma_tilt", "sigma_psi"):
        g.add_argument(f"--{name}", type=float, default=-1.0, help="stddev (deg) of local angular searches")
    g.add_argument("--skip_align", action="store_true", help="no alignment: reconstruct from the input poses")
    g = parser.add_argument_group("Corrections")
    g.add_argument("--ctf", action="store_true", help="CTF correction (premultiplied stacks: CTF²)")
    g.add_argument("--scale", action="store_true", help="per-tomogram intensity-scale correction")
    g.add_argument("--no_scale", action="store_true", help="no scale correction")
    g.add_argument("--ctf_noise", action="store_true",
                   help="sta extension: each pixel of a premultiplied stack has noise variance CTF²·σ² (default: "
                        "RELION's per-shell σ²; see docs/deviations.md)")
    g.add_argument("--subtomo_multi_thr", type=float, default=0.01,
                   help="3D subtomograms: voxels with a lower multiplicity are left out")
    g = parser.add_argument_group("Computation")
    g.add_argument("--j", type=_cli.positive_int, default=1,
                   help="threads per MPI rank (RELION's --j): particles of the E-step in parallel, each thread "
                        "with one BLAS and one FFT thread; the leader's M-step FFTs use them too")
    g.add_argument("--preread_images", action="store_true",
                   help="read all particle images into RAM once (one copy per node, shared by its followers)")
    g.add_argument("--scratch_dir", default="", help="copy the particle images to DIR/relion_volatile/ once per node")
    g.add_argument("--keep_free_scratch", type=float, default=10.0,
                   help="GB to leave free on the scratch disk (else the original files are read)")
    g.add_argument("--reuse_scratch", action="store_true", help="reuse a complete scratch copy of an earlier run")
    g.add_argument("--keep_scratch", action="store_true", help="do not remove the scratch copy at the end")
    g.add_argument("--gpu", nargs="?", const="", default=None, help="GPU ids (not available in this version)")
    g.add_argument("--pad", type=int, default=2, help="padding factor (only 2)")
    g.add_argument("--random_seed", type=int, default=-1, help="random seed (-1: from the clock, broadcast)")
    g.add_argument("--adaptive_fraction", type=float, default=0.999, help="fraction of the posterior kept")
    g.add_argument("--incr_size", type=int, default=10, help="image-size increment beyond the resolution (shells)")
    g.add_argument("--maskedge", type=int, default=5, help="soft edge of the particle mask (pixels)")
    g.add_argument("--min_sigma2_offset", type=float, default=2.0, help="lower bound of σ²_offset (Å²)")
    g.add_argument("--print_symmetry_ops", action="store_true", help="print the operators of --sym and exit")
    extra = parser.add_argument_group("RELION options accepted without effect / refused")
    for table, text in ((NO_EFFECT, "accepted, no effect"), (REFUSED, "not implemented yet: refused")):
        for name, takes_value in table.items():
            if takes_value:
                extra.add_argument(f"--{name}", nargs="?", const="", default=None, help=text)
            else:
                extra.add_argument(f"--{name}", action="store_const", const="", default=None, help=text)


def _print_symmetry(sym):
    from sta.geometry.euler import matrix_to_euler
    from sta.geometry.symmetry import parse_symmetry

    group = parse_symmetry(sym)
    print(f" ++++ Using symmetry group {group.name}, with the following {group.order} transformation matrices:")
    for k, m in enumerate(group.matrices):
        print(f" R({k + 1})= ")
        for row in m:
            print("".join(f"{v:13.8g} " for v in row))
        if k:
            rot, tilt, psi = matrix_to_euler(m)
            print(f"     Euler angles: {float(rot):g} {float(tilt):g} {float(psi):g}")


def _check_flags(args):
    for name in REFUSED:
        if getattr(args, name) is not None:
            raise InputError(f"--{name} is not implemented in this version of sta_refine")
    for name in NO_EFFECT:
        if getattr(args, name) is not None:
            log.warning(" WARNING: --%s is accepted for compatibility and has no effect in sta_refine", name)
    if args.gpu is not None:
        _gpu_policy()
    if not (args.auto_refine and args.split_random_halves):
        raise InputError("sta_refine implements 3D auto-refine only: give --auto_refine --split_random_halves")
    if args.K != 1:
        raise InputError(f"--K {args.K}: only one reference (K = 1) is supported")
    if args.iter == 0:  # RELION's auto-refine ignores --iter; here it caps the iterations
        raise InputError("--iter 0: give the maximum number of iterations (> 0), or -1 to run until convergence")
    if args.pad != 2:
        raise InputError(f"--pad {args.pad}: only padding 2 is supported")
    if args.oversampling not in (0, 1):
        raise InputError(f"--oversampling {args.oversampling}: only 0 or 1 are supported")


def _continued(args, argv):
    """``--continue``: the original run's arguments, overridden by the ones given now."""
    from sta.workflows.refine.checkpoint import load

    ck = load(args.continue_from)
    given = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
        elif tok == "--continue":
            skip = True
        elif not tok.startswith("--continue="):
            given.append(tok)
    merged = ck.argv + given
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    new = parser.parse_args(merged)
    new.random_seed = int(ck.meta["seed"])
    new.continue_from = args.continue_from
    log.info(" Continuing from iteration %d of %s", ck.iteration, args.continue_from)
    return new, merged, ck


def _gpu_policy():
    """``--gpu`` without a usable GPU path.  Under a RELION name (``relion_refine_mpi`` from
    sta_relion_aliases) behave as a RELION built without CUDA: warn and run on the CPU, so
    pipelines that always pass ``--gpu ''`` keep working.  As ``sta_refine``: refuse."""
    from sta.backend import cupy_available

    reason = ("CuPy with a CUDA device is not available" if not cupy_available()
              else "the GPU path of sta_refine is not available in this version")
    if _cli.program_name(PROG).startswith("relion_"):
        log.warning("+ WARNING : --gpu given but %s - you do NOT have support for GPUs: running on the CPU", reason)
        return
    raise InputError(f"--gpu: {reason} (run without --gpu to use the CPU)")


def _body(args, comm, argv):
    from sta.backend import set_fft_threads
    from sta.parallel.refine import check_ranks

    if args.print_symmetry_ops:
        _print_symmetry(args.sym)
        return
    resume = None
    if args.continue_from:
        args, argv, resume = _continued(args, argv)
    _check_flags(args)
    check_ranks(comm)
    set_fft_threads(args.j)
    from sta.commands._refine_setup import build_refinement

    run, writer = build_refinement(args, comm, argv, resume)
    run.writer = writer if comm.Get_rank() == 0 else None
    try:
        run.run()
    except BaseException:
        if comm.Get_size() == 1:  # under MPI the job is aborted; the next start wipes the scratch copy
            run.images.close()
        raise
    run.images.close()
    if comm.Get_rank() == 0:
        t = run.timings
        log.info(" Timing: expectation %.1f s, maximisation %.1f s, writing %.1f s, total %.1f s (%d iterations)",
                 t["expectation"], t["maximisation"], t["writing"], t.get("total", 0.0), run.iteration)


def main(argv=None):
    from sta.parallel.threads import one_blas_thread_per_worker

    one_blas_thread_per_worker()   # --j E-step threads per rank, each with one BLAS thread
    from sta.parallel.mpi import world

    comm = world()
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    given = list(sys.argv[1:] if argv is None else argv)
    return _cli.run(PROG, parser, lambda args: _body(args, comm, given), argv,
                    note_dir=lambda a: None if a.print_symmetry_ops else (os.path.dirname(a.o) or "."), comm=comm)


if __name__ == "__main__":
    raise SystemExit(main())
