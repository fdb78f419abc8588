"""Create a soft solvent mask from a map, or de novo (drop-in for relion_mask_create).

The input map is optionally low-pass filtered (--lowpass, raised-cosine edge of 2 shells),
optionally combined with a second map (--and/--or/--and_not/--or_not), binarised at
--ini_threshold (value >= threshold), extended (or, negative, shrunk) by --extend_inimask
voxels and given a raised-cosine soft edge of --width_soft_edge voxels.  --denovo makes a
spherical crown mask of --box_size voxels instead.  The output header carries the pixel
size (--angpix, else the input header; 1.0 for de novo masks without --angpix).

Example:
  sta_mask_create --i Reconstruct/job005/merged.mrc --o MaskCreate/job006/mask.mrc \\
                  --lowpass 15 --angpix -1 --ini_threshold 0.02 --extend_inimask 3 \\
                  --width_soft_edge 3 --j 1
"""

import logging
import os
import sys

from sta.commands import _cli
from sta.errors import InputError

log = logging.getLogger(__name__)

PROG = "sta_mask_create"


def add_args(parser):
    g = parser.add_argument_group("Mask creation options")
    g.add_argument("--i", default="", help="input map to threshold for the initial binary mask")
    g.add_argument("--o", default="mask.mrc", help="output mask")
    g.add_argument("--and", dest="and_map", default="", metavar="MAP",
                   help="voxels are 1 where the input AND this map are above --ini_threshold")
    g.add_argument("--or", dest="or_map", default="", metavar="MAP",
                   help="voxels are 1 where the input OR this map are above --ini_threshold")
    g.add_argument("--and_not", dest="and_not_map", default="", metavar="MAP",
                   help="voxels are 1 where the input is above --ini_threshold AND this map below it")
    g.add_argument("--or_not", dest="or_not_map", default="", metavar="MAP",
                   help="voxels are 1 where the input is above --ini_threshold OR this map below it")
    g.add_argument("--ini_threshold", type=float, default=0.01, help="threshold for binarisation")
    g.add_argument("--extend_inimask", type=float, default=0.0,
                   help="extend the binary mask by this many voxels (negative: shrink)")
    g.add_argument("--width_soft_edge", type=_cli.nonneg_float, default=0.0,
                   help="width (voxels) of the raised-cosine soft edge")
    g.add_argument("--invert", action="store_true", help="invert the final mask")
    g.add_argument("--helix", action="store_true", help="keep only the central --z_percentage along z")
    g.add_argument("--lowpass", type=float, default=-1.0,
                   help="low-pass filter (Å) of the input map before binarisation (<= 0: none)")
    g.add_argument("--angpix", type=float, default=-1.0,
                   help="pixel size (Å) for the low-pass filter and the header (-1: from the input)")
    g.add_argument("--z_percentage", type=float, default=0.3,
                   help="fraction of the box along z kept with --helix")
    g.add_argument("--j", type=_cli.positive_int, default=1, help="number of threads")
    d = parser.add_argument_group("De novo mask creation")
    d.add_argument("--denovo", action="store_true", help="create a mask de novo")
    d.add_argument("--box_size", type=int, default=-1, help="box size of the mask (voxels)")
    d.add_argument("--inner_radius", type=float, default=0.0, help="inner radius (voxels)")
    d.add_argument("--outer_radius", type=float, default=99999.0, help="outer radius (voxels)")
    d.add_argument("--center_x", type=float, default=0.0, help="x of the centre (voxels from the box centre)")
    d.add_argument("--center_y", type=float, default=0.0, help="y of the centre (voxels from the box centre)")
    d.add_argument("--center_z", type=float, default=0.0, help="z of the centre (voxels from the box centre)")


def _warn(*lines):
    for text in lines:
        print(text, file=sys.stderr)


def _combination(args):
    given = [(name, path) for name, path in (("and", args.and_map), ("or", args.or_map),
                                             ("and_not", args.and_not_map), ("or_not", args.or_not_map)) if path]
    if len(given) > 1:
        # RELION silently uses the first of --and, --or, --and_not, --or_not
        _warn(f" WARNING: only --{given[0][0]} is used; --{', --'.join(n for n, _ in given[1:])} ignored")
    return given[0] if given else (None, None)


def _check_args(args):
    if not args.i and not args.denovo:
        raise InputError("provide --i (a map to threshold) or --denovo (with --box_size)")
    if args.denovo and args.box_size <= 0:
        raise InputError("for de novo mask creation, give the box size in --box_size (> 0)")
    if args.helix:
        if not 0.1 <= args.z_percentage <= 0.9:
            raise InputError(f"--z_percentage {args.z_percentage:g}: expected a value in [0.1, 0.9]")
        if args.width_soft_edge < 0.001:
            raise InputError("--helix needs a soft edge: give --width_soft_edge > 0")


def _body(args):
    import numpy as np

    from sta.backend import set_fft_threads
    from sta.io.mrc import read_mrc, write_mrc
    from sta.workflows.mask import denovo_mask, mask_from_map

    _check_args(args)
    set_fft_threads(args.j)
    angpix = args.angpix
    if args.denovo:
        mask = denovo_mask(args.box_size, args.inner_radius, args.outer_radius, args.width_soft_edge,
                           (args.center_x, args.center_y, args.center_z))
        if angpix < 0:
            _warn("WARNING: The pixel size was not specified. 1.00 is set to the output mask.")
            angpix = 1.0
    else:
        log.info(" Creating a mask ...")
        volume, header_px = read_mrc(args.i)
        if volume.ndim != 3:
            raise InputError(f"{args.i}: expected a 3D map, got shape {volume.shape}")
        if angpix < 0:
            angpix = header_px
            _warn("WARNING: The pixel size (--angpix) was not specified.",
                  f"         The value in the input image header (= {angpix:g}) is used instead.")
        if args.lowpass > 0 and not angpix > 0:
            raise InputError(f"{args.i}: header pixel size is {angpix:g}; give --angpix for --lowpass")
        if args.lowpass > 0 and len(set(volume.shape)) != 1:
            raise InputError(f"{args.i}: --lowpass needs a cubic map, got shape {volume.shape[::-1]} (x, y, z)")
        how, other_path = _combination(args)
        other = None
        if other_path:
            other, _ = read_mrc(other_path)
            if other.shape != volume.shape:
                raise InputError(f"{other_path}: shape {other.shape[::-1]} differs from --i {args.i} "
                                 f"{volume.shape[::-1]} (x, y, z); expected the same box")
        mask = mask_from_map(volume, angpix, args.lowpass, args.ini_threshold, args.extend_inimask,
                             args.width_soft_edge, other=other, combine=how, helix=args.helix,
                             z_percentage=args.z_percentage)
    if args.invert:
        mask = 1.0 - mask
    if not np.any(mask > 0):
        _warn(f" WARNING: the mask is empty (no voxel of {args.i} reaches --ini_threshold "
              f"{args.ini_threshold:g})" if not args.denovo else " WARNING: the mask is empty")
    directory = os.path.dirname(args.o)
    if directory:
        os.makedirs(directory, exist_ok=True)
    write_mrc(args.o, mask, angpix)
    log.info(" Done creating mask! Written out: %s", args.o)


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
