"""Input resolution and set-up of sta_refine (kept out of the command module for length)."""

import logging
import os
import time

import numpy as np

from sta.errors import InputError

log = logging.getLogger("sta.refine")


def _inputs(args):
    from sta.io.optimisation_set import OptimisationSet

    ios = None
    if args.ios:
        if not os.path.exists(args.ios):
            raise InputError(f"{args.ios}: optimisation set not found (--ios)")
        ios = OptimisationSet.read(args.ios)
    particles = args.i or (ios.particles if ios else "")
    tomograms = args.tomograms or (ios.tomograms if ios else "")
    trajectories = args.trajectories or (ios.trajectories if ios and ios.trajectories else "")
    if not particles:
        raise InputError("no particles: give --i particles.star (or --ios)")
    for label, path in (("--i", particles), ("--tomograms", tomograms), ("--trajectories", trajectories)):
        if path and not os.path.exists(path):
            raise InputError(f"{path}: file not found ({label})")
    return ios, particles, tomograms, trajectories


def _references(args, box, pixel_size):
    from sta.io.mrc import read_mrc

    if not args.ref:
        raise InputError("--ref is compulsory for 3D refinement")
    names = [args.ref]
    if "half1" in os.path.basename(args.ref):
        names.append(os.path.join(os.path.dirname(args.ref), os.path.basename(args.ref).replace("half1", "half2")))
    maps = []
    for name in names:
        vol, px = read_mrc(name)
        if vol.shape != (box, box, box):
            raise InputError(f"{name}: reference is {vol.shape[::-1]} voxels but the particles are {box} pixels "
                             "(rescaling references is not implemented: reconstruct at the particles' binning)")
        ref_px = args.ref_angpix if args.ref_angpix > 0 else px
        if abs(ref_px - pixel_size) > 1e-3 * pixel_size:
            raise InputError(f"{name}: reference pixel size {ref_px:g} Å differs from the particles' {pixel_size:g} Å")
        maps.append(vol.astype(np.float64))
    if len(maps) == 1:
        maps.append(maps[0].copy())
    return maps


def build_refinement(args, comm, argv, resume=None):
    """Read inputs and return ``(AutoRefinement, RefineWriter)``; ``resume`` is a
    :class:`~sta.workflows.refine.checkpoint.Checkpoint` for ``--continue``."""
    import shlex

    from sta.io.particles import ParticleSet
    from sta.io.tomograms import TomogramSet
    from sta.io.trajectories import TrajectorySet
    from sta.workflows.refine.engine import RefineParams
    from sta.workflows.refine.data import is_volume_set, load_stack_particles, load_subtomo_particles
    from sta.workflows.refine.files import RefineWriter
    from sta.workflows.refine.loop import AutoRefinement

    ios, particles_file, tomograms_file, trajectories_file = _inputs(args)
    tomograms = TomogramSet.read(tomograms_file) if tomograms_file else None
    particles = ParticleSet.read(particles_file, tomograms)
    if is_volume_set(particles):
        sps = load_subtomo_particles(particles)
        if args.ctf and not all(sp.ctf_file for sp in sps):
            raise InputError(f"{particles_file}: 3D subtomograms without rlnCtfImage: --ctf needs each particle's "
                             "CTF/weights volume (or leave out --ctf)")
        log.info(" %d 3D pseudo-subtomograms (rlnImageDimensionality 3)", len(sps))
    else:
        if tomograms is None:
            raise InputError("--tomograms is mandatory for 2D-stack particles (or give --ios)")
        if trajectories_file:
            TrajectorySet.read(trajectories_file, particles).validate(particles, tomograms)
        sps = load_stack_particles(particles, tomograms)
    boxes = {sp.box for sp in sps}
    pixel_sizes = {round(sp.pixel_size, 6) for sp in sps}
    if len(boxes) != 1 or len(pixel_sizes) != 1:
        raise InputError(f"{particles_file}: all optics groups must share one rlnImageSize and rlnImagePixelSize "
                         f"(found {sorted(boxes)}, {sorted(pixel_sizes)})")
    box, px = boxes.pop(), pixel_sizes.pop()
    if box % 2:
        raise InputError(f"{particles_file}: table optics rlnImageSize {box}: odd boxes are not supported "
                         "(extract the particles with an even --b)")
    refs = _references(args, box, px) if resume is None else None
    seed = args.random_seed
    if seed < 0:
        seed = int(time.time()) if comm.Get_rank() == 0 else 0
        seed = comm.bcast(seed, root=0) if comm.Get_size() > 1 else seed
    diameter = args.particle_diameter if args.particle_diameter > 0 else (box - args.maskedge) * px
    params = RefineParams(
        particle_diameter=diameter, symmetry=args.sym, healpix_order=args.healpix_order,
        auto_local_order=args.auto_local_healpix_order, offset_range_px=args.offset_range,
        offset_step_px=args.offset_step, oversampling=args.oversampling, sigma_rot=max(args.sigma_ang, args.sigma_rot),
        sigma_tilt=max(args.sigma_ang, args.sigma_tilt), sigma_psi=max(args.sigma_ang, args.sigma_psi),
        do_ctf=args.ctf, ini_high=args.ini_high, tau2_fudge=args.tau2_fudge if args.tau2_fudge > 0 else 1.0,
        pad=args.pad, zero_mask=args.zero_mask, flatten_solvent=args.flatten_solvent,
        low_resol_join_halves=args.low_resol_join_halves, firstiter_cc=args.firstiter_cc,
        solvent_correct_fsc=args.solvent_correct_fsc,
        skip_align=args.skip_align, adaptive_fraction=args.adaptive_fraction, incr_size=args.incr_size,
        maskedge=args.maskedge, do_scale=args.scale and not args.no_scale, min_sigma2_offset=args.min_sigma2_offset,
        offset_prior_sigma=args.offset, max_iter=args.iter if args.iter > 0 else 999, seed=seed,
        perturb=args.perturb, ctf_noise=bool(args.ctf) and args.ctf_noise,
        subtomo_multi_thr=args.subtomo_multi_thr)
    if params.ctf_noise and sps and sps[0].volume:
        log.warning(" WARNING: --ctf_noise applies to 2D stacks; 3D subtomograms use RELION's multiplicity "
                    "noise model")
        params.ctf_noise = False
    if args.solvent_correct_fsc and not args.solvent_mask:
        log.warning(" WARNING: --solvent_correct_fsc has no effect without --solvent_mask (as in RELION)")
    if not args.ctf:
        log.warning(" WARNING: --ctf not given: the CTF of the (premultiplied) stacks is ignored, as in RELION")
    from sta.parallel.image_store import ImageStore
    from sta.parallel.threads import cores_per_rank, worker_threads

    threads, capped = worker_threads(args.j)
    if capped and comm.Get_rank() == 0:
        log.warning(" WARNING: --j %d: %d core(s) per rank on this node; running %d E-step thread(s) per rank",
                    args.j, cores_per_rank(), threads)

    images = ImageStore(sps, particles.resolve, comm, preread=args.preread_images, scratch_dir=args.scratch_dir,
                        keep_free_gb=args.keep_free_scratch, reuse=args.reuse_scratch, keep=args.keep_scratch)
    run = AutoRefinement(params, particles, sps, refs, px, comm=comm,
                         check_abort=lambda: _check_abort(args), resume=resume, images=images, threads=threads)
    if args.solvent_mask:
        from sta.io.mrc import read_mrc

        mask, _ = read_mrc(args.solvent_mask)
        if mask.shape != (box,) * 3:
            raise InputError(f"{args.solvent_mask}: mask is {mask.shape[::-1]} voxels, expected {box}")
        if mask.min() < -1e-6 or mask.max() > 1 + 1e-6:
            raise InputError(f"{args.solvent_mask}: mask values must lie in [0, 1] "
                             f"(found {mask.min():.3g} to {mask.max():.3g})")
        run.set_solvent_mask(mask)
    command_line = " ".join(shlex.quote(a) for a in argv)
    writer = RefineWriter(args.o, particles, tomograms_file, trajectories_file, command_line, ios, argv=argv)
    return run, writer


def _check_abort(args):
    from sta.commands._cli import check_abort

    check_abort(args.pipeline_control)
