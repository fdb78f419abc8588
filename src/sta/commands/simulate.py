"""Simulate a small RELION-5 tomography project with known ground truth.

Writes per-tilt MRC images (``tilt_images/<TS>/...``), ``tomograms.star`` +
``tilt_series/<TS>.star``, ``particles.star`` (true poses), ``optimisation_set.star``,
``ground_truth.mrc`` and ``truth.json`` (poses, half-sets, parameters, seed) into ``--o``.
All STAR paths are relative to ``--o``: run the other tools from inside that directory.
With ``--perturb-angles``/``--perturb-offsets`` a second particle file
``particles_perturbed.star`` (+ ``optimisation_set_perturbed.star``) holds poses rotated by
exactly DEG degrees and shifted by exactly ANGST Å, for refinement tests.

Example:
  sta_simulate --o demo --model ../shared/data/models/job080.cif --truth_sym C6 \\
               --n_tomograms 2 --particles 24 --snr 0.1 --perturb-angles 10 --perturb-offsets 5
"""

import logging
import time

from sta.commands import _cli

log = logging.getLogger("sta.simulate")

PROG = "sta_simulate"


def _pair(kind, n):
    def parse(value):
        try:
            vals = tuple(int(v) for v in value.replace("x", ",").split(","))
        except ValueError:
            raise _cli.argparse.ArgumentTypeError(f"expected {n} integers like 280,280, got {value!r}") from None
        if len(vals) != n or min(vals) <= 0:
            raise _cli.argparse.ArgumentTypeError(f"expected {n} positive integers for {kind}, got {value!r}")
        return vals
    return parse


def _opt(group, name, **kw):
    """Add ``--a-b`` with the RELION-style alias ``--a_b``."""
    names = [f"--{name}"]
    if "_" in name:
        names.append("--" + name.replace("_", "-"))
    elif "-" in name:
        names.append("--" + name.replace("-", "_"))
    kw.setdefault("dest", name.replace("-", "_"))
    group.add_argument(*names, **kw)


def add_args(parser):
    io = parser.add_argument_group("I/O")
    _opt(io, "o", required=True, help="output project directory")
    _opt(io, "model", default="phantom",
         help="structure: 'phantom' (built-in chiral phantom) or a PDB/mmCIF file read with gemmi")
    _opt(io, "truth_sym", default="C1", help="symmetrise the truth map with this group (model axis on z)")
    _opt(io, "truth_resolution", type=float, default=0.0, help="truth low-pass in Å (0 = Nyquist)")
    _opt(io, "seed", type=int, default=1, help="random seed: the same seed gives the same project")
    _opt(io, "float16", action="store_true", help="write tilt images as float16 (MRC mode 12)")
    g = parser.add_argument_group("Sample")
    _opt(g, "n_tomograms", type=_cli.positive_int, default=2, help="number of tilt series")
    _opt(g, "particles", type=_cli.positive_int, default=24, help="particles per tomogram")
    _opt(g, "box", type=_cli.positive_int, default=48, help="box of the structure (pixels)")
    _opt(g, "angpix", type=_cli.positive_float, default=4.0, help="tilt-series pixel size (Å)")
    _opt(g, "tomo_size", type=_pair("the tomogram size", 3), default=(300, 288, 96),
         help="rlnTomoSizeX,Y,Z in pixels (odd sizes allowed)")
    _opt(g, "image_size", type=_pair("the image size", 2), default=(280, 280), help="tilt image width,height")
    _opt(g, "subtomo_fraction", type=float, default=0.0,
         help="fraction of particles given random rlnTomoSubtomogramRot/Tilt/Psi")
    _opt(g, "edge_particles", action="store_true", help="allow particles near the tomogram border")
    _opt(g, "min_separation", type=_cli.nonneg_float, default=0.25,
         help="minimum distance between projected particles in every tilt, in boxes")
    t = parser.add_argument_group("Tilt series")
    _opt(t, "tilt_min", type=float, default=-60.0, help="lowest tilt (deg)")
    _opt(t, "tilt_max", type=float, default=60.0, help="highest tilt (deg)")
    _opt(t, "tilt_step", type=_cli.positive_float, default=3.0, help="tilt increment (deg)")
    _opt(t, "scheme", choices=["dose-symmetric", "sequential", "bidirectional"], default="dose-symmetric",
         help="acquisition order (sets rlnMicrographPreExposure)")
    _opt(t, "dose", type=_cli.nonneg_float, default=3.0, help="dose per tilt (e/Å²)")
    _opt(t, "tilt_axis", type=float, default=85.0, help="tilt-axis angle rlnTomoZRot (deg)")
    _opt(t, "shift_jitter", type=_cli.nonneg_float, default=20.0, help="per-tilt shifts uniform in ±Å")
    _opt(t, "angle_jitter", type=_cli.nonneg_float, default=1.0,
         help="scale of the per-tilt angle jitter (0.2° x-tilt, 0.1° y-tilt, 0.05° z-rot at 1)")
    c = parser.add_argument_group("Microscope")
    _opt(c, "kV", type=_cli.positive_float, default=300.0, help="voltage (kV)")
    _opt(c, "Cs", type=_cli.nonneg_float, default=2.7, help="spherical aberration (mm)")
    _opt(c, "Q0", type=_cli.nonneg_float, default=0.1, help="amplitude contrast")
    _opt(c, "defocus", type=float, nargs=2, default=(30000.0, 35000.0), metavar=("MIN", "MAX"),
         help="defocus range at the tomogram centre (Å, underfocus positive)")
    _opt(c, "astigmatism", type=_cli.nonneg_float, default=300.0, help="ΔfU - ΔfV (Å)")
    _opt(c, "hand", type=float, choices=[-1.0, 1.0], default=-1.0, help="rlnTomoHand")
    _opt(c, "no_ctf", action="store_true", help="no CTF and no dose weighting (geometry tests)")
    _opt(c, "ctf_scale", choices=["one", "cos"], default="one", help="rlnCtfScalefactor: 1 or cos(tilt)")
    _opt(c, "bfactor_per_dose", type=_cli.nonneg_float, default=0.0,
         help="rlnCtfBfactorPerElectronDose (0 = Grant-Grigorieff dose weighting)")
    _opt(c, "snr", type=float, default=0.1, help="signal-to-noise ratio per tilt in the particle box (<= 0: no noise)")
    r = parser.add_argument_group("Refinement test input")
    _opt(r, "perturb-angles", type=_cli.nonneg_float, default=0.0, metavar="DEG",
         help="write particles_perturbed.star with poses rotated by DEG")
    _opt(r, "perturb-offsets", type=_cli.nonneg_float, default=0.0, metavar="ANGST",
         help="... and offsets (rlnOrigin*Angst) of ANGST Å")


def params_from_args(args):
    from sta.simulate.project import SimulationParameters

    j = args.angle_jitter
    return SimulationParameters(
        n_tomograms=args.n_tomograms, particles_per_tomogram=args.particles, box=args.box,
        pixel_size=args.angpix, image_size=tuple(args.image_size), tomo_size=tuple(args.tomo_size),
        tilt_min=args.tilt_min, tilt_max=args.tilt_max, tilt_step=args.tilt_step, scheme=args.scheme,
        dose_per_tilt=args.dose, tilt_axis=args.tilt_axis, zrot_jitter=0.05 * j, xtilt_jitter=0.2 * j,
        ytilt_jitter=0.1 * j, shift_jitter=args.shift_jitter, defocus_min=min(args.defocus),
        defocus_max=max(args.defocus), astigmatism=args.astigmatism, hand=args.hand, voltage=args.kV,
        cs=args.Cs, q0=args.Q0, ctf=not args.no_ctf, ctf_scale=args.ctf_scale,
        bfactor_per_dose=args.bfactor_per_dose, snr=args.snr, model=args.model,
        truth_resolution=args.truth_resolution, truth_symmetry=args.truth_sym,
        subtomo_fraction=args.subtomo_fraction, edge_particles=args.edge_particles,
        min_separation=args.min_separation,
        perturb_angles=args.perturb_angles, perturb_offsets=args.perturb_offsets, float16=args.float16,
        seed=args.seed)


def _body(args):
    from sta.simulate.project import simulate_project

    params = params_from_args(args)
    t0 = time.time()

    def progress(done, total):
        rate = done / max(time.time() - t0, 1e-9)
        log.info(" Simulated tilt series %d/%d (%.2f /s, ETA %.0f s)", done, total, rate, (total - done) / rate)

    truth = simulate_project(params, args.o, progress=progress)
    log.info(" Wrote %d tomograms, %d particles to %s (noise sigma %.4g, signal variance %.4g)",
             len(truth["tomograms"]), len(truth["particles"]), args.o, truth["noise_sigma"],
             truth["signal_variance"])


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
