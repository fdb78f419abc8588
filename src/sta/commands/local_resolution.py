"""Local resolution and a locally filtered map (drop-in for relion_postprocess --locres).

A soft spherical window (radius --locres_maskrad, edge --locres_edgwidth) is moved over the
half maps on a grid every --locres_sampling Å; in each window the FSC of the masked half
maps is corrected with phase-randomised half maps (randomised beyond --locres_randomize_at)
and read at 0.143.  Writes <o>_locres.mrc (local resolution in Å, the window-weighted
harmonic mean at every voxel), <o>_locres_filtered.mrc (the average of the half maps,
MTF-corrected, sharpened with --adhoc_bfac and, window by window, FSC-weighted and
low-passed at the local resolution) and <o>_locres_fscs.star (the FSC of every window).
With --mask, a histogram of the local resolutions inside the mask is written as
<o>_histogram.png and <dir of o>/histogram.pdf.  `sta_postprocess --locres` runs this.

Example:
  sta_local_resolution --i Refine3D/job010/run_half1_class001_unfil.mrc \\
                       --o LocalRes/job012/relion --angpix 1.35 --adhoc_bfac -30 \\
                       --mask MaskCreate/job011/mask.mrc --locres_sampling 25
"""

import logging
import os
import sys

from sta.commands import _cli
from sta.errors import InputError

log = logging.getLogger(__name__)

PROG = "sta_local_resolution"


def add_locres_args(group):
    """The --locres_* options (shared with sta_postprocess)."""
    group.add_argument("--locres_sampling", type=_cli.positive_float, default=25.0,
                       help="spacing (Å) of the local-resolution sampling grid")
    group.add_argument("--locres_maskrad", type=float, default=-1.0,
                       help="radius (Å) of the spherical window (-1: 0.5 x sampling)")
    group.add_argument("--locres_edgwidth", type=float, default=-1.0,
                       help="width (Å) of the window's soft edge (-1: sampling)")
    group.add_argument("--locres_randomize_at", type=_cli.positive_float, default=25.0,
                       help="randomise phases from this resolution (Å)")
    group.add_argument("--locres_minres", type=_cli.positive_float, default=50.0,
                       help="lowest local resolution reported (Å)")


def add_args(parser):
    g = parser.add_argument_group("General options")
    g.add_argument("--i", default="", help="half-1 map, e.g. run_half1_class001_unfil.mrc")
    g.add_argument("--i2", default="", help="half-2 map (default: --i with 'half1' replaced by 'half2')")
    g.add_argument("--ios", default="", help="tomo optimisation set supplying the half maps when --i is absent")
    g.add_argument("--o", default="postprocess", help="output root name")
    g.add_argument("--angpix", type=float, default=-1.0, help="pixel size (Å); -1: from the header")
    g.add_argument("--mtf_angpix", type=float, default=-1.0,
                   help="pixel size (Å) of the original micrographs (-1: --angpix)")
    g.add_argument("--mask", default="", help="mask (only used for the histogram of local resolutions)")
    g.add_argument("--mtf", default="", help="STAR file with the detector MTF")
    g.add_argument("--adhoc_bfac", type=float, default=0.0, help="B-factor (Å²) for sharpening, e.g. -400")
    g.add_argument("--filter_edge_width", type=int, default=2,
                   help="width (shells) of the raised cosine on the low-pass filter edge")
    g.add_argument("--random_seed", type=int, default=0,
                   help="seed of the phase randomisation (negative: time-seeded)")
    g.add_argument("--j", type=_cli.positive_int, default=1, help="FFT threads")
    g.add_argument("--locres", action="store_true", help="accepted for relion_postprocess compatibility")
    add_locres_args(parser.add_argument_group("Local-resolution options"))


def _warn(*lines):
    for text in lines:
        print(text, file=sys.stderr)


def make_rng(seed):
    """RELION's random numbers for ``--random_seed`` (negative: seeded from the clock)."""
    import time

    from sta.kernels.fsc import RelionRandom

    return RelionRandom(seed if seed >= 0 else int(time.time()))


def read_inputs(args):
    """Half-map names, the maps and the pixel size, checked; logs RELION's first lines.

    Returns
    -------
    (str, str, ndarray, ndarray, float)
    """
    from sta.io.postprocess_files import half_map_names, read_half_maps

    fn1, fn2 = half_map_names(args.i, args.i2, args.ios)
    log.info("== Reading input half-reconstructions: ")
    log.info("%-35s%s", "  + half1-map: ", fn1)
    log.info("%-35s%s", "  + half2-map: ", fn2)
    directory = os.path.dirname(args.o)
    if directory:
        os.makedirs(directory, exist_ok=True)
    h1, h2, header_px = read_half_maps(fn1, fn2)
    angpix = args.angpix
    if angpix <= 0:
        angpix = header_px
        _warn(f"WARNING: You did not specify --angpix. The pixel size in the image header, {angpix:g} A/px, "
              "is used.")
        if not angpix > 0:
            raise InputError(f"{fn1}: header pixel size is {angpix:g}; give --angpix")
    return fn1, fn2, h1, h2, angpix


def read_mtf_option(args, angpix):
    """The MTF curve of ``--mtf`` (None without it); logs RELION's --mtf_angpix line."""
    from sta.io.postprocess_files import read_mtf

    mtf_angpix = args.mtf_angpix
    if mtf_angpix < 0:
        log.info(" + --mtf_angpix was not provided, assuming pixel size in raw micrographs is the same as "
                 "in particles, %s A/px.", f"{angpix:g}")
        mtf_angpix = angpix
    return read_mtf(args.mtf, mtf_angpix) if args.mtf else None


def run_locres(args):
    """Body shared by sta_local_resolution and sta_postprocess --locres."""
    import numpy as np

    from sta.backend import set_fft_threads
    from sta.io import postprocess_files as ppf
    from sta.io.mrc import write_mrc
    from sta.workflows.locres import LocresOptions, local_resolution

    set_fft_threads(getattr(args, "j", 1))
    fn1, fn2, h1, h2, angpix = read_inputs(args)
    mtf = read_mtf_option(args, angpix)
    if args.mask:
        _warn(" WARNING: --mask is used only to make a histogram of local resolutions; it is not used for "
              "local resolution calculation itself.")
    opts = LocresOptions(angpix=angpix, sampling=args.locres_sampling, maskrad=args.locres_maskrad,
                         edgewidth=args.locres_edgwidth, randomize_at=args.locres_randomize_at,
                         minres=args.locres_minres, bfactor=args.adhoc_bfac, mtf=mtf,
                         filter_edge_width=args.filter_edge_width)

    def progress(done, total):
        if done == total or done % max(total // 10, 1) == 0:
            log.info("  %d/%d windows (%.0f%%)", done, total, 100.0 * done / total)

    control = getattr(args, "pipeline_control", None)
    result = local_resolution(h1, h2, opts, make_rng(args.random_seed), progress=progress,
                              abort_check=lambda: _cli.check_abort(control))
    fscs = f"{args.o}_locres_fscs.star"
    log.info("%-35s%s", "  + Metadata output file: ", fscs)
    ppf.write_locres_fscs(fscs, result.windows, h1.shape[-1], angpix)
    write_mrc(f"{args.o}_locres.mrc", result.locres, angpix)
    write_mrc(f"{args.o}_locres_filtered.mrc", result.filtered, angpix)
    log.info("%-35s%s", "  + Local-resolution map: ", f"{args.o}_locres.mrc")
    log.info("%-35s%s", "  + Locally filtered map: ", f"{args.o}_locres_filtered.mrc")
    if args.mask:
        mask = ppf.read_mask(args.mask, h1.shape)
        values = np.asarray(result.locres)[mask > 0.5]
        log.info("Calculating a histogram of local resolutions within the mask.")
        written = ppf.write_histogram(args.o, values)
        if written:
            log.info("Written the histogram to %s", written[-1])
        if values.size:
            log.info("%-35s%s", "  + median local resolution: ", f"{float(np.median(values)):g}")
    log.info(" done! ")
    return result


def _body(args):
    run_locres(args)


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
