"""Select, de-duplicate or re-centre the particles of a STAR file (drop-in for relion_star_handler).

Operations (one per run, as pipelines use them; with none the input is copied):
  --select LABEL --minval A --maxval B   keep rows with A <= LABEL <= B (numeric label)
  --select_by_str LABEL --select_include TEXT | --select_exclude TEXT
  --remove_duplicates D   within each tomogram (rlnTomoName) or micrograph
                          (rlnMicrographName), remove a particle when a later one lies within
                          D Å; as RELION, the last particle of each cluster is kept.
                          Tomography: positions rlnCenteredCoordinate*Angst - A_sub·rlnOrigin*Angst
                          (A_sub from rlnTomoSubtomogramRot/Tilt/Psi, identity when absent).
                          Removed rows go to <out>_removed.star.
  --center [--center_X/Y/Z PIX]   re-centre on a point of the reference (pixels of the
                          particle images, rlnImagePixelSize): rlnOrigin*Angst -= A·c·angpix.
  --fold_origins          (sta) then fold A_sub·rlnOrigin*Angst into
                          rlnCenteredCoordinate*Angst and zero the origins, as
                          relion_tomo_subtomo does on extraction (re-extract afterwards:
                          rlnImageName still points at images cut at the old positions).
The general and optics tables are written back unchanged.

Example:
  sta_star_handler --i Refine3D/job010/run_data.star --o Select/job011/particles.star \\
                   --remove_duplicates 30
"""

import logging
import os

import numpy as np

from sta.commands import _cli
from sta.errors import InputError

log = logging.getLogger(__name__)

PROG = "sta_star_handler"


def add_args(parser):
    g = parser.add_argument_group("General options")
    g.add_argument("--i", required=True, type=_cli.existing_file, help="input STAR file")
    g.add_argument("--o", default="out.star", help="output STAR file")
    g.add_argument("--i_tablename", default="",
                   help="table to operate on (default: data_particles, else the only data table)")
    g.add_argument("--ignore_optics", action="store_true",
                   help="files without an optics table: take the pixel size from --angpix")
    g.add_argument("--angpix", type=_cli.positive_float, default=1.0,
                   help="pixel size (Å) of the particle images with --ignore_optics or no optics table")
    s = parser.add_argument_group("Select options")
    s.add_argument("--select", default="", metavar="LABEL",
                   help="numeric label to select on (e.g. rlnClassNumber)")
    s.add_argument("--minval", type=float, default=-99999999.0, help="lowest value kept (inclusive)")
    s.add_argument("--maxval", type=float, default=99999999.0, help="highest value kept (inclusive)")
    s.add_argument("--select_by_str", default="", metavar="LABEL",
                   help="text label to select on (e.g. rlnTomoName)")
    s.add_argument("--select_include", default="", help="keep rows whose --select_by_str contains this")
    s.add_argument("--select_exclude", default="", help="drop rows whose --select_by_str contains this")
    c = parser.add_argument_group("Center options")
    c.add_argument("--center", action="store_true",
                   help="re-centre the particles on --center_X/Y/Z of the reference")
    c.add_argument("--center_X", type=float, default=0.0, help="x of the new centre in the reference (pixels)")
    c.add_argument("--center_Y", type=float, default=0.0, help="y of the new centre in the reference (pixels)")
    c.add_argument("--center_Z", type=float, default=0.0, help="z of the new centre in the reference (pixels)")
    c.add_argument("--fold_origins", action="store_true",
                   help="(sta) fold the origins into rlnCenteredCoordinate*Angst and zero them")
    d = parser.add_argument_group("Duplicate removal")
    d.add_argument("--remove_duplicates", type=float, default=-1.0, metavar="D",
                   help="remove particles within D Å of a later one (<= 0: off)")
    d.add_argument("--image_angpix", type=float, default=-1.0,
                   help="micrograph pixel size (Å) for rlnCoordinateX/Y (-1: the optics group's "
                        "rlnImagePixelSize); not used for tomography particles")


# ----------------------------------------------------------------- reading and writing

def _read(args):
    from sta.io.star import read_star

    star = read_star(args.i)
    if args.i_tablename:
        matches = [k for k, t in star.items() if t.name == args.i_tablename]
        if not matches:
            raise InputError(f"{args.i}: no table data_{args.i_tablename} (--i_tablename); "
                             f"tables: {', '.join(t.name or '(unnamed)' for t in star.values())}")
        return star, matches[0]
    if "particles" in star and star["particles"].loop:
        return star, "particles"
    others = [k for k, t in star.items() if t.loop and t.name not in ("optics", "general")]
    if len(others) != 1:
        raise InputError(f"{args.i}: no data_particles table and {len(others)} other loop tables; "
                         "name one with --i_tablename")
    return star, others[0]


def _write(path, star, key, df):
    from sta.io.star import StarTable, write_star

    star[key] = StarTable(star[key].name, df.reset_index(drop=True), loop=True)
    write_star(path, star)  # every other table (general, optics, ...) as read


def _pixel_sizes(star, df, args, label="rlnImagePixelSize"):
    """Pixel size (Å) of every row from its optics group (``label``), or --angpix."""
    optics = star.get("optics")
    if args.ignore_optics or optics is None or not optics.loop:
        return np.full(len(df), args.angpix)
    table = optics.df
    if label not in table.columns:
        raise InputError(f"{args.i}: table optics has no column {label}")
    groups = (df["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in df.columns
              else np.ones(len(df), dtype=np.int64))
    numbers = (table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table.columns
               else np.arange(1, len(table) + 1))
    size_of = dict(zip(numbers.tolist(), table[label].to_numpy(dtype=np.float64).tolist()))
    unknown = sorted(set(groups.tolist()) - set(size_of))
    if unknown:
        raise InputError(f"{args.i}: table optics has no optics group {unknown[0]}")
    return np.array([size_of[g] for g in groups.tolist()])


def _first_optics_pixel_size(star, args):
    """RELION's assumption for micrographs: the first optics group's rlnImagePixelSize."""
    optics = star.get("optics")
    if optics is None or not optics.loop or "rlnImagePixelSize" not in optics.df.columns:
        raise InputError(f"{args.i}: no rlnImagePixelSize in table optics; give --image_angpix")
    return float(optics.df["rlnImagePixelSize"].iloc[0])


# ----------------------------------------------------------------- operations

def _operations(args):
    ops = []
    if args.select:
        ops.append("--select")
    if args.select_by_str:
        ops.append("--select_by_str")
    if args.center or args.fold_origins:
        ops.append("--center/--fold_origins")
    if args.remove_duplicates > 0:
        ops.append("--remove_duplicates")
    if len(ops) > 1:
        raise InputError(f"give one operation per run, got {' and '.join(ops)}")
    return ops[0] if ops else None


def _select(args, star, key, df):
    from sta.workflows.star_ops import select_range

    keep = select_range(df, args.select, args.minval, args.maxval, where=f"{args.i}: table {key}")
    return df[keep]


def _select_by_str(args, star, key, df):
    from sta.workflows.star_ops import select_by_string

    if bool(args.select_include) == bool(args.select_exclude):
        raise InputError("--select_by_str needs exactly one of --select_include and --select_exclude")
    text = args.select_include or args.select_exclude
    keep = select_by_string(df, args.select_by_str, text, exclude=bool(args.select_exclude),
                            where=f"{args.i}: table {key}")
    return df[keep]


def _center(args, star, key, df):
    from sta.workflows.star_ops import ORIGIN_LABELS, fold_origins, recentre_origins

    tomo = "rlnTomoName" in df.columns
    out = df.copy()
    if args.center:
        centre = np.array([args.center_X, args.center_Y, args.center_Z])
        angpix = _pixel_sizes(star, df, args) if np.any(centre) else np.ones(len(df))
        origins = recentre_origins(df, centre, angpix)
        dims = 3 if (tomo or ORIGIN_LABELS[2] in df.columns) else 2
        for j, label in enumerate(ORIGIN_LABELS[:dims]):
            out[label] = origins[:, j]
        log.info(" Re-centred %d particles on (%g, %g, %g) pixels of the reference", len(df), *centre)
    if args.fold_origins:
        if not tomo:
            raise InputError(f"{args.i}: --fold_origins needs tomography particles (rlnTomoName)")
        out = fold_origins(out, where=f"{args.i}: table {key}")
        if "rlnImageName" in out.columns:
            log.warning(" WARNING: origins folded into the coordinates: rlnImageName still points at "
                        "images extracted at the old positions; re-extract (sta_subtomo) before refining")
    return out


def _remove_duplicates(args, star, key, df):
    from sta.workflows.star_ops import duplicates, micrograph_centres, tomo_centres

    where = f"{args.i}: table {key}"
    if args.ignore_optics:
        raise InputError("--remove_duplicates does not work with --ignore_optics (as in RELION)")
    if "rlnMicrographName" in df.columns:
        group_label = "rlnMicrographName"
        px = args.image_angpix if args.image_angpix > 0 else _first_optics_pixel_size(star, args)
        positions = micrograph_centres(df, 1.0 / px, where)
        threshold = args.remove_duplicates / px
        log.info(" + The minimum inter-particle distance %g A corresponds to %g px in the "
                 "micrograph coordinate (rlnCoordinateX/Y).", args.remove_duplicates, threshold)
    elif "rlnTomoName" in df.columns:
        group_label = "rlnTomoName"
        positions = tomo_centres(df, where)
        threshold = args.remove_duplicates
    else:
        raise InputError(f"{where}: no rlnMicrographName or rlnTomoName column")
    groups = df[group_label].astype(str).to_numpy()
    removed = duplicates(groups, positions, threshold)
    stem = os.path.splitext(args.o)[0]
    from sta.io.star import StarTable, write_star

    write_star(f"{stem}_removed.star", [StarTable(star[key].name, df[removed].reset_index(drop=True))])
    log.info("Removed %d duplicated objects from %d objects.", int(removed.sum()), len(df))
    return df[~removed]


_OPERATIONS = {"--select": _select, "--select_by_str": _select_by_str,
               "--center/--fold_origins": _center, "--remove_duplicates": _remove_duplicates}


def _body(args):
    op = _operations(args)
    star, key = _read(args)
    df = star[key].df
    out = _OPERATIONS[op](args, star, key, df) if op else df
    if len(out) == 0:
        log.warning(" WARNING: no rows left in table %s; %s has none", star[key].name, args.o)
    _write(args.o, star, key, out)
    log.info(" Written: %s with %d item(s)", args.o, len(out))
    log.info(" Done!")


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
