"""``--i/--p/--t/--mot`` handling shared by the per-tomogram tools (spec §1.4)."""

import logging
import os

from sta.errors import InputError

log = logging.getLogger("sta")


def add_input_args(parser):
    g = parser.add_argument_group("Complete optimisation set")
    g.add_argument("--i", default="", help="optimisation set (optimisation_set.star)")
    g = parser.add_argument_group("Individual optimisation components (overriding the optimisation set)")
    g.add_argument("--p", default="", help="particle set")
    g.add_argument("--t", default="", help="tomogram set")
    g.add_argument("--mot", default="", help="particle trajectories set (motion.star)")


def load_inputs(args, need_images=True):
    """Return ``(optimisation_set, tomograms, particles, trajectories or None)``."""
    from sta.io.optimisation_set import OptimisationSet

    if args.i:
        if not os.path.exists(args.i):
            raise InputError(f"{args.i}: optimisation set not found (--i)")
        opt = OptimisationSet.read(args.i)
    else:
        opt = OptimisationSet()
    opt.apply_overrides(p=args.p or None, t=args.t or None, mot=args.mot or None)
    if not opt.particles:
        raise InputError("no particle set: give --p particles.star or --i optimisation_set.star")
    if not opt.tomograms:
        raise InputError("no tomogram set: give --t tomograms.star or --i optimisation_set.star")
    for label, path in (("--p / rlnTomoParticlesFile", opt.particles), ("--t / rlnTomoTomogramsFile", opt.tomograms),
                        ("--mot / rlnTomoTrajectoriesFile", opt.trajectories)):
        if path and not os.path.exists(opt.resolve(path)):
            raise InputError(f"{path}: file not found ({label})")
    tomograms = opt.load_tomograms()
    particles = opt.load_particles(tomograms)
    missing = sorted(set(particles.tomo_names()) - set(tomograms.names()))
    if missing:
        raise InputError(f"{opt.particles}: rlnTomoName {missing[0]!r} is not in the tomogram set {opt.tomograms}")
    trajectories = opt.load_trajectories(particles) if opt.trajectories else None
    if trajectories is not None:
        trajectories.validate(particles, tomograms)
    if need_images:
        for name in sorted(set(particles.tomo_names())):
            tomograms.validate_tilt_images(name)
    return opt, tomograms, particles, trajectories
