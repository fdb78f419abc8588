"""Gold-standard FSC, resolution and map sharpening (drop-in for relion_postprocess).

Computes the FSC of the unmasked half maps, of the masked half maps (--mask) and of
masked half maps whose phases were randomised beyond the shell where the unmasked FSC
drops below --randomize_at_fsc (or beyond --randomize_at_A); the corrected FSC gives the
resolution at 0.143.  The average of the half maps is divided by the detector MTF (--mtf),
FSC-weighted (unless --skip_fsc_weighting), sharpened with a B-factor fitted on the Guinier
plot (--auto_bfac between --autob_lowres and --autob_highres) or given (--adhoc_bfac) and
optionally low-pass filtered (--low_pass).  Random phases use RELION's generator
(glibc rand, --random_seed), so the numbers equal RELION's.

Outputs: <o>.mrc, <o>_masked.mrc, <o>.star (tables general, fsc, guinier), <o>_fsc.xml
(EMDB), <o>_fsc.dat, <o>_fsc.png, <o>_guinier.png, <dir of o>/logfile.pdf, with --half_maps
<o>_half1.mrc/<o>_half2.mrc (+ _masked), with --ios <o>_optimisation_set.star.  --locres
runs sta_local_resolution instead.

Example:
  sta_postprocess --mask MaskCreate/job006/mask.mrc --i Reconstruct/job005/half1.mrc \\
                  --o PostProcess/job007/postprocess --angpix 4 --auto_bfac --autob_lowres 10
"""

import logging
import os
import sys

from sta import __version__
from sta.commands import _cli, local_resolution
from sta.errors import InputError

log = logging.getLogger(__name__)

PROG = "sta_postprocess"


def add_args(parser):
    g = parser.add_argument_group("General options")
    g.add_argument("--i", default="", help="half-1 map, e.g. run_half1_class001_unfil.mrc")
    g.add_argument("--i2", default="", help="half-2 map (default: --i with 'half1' replaced by 'half2')")
    g.add_argument("--ios", default="",
                   help="tomo optimisation set: supplies the half maps when --i is absent; "
                        "<o>_optimisation_set.star is written")
    g.add_argument("--o", default="postprocess", help="output root name")
    g.add_argument("--angpix", type=float, default=-1.0, help="pixel size (Å); -1: from the header")
    g.add_argument("--half_maps", action="store_true", help="also write post-processed half maps")
    g.add_argument("--mtf_angpix", type=float, default=-1.0,
                   help="pixel size (Å) of the original micrographs (-1: --angpix)")
    g.add_argument("--molweight", type=float, default=-1.0, help="molecular weight (kDa) of the ordered mass")
    m = parser.add_argument_group("Masking options")
    m.add_argument("--auto_mask", action="store_true", help="removed in RELION 5: use sta_mask_create")
    m.add_argument("--inimask_threshold", type=float, default=0.02, help="(with --auto_mask only)")
    m.add_argument("--extend_inimask", type=float, default=3.0, help="(with --auto_mask only)")
    m.add_argument("--width_mask_edge", type=float, default=6.0, help="(with --auto_mask only)")
    m.add_argument("--mask", default="", help="solvent mask (1 = protein, 0 = solvent, values in [0, 1])")
    m.add_argument("--force_mask", action="store_true",
                   help="use the mask even when the masked resolution is worse than the unmasked one")
    s = parser.add_argument_group("Sharpening options")
    s.add_argument("--mtf", default="", help="STAR file with the detector MTF")
    s.add_argument("--auto_bfac", action="store_true", help="fit the B-factor (Rosenthal & Henderson, 2003)")
    s.add_argument("--autob_lowres", type=float, default=10.0, help="lowest resolution (Å) in the B-factor fit")
    s.add_argument("--autob_highres", type=float, default=0.0,
                   help="highest resolution (Å) in the B-factor fit (0: Nyquist)")
    s.add_argument("--adhoc_bfac", type=float, default=0.0, help="B-factor (Å²) for sharpening, e.g. -400")
    f = parser.add_argument_group("Filtering options")
    f.add_argument("--skip_fsc_weighting", action="store_true", help="do not apply sqrt(2 FSC/(1 + FSC))")
    f.add_argument("--low_pass", type=float, default=0.0,
                   help="final low-pass (Å); 0: none, negative: at the FSC 0.143 resolution")
    loc = parser.add_argument_group("Local-resolution options")
    loc.add_argument("--locres", action="store_true", help="local resolution (runs sta_local_resolution)")
    local_resolution.add_locres_args(loc)
    e = parser.add_argument_group("Expert options")
    e.add_argument("--ampl_corr", action="store_true", help="amplitude correlation and DPR (not supported)")
    e.add_argument("--randomize_at_fsc", type=float, default=0.8,
                   help="randomise phases from where the unmasked FSC drops below this value")
    e.add_argument("--randomize_at_A", type=float, default=-1.0,
                   help="randomise phases from this resolution (Å) onwards (if positive)")
    e.add_argument("--filter_edge_width", type=int, default=2,
                   help="width (shells) of the raised cosine on the low-pass filter edge")
    e.add_argument("--interpolate", action="store_true", help="also report an interpolated resolution")
    e.add_argument("--verb", type=int, default=1, help="verbosity (accepted for compatibility)")
    e.add_argument("--random_seed", type=int, default=0,
                   help="seed of the phase randomisation (negative: time-seeded)")
    e.add_argument("--j", type=_cli.positive_int, default=1, help="FFT threads")


def _warn(lines):
    for text in lines:
        print(text, file=sys.stderr)


def _check_args(args):
    if args.auto_mask:
        raise InputError("--auto_mask has been removed (as in RELION 5); make a mask with sta_mask_create first")
    if args.ampl_corr:
        raise InputError("--ampl_corr (amplitude correlation and DPR) is not supported by sta_postprocess")
    if args.auto_bfac and abs(args.adhoc_bfac) > 0:
        raise InputError("provide either --auto_bfac OR --adhoc_bfac, but not both")
    if args.locres and args.auto_bfac:
        raise InputError("for --locres, you cannot do --auto_bfac, use --adhoc_bfac instead")


def _options(args, angpix, mtf):
    from sta.workflows.postprocess import PostprocessOptions

    return PostprocessOptions(
        angpix=angpix, mtf=mtf, auto_bfac=args.auto_bfac, autob_lowres=args.autob_lowres,
        autob_highres=args.autob_highres, adhoc_bfac=args.adhoc_bfac,
        fsc_weighting=not args.skip_fsc_weighting, low_pass=args.low_pass,
        randomize_at_fsc=args.randomize_at_fsc, randomize_at_A=args.randomize_at_A,
        filter_edge_width=args.filter_edge_width, molweight=args.molweight,
        force_mask=args.force_mask, interpolate=args.interpolate)


def _body(args, argv):
    from sta.backend import set_fft_threads
    from sta.io import postprocess_files as ppf
    from sta.io.atomic import output_set, remove_stale
    from sta.io.mrc import write_mrc
    from sta.workflows.postprocess import line, postprocess, sharpen_like

    _check_args(args)
    if args.locres:
        local_resolution.run_locres(args)
        return
    set_fft_threads(args.j)
    fn1, fn2, h1, h2, angpix = local_resolution.read_inputs(args)
    mtf = local_resolution.read_mtf_option(args, angpix)
    mask = None
    if args.mask:
        log.info("== Using a user-provided mask ... ")
        log.info(line("  + input mask: ", args.mask))
        mask = ppf.read_mask(args.mask, h1.shape)
    else:
        log.info("== Not performing any masking ... ")
    opts = _options(args, angpix, mtf)
    try:
        result = postprocess(h1, h2, mask, opts, local_resolution.make_rng(args.random_seed))
    except ValueError as err:
        raise InputError(f"{fn1}, {fn2}: {err}") from err
    _warn(result.warnings)
    curves, sharp = result.fsc, result.sharpening

    root = args.o
    names = {"half1": fn1, "half2": fn2, "map": f"{root}.mrc", "masked_map": f"{root}_masked.mrc",
             "mask": args.mask}
    # every output appears together (the STAR file last) or, when a write fails, none does
    remove_stale(os.path.dirname(root) or ".")
    with output_set(last=[f"{root}.star"]):
        log.info("== Writing output files ...")
        write_mrc(names["map"], sharp.volume, angpix)
        log.info(line("  + Processed map: ", names["map"]))
        if mask is not None:
            write_mrc(names["masked_map"], sharp.volume * mask, angpix)
            log.info(line("  + Processed masked map: ", names["masked_map"]))
        star = f"{root}.star"
        log.info(line("  + Metadata file: ", star))
        ppf.write_postprocess_star(star, curves, sharp, names, " ".join(argv),
                                   f"5.0-compatible (sta {__version__})", args.molweight, args.auto_bfac)
        if args.ios:
            ppf.write_optimisation_set(f"{root}_optimisation_set.star", args.ios, star,
                                       *((fn1, fn2) if args.i else (None, None)))
            log.info(line("  + Optimisation set: ", f"{root}_optimisation_set.star"))
        ppf.write_fsc_xml(f"{root}_fsc.xml", curves.resolution_inv, curves.fsc_true)
        ppf.write_fsc_dat(f"{root}_fsc.dat", curves.resolution_inv, curves.fsc_true)
        ppf.write_plots(root, curves, sharp)
        final = f"{curves.resolution:g}"
        if args.interpolate:
            final += f" ({curves.fractional_resolution:g})"
        log.info(line("  + FINAL RESOLUTION: ", final))

        if args.half_maps:
            log.info("== Writing half maps after applying same sharpening and low-pass filter")
            for k, half in ((1, h1), (2, h2)):
                log.info("  + half%d", k)
                out = sharpen_like(half, curves.fsc_true, opts, sharp).volume
                write_mrc(f"{root}_half{k}.mrc", out, angpix)
                if mask is not None:
                    write_mrc(f"{root}_half{k}_masked.mrc", out * mask, angpix)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, lambda args: _body(args, argv), argv,
                    note_dir=lambda args: None)


if __name__ == "__main__":
    raise SystemExit(main())
