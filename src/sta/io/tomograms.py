"""Tomogram sets (``tomograms.star``, spec §1.1): a global table plus one table per tilt series.

Layouts read by :meth:`TomogramSet.read`

* RELION 5: ``data_global`` with one row per tilt series; ``rlnTomoTiltSeriesStarFile``
  names the per-tilt-series STAR file, whose table is called ``data_<rlnTomoName>``.  A
  per-tilt-series file holding exactly one loop table under another name is accepted with
  a logged warning.
* RELION 4 single file: no ``rlnTomoTiltSeriesStarFile`` column; the per-tilt-series tables
  follow the global table in the same file, named after ``rlnTomoName`` (this is also what
  WarpTools exports, with legacy ``rlnTomoProjX/Y/Z/W`` matrix rows).

Paths inside the files are relative to the RELION project directory (``project_dir``,
default: the current working directory).  They are kept as written; :meth:`resolve` maps
them to file-system paths.

Conventions: sizes ``rlnTomoSizeX/Y/Z`` are in unbinned tilt-series pixels; the tomogram
centre used for particle coordinates is ``(w0/2.0, h0/2.0, d0/2.0)``; pixel sizes are in Å;
the row index of a per-tilt-series table is the frame index used everywhere else.
"""

import collections
import logging
import os
import re

import mrcfile
import numpy as np
import pandas as pd

from sta.errors import FormatError, InputError
from sta.io.image_name import image_file
from sta.io.validate import check_tomogram_set
from sta.io.star import (
    loop_table,
    parse_float_vector,
    read_star,
    resolve_path,
    split_image_name,
    write_star,
)

logger = logging.getLogger(__name__)

GLOBAL_TABLE = "global"
#: legacy (RELION 4) projection-matrix rows, dropped whenever RELION writes a tomogram set
LEGACY_PROJECTION_LABELS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
_PIPELINE_DIR = re.compile(r"/job\d{3}[^/]*/")
_REQUIRED = object()


class TiltSeries:
    """One tilt series: its row of the global table and its per-tilt table.

    Attributes
    ----------
    name : str
        ``rlnTomoName``.
    global_row : dict
        ``{label: value}`` of its row in the global table (plain Python values).
    df : pandas.DataFrame
        Per-tilt table, one row per tilt image in file order (row index = frame index).
    star_file : str or None
        ``rlnTomoTiltSeriesStarFile`` as written (relative to the project directory), or
        None for RELION-4 single-file sets and sets built in memory.
    source : str
        Where the per-tilt table was read from (used in error messages).
    project_dir : str
        RELION project directory used to resolve paths.
    """

    def __init__(self, name, global_row, df, *, star_file=None, source=None,
                 global_source=None, project_dir=None):
        self.name = str(name)
        self.global_row = dict(global_row)
        self.df = df
        self.star_file = star_file
        self.source = source or star_file or "<memory>"
        self.global_source = global_source or "<memory>"
        self.project_dir = project_dir if project_dir is not None else os.getcwd()

    def __repr__(self):
        return f"TiltSeries({self.name!r}, {self.n_tilts} tilts)"

    # -- global values
    def get(self, label, default=_REQUIRED):
        """Return the global-table value ``label``; raise InputError if missing and no default."""
        value = self.global_row.get(label)
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            return value
        if default is _REQUIRED:
            raise InputError(
                f"{self.global_source}: table global has no column {label} "
                f"(needed for tomogram {self.name})"
            )
        return default

    @property
    def n_tilts(self):
        """Number of tilt images (rows of the per-tilt table)."""
        return len(self.df)

    @property
    def pixel_size(self):
        """Tilt-series pixel size in Å (``rlnTomoTiltSeriesPixelSize``, required)."""
        return float(self.get("rlnTomoTiltSeriesPixelSize"))

    @property
    def size(self):
        """Tomogram extent ``(w0, h0, d0)`` in unbinned tilt-series pixels (rlnTomoSizeX/Y/Z)."""
        return tuple(int(self.get(f"rlnTomoSize{a}")) for a in "XYZ")

    @property
    def centre(self):
        """Tomogram centre ``(w0/2.0, h0/2.0, d0/2.0)`` in tilt-series pixels (spec §2.3)."""
        return np.array(self.size, dtype=np.float64) / 2.0

    @property
    def hand(self):
        """``rlnTomoHand`` (+1 or -1): sign of the defocus change with depth (required)."""
        return float(self.get("rlnTomoHand"))

    @property
    def voltage(self):
        """Acceleration voltage in kV (``rlnVoltage``)."""
        return float(self.get("rlnVoltage"))

    @property
    def cs(self):
        """Spherical aberration in mm (``rlnSphericalAberration``)."""
        return float(self.get("rlnSphericalAberration"))

    @property
    def q0(self):
        """Amplitude contrast as a fraction (``rlnAmplitudeContrast``)."""
        return float(self.get("rlnAmplitudeContrast"))

    @property
    def defocus_slope(self):
        """Factor on the depth-dependent defocus (``rlnTomoDefocusSlope``, default 1)."""
        return float(self.get("rlnTomoDefocusSlope", 1.0))

    @property
    def bfactor_per_dose(self):
        """B-factor per e/Å² of dose in Å² (``rlnCtfBfactorPerElectronDose``, default 0)."""
        return float(self.get("rlnCtfBfactorPerElectronDose", 0.0))

    @property
    def optics_group_name(self):
        """``rlnOpticsGroupName``; default the tomogram name (each tomogram its own group)."""
        return str(self.get("rlnOpticsGroupName", self.name))

    # -- per-tilt values
    def column(self, label, default=None):
        """Return the per-tilt column ``label`` as a numpy array of length :attr:`n_tilts`.

        Parameters
        ----------
        label : str
            Label without underscore, e.g. ``"rlnMicrographPreExposure"``.
        default : scalar, optional
            Value broadcast to every tilt when the column is absent; with None (default) a
            missing column raises :class:`~sta.errors.InputError`.
        """
        if label in self.df.columns:
            return self.df[label].to_numpy()
        if default is None:
            raise InputError(f"{self.source}: table {self.name} has no column {label}")
        return np.full(self.n_tilts, default)

    def legacy_projection_rows(self):
        """Return the RELION-4 projection matrices from ``rlnTomoProjX/Y/Z/W``, or None.

        Returns
        -------
        numpy.ndarray or None
            Shape (n_tilts, 4, 4); ``M[f, r]`` is row r of the 4x4 matrix mapping
            tomogram-frame pixels to image-frame pixels of tilt f (spec §2.2).
        """
        present = [lab in self.df.columns for lab in LEGACY_PROJECTION_LABELS]
        if not any(present):
            return None
        if not all(present):
            missing = [lab for lab, p in zip(LEGACY_PROJECTION_LABELS, present) if not p][0]
            raise InputError(f"{self.source}: table {self.name} has legacy projection "
                             f"rows but no column {missing}")
        out = np.empty((self.n_tilts, 4, 4))
        for r, label in enumerate(LEGACY_PROJECTION_LABELS):
            for f, text in enumerate(self.df[label].tolist()):
                row = parse_float_vector(text)
                if row.size != 4:
                    raise InputError(f"{self.source}: table {self.name} row {f + 1} column "
                                     f"{label}: expected 4 values, found {row.size}")
                out[f, r] = row
        return out

    def micrograph_paths(self):
        """Return the file-system paths of ``rlnMicrographName`` (one per tilt, ``n@`` removed)."""
        return [path for path, _ in self.micrograph_entries()]

    def micrograph_entries(self):
        """Return ``(path, section)`` per tilt: resolved file and 1-based ``n@`` section or None."""
        out = []
        where = f"{self.star_file or self.source}: table {self.name}"
        for row, v in enumerate(self.column("rlnMicrographName").tolist(), 1):
            fname, section = split_image_name(v, f"{where} row {row} rlnMicrographName")
            out.append((resolve_path(fname, self.project_dir), section))
        return out


class TomogramSet:
    """An ordered set of :class:`TiltSeries` (spec §1.1).

    Index by name (``ts = tomos["TS_01"]``) or position; iterate over the tilt series.

    Attributes
    ----------
    path : str or None
        File the global table was read from.
    project_dir : str
        RELION project directory used to resolve paths inside the files.
    """

    def __init__(self, tilt_series, global_columns=None, *, path=None, project_dir=None):
        self._series = collections.OrderedDict()
        for ts in tilt_series:
            if ts.name in self._series:
                raise InputError(f"{path or '<memory>'}: table global lists tomogram "
                                 f"{ts.name} twice")
            self._series[ts.name] = ts
        self._global_columns = list(global_columns or [])
        self.path = path
        self.project_dir = project_dir if project_dir is not None else os.getcwd()

    # -- container protocol
    def __len__(self):
        return len(self._series)

    def __iter__(self):
        return iter(self._series.values())

    def __contains__(self, name):
        return name in self._series

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return list(self._series.values())[key]
        try:
            return self._series[key]
        except KeyError:
            raise InputError(f"{self.path or '<memory>'}: no tomogram named {key!r} in the "
                             f"tomogram set") from None

    def __repr__(self):
        return f"TomogramSet({self.path!r}, {len(self)} tomograms)"

    def names(self):
        """Tomogram names in table order."""
        return list(self._series)

    def resolve(self, path):
        """Map a path written in a STAR file to a file-system path (see :func:`resolve_path`)."""
        return resolve_path(path, self.project_dir)

    @property
    def global_df(self):
        """The global table as a DataFrame (built from the tilt series' ``global_row``)."""
        columns = list(self._global_columns)
        for ts in self:
            columns += [c for c in ts.global_row if c not in columns]
        data = {c: _column_array([ts.global_row.get(c) for ts in self]) for c in columns}
        return pd.DataFrame(data, index=pd.RangeIndex(len(self)))

    # -- construction
    @classmethod
    def read(cls, path, project_dir=None):
        """Read a tomogram set (RELION 5 two-level or RELION 4 single-file layout).

        Parameters
        ----------
        path : str
            The global ``tomograms.star`` / ``tilt_series.star`` file.
        project_dir : str, optional
            RELION project directory for the paths inside; default the working directory.
        """
        path = os.fspath(path)
        project_dir = os.fspath(project_dir) if project_dir is not None else os.getcwd()
        star = read_star(path)
        table = star.get(GLOBAL_TABLE)
        if table is None or not table.loop:
            raise InputError(f"{path}: no data_global loop table (expected a tomogram set)")
        gdf = table.df
        if "rlnTomoName" not in gdf.columns:
            raise InputError(f"{path}: table global has no column rlnTomoName")
        if len(gdf) == 0:
            raise InputError(f"{path}: table global has no rows")
        if "rlnTomoTiltSeriesStarFile" in gdf.columns:
            series = _read_two_level(path, gdf, project_dir)
        else:
            logger.info("%s has no rlnTomoTiltSeriesStarFile column: reading the RELION-4 "
                        "single-file layout", path)
            series = _read_single_file(path, star, gdf, project_dir)
        tomograms = cls(series, list(gdf.columns), path=path, project_dir=project_dir)
        check_tomogram_set(tomograms)
        return tomograms

    @classmethod
    def from_tables(cls, global_df, tables, project_dir=None):
        """Build a tomogram set in memory.

        Parameters
        ----------
        global_df : pandas.DataFrame
            Global table, one row per tilt series; needs ``rlnTomoName``.
        tables : dict
            ``{rlnTomoName: per-tilt DataFrame}``.
        project_dir : str, optional
            RELION project directory; default the working directory.
        """
        if "rlnTomoName" not in global_df.columns:
            raise InputError("global table has no column rlnTomoName")
        series = []
        for row in _records(global_df):
            name = str(row["rlnTomoName"])
            if name not in tables:
                raise InputError(f"no per-tilt table for tomogram {name}")
            series.append(TiltSeries(name, row, tables[name].reset_index(drop=True),
                                     star_file=row.get("rlnTomoTiltSeriesStarFile"),
                                     project_dir=project_dir))
        return cls(series, list(global_df.columns), project_dir=project_dir)

    # -- writing
    def write(self, path, keep_legacy=False):
        """Write the global table to ``path`` and every per-tilt table next to it (spec §1.1).

        Each per-tilt table goes to ``<dir of path>/<part of its old path after
        'JobType/jobNNN/'>`` (the old path whole if it is not a pipeline path;
        ``tilt_series/<name>.star`` for RELION-4 single-file input), and
        ``rlnTomoTiltSeriesStarFile`` is updated to the new path relative to the project
        directory.  Legacy ``rlnTomoProjX/Y/Z/W`` columns are dropped unless ``keep_legacy``.
        """
        path = os.fspath(path)
        out_dir = os.path.dirname(os.path.abspath(path))
        groups = collections.OrderedDict()
        for ts in self:
            tail = _pipeline_tail(ts.star_file) if ts.star_file else f"tilt_series/{ts.name}.star"
            out_file = os.path.normpath(os.path.join(out_dir, tail.lstrip("/")))
            groups.setdefault(out_file, []).append(ts)
        for out_file, members in groups.items():
            tables = [loop_table(ts.name, _drop_legacy(ts.df, keep_legacy)) for ts in members]
            write_star(out_file, tables)
            for ts in members:
                ts.star_file = self._project_relative(out_file)
                ts.source = ts.star_file
                ts.global_row["rlnTomoTiltSeriesStarFile"] = ts.star_file
        if "rlnTomoTiltSeriesStarFile" not in self._global_columns:
            self._global_columns.append("rlnTomoTiltSeriesStarFile")
        write_star(path, [loop_table(GLOBAL_TABLE, self.global_df)])
        self.path = path
        for ts in self:
            ts.global_source = path

    def _project_relative(self, file_path):
        rel = os.path.relpath(os.path.abspath(file_path), os.path.abspath(self.project_dir))
        return os.path.abspath(file_path) if rel.startswith("..") else rel

    # -- checks
    def validate_tilt_images(self, name):
        """Check that the tilt images of tomogram ``name`` exist and match the row count.

        A single stack (legacy ``rlnTomoTiltSeriesName``, or every ``rlnMicrographName``
        being ``n@`` of one file) must hold as many images as the table has rows; otherwise
        every per-tilt image file must exist.  Only MRC headers are read.

        Raises
        ------
        InputError
            Naming the per-tilt STAR file, table and image file on a mismatch.
        """
        ts = self[name]
        where = f"{ts.star_file or ts.source}: table {ts.name}"
        stack = ts.global_row.get("rlnTomoTiltSeriesName")
        if stack:
            self._check_stack(where, ts.n_tilts, str(stack))
            return
        if "rlnMicrographName" not in ts.df.columns:
            raise InputError(f"{where} has no column rlnMicrographName (and the global table "
                             "no rlnTomoTiltSeriesName)")
        entries = [split_image_name(v, f"{where} row {row} rlnMicrographName")
                   for row, v in enumerate(ts.df["rlnMicrographName"].tolist(), 1)]
        files = {f for f, _ in entries}
        if len(files) == 1 and all(s is not None for _, s in entries):
            nz = self._check_stack(where, ts.n_tilts, entries[0][0])
            top = max(s for _, s in entries)
            if top > nz:
                raise InputError(f"{where} refers to image {top} but {entries[0][0]} holds {nz}")
            return
        for row, (fname, section) in enumerate(entries, 1):
            full = self.resolve(fname)
            if not os.path.exists(full):
                raise InputError(f"{where} row {row}: tilt image {fname} not found")
            if section is not None and section > _mrc_image_count(full):
                raise InputError(f"{where} row {row}: {fname} has no image {section}")

    def _check_stack(self, where, n_rows, stack):
        stack = image_file(stack, where)
        full = self.resolve(stack)
        if not os.path.exists(full):
            raise InputError(f"{where}: tilt-series stack {stack} not found")
        nz = _mrc_image_count(full)
        if nz != n_rows:
            raise InputError(f"{where} has {n_rows} rows but {stack} holds {nz} images")
        return nz


# --------------------------------------------------------------------------------------
# helpers


def _read_two_level(path, gdf, project_dir):
    cache = {}
    series = []
    for row in _records(gdf):
        name = str(row["rlnTomoName"])
        star_file = str(row["rlnTomoTiltSeriesStarFile"])
        full = resolve_path(star_file, project_dir)
        if full not in cache:
            if not os.path.isfile(full):
                raise InputError(f"{path}: rlnTomoTiltSeriesStarFile of {name} is {star_file}: "
                                 "file not found")
            cache[full] = read_star(full)
        df = _per_ts_table(cache[full], name, star_file)
        series.append(TiltSeries(name, row, df, star_file=star_file, source=star_file,
                                 global_source=path, project_dir=project_dir))
    return series


def _per_ts_table(star, name, star_file):
    table = star.get(name)
    if table is None or not table.loop:
        loops = star.loop_tables()
        if len(loops) != 1:
            raise InputError(f"{star_file}: no table data_{name} "
                             f"(tables: {', '.join(repr(k) for k in star) or 'none'})")
        table = loops[0]
        logger.warning("%s: table is named data_%s, not data_%s; using it for tomogram %s",
                       star_file, table.name, name, name)
    if len(table.df) == 0:
        raise InputError(f"{star_file}: table data_{name} has no rows")
    return table.df


def _read_single_file(path, star, gdf, project_dir):
    series = []
    for row in _records(gdf):
        name = str(row["rlnTomoName"])
        table = star.get(name)
        if table is None or not table.loop:
            raise InputError(f"{path}: RELION-4 tomogram set without rlnTomoTiltSeriesStarFile "
                             f"has no table data_{name}")
        series.append(TiltSeries(name, row, table.df, star_file=None, source=path,
                                 global_source=path, project_dir=project_dir))
    return series


def _records(df):
    cols = list(df.columns)
    return [dict(zip(cols, (_plain(v) for v in values)))
            for values in df.itertuples(index=False, name=None)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _column_array(values):
    if all(isinstance(v, str) for v in values):
        return pd.Series(values, dtype=object)
    arr = np.asarray(values)
    if arr.dtype.kind in "iufb":
        return arr
    return pd.Series(values, dtype=object)


def _pipeline_tail(star_file):
    """Part of a path after ``JobType/jobNNN/`` (RELION ``decomposePipelineFileName``)."""
    match = _PIPELINE_DIR.search(star_file)
    return star_file[match.end():] if match else star_file


def _drop_legacy(df, keep_legacy):
    if keep_legacy:
        return df
    drop = [c for c in LEGACY_PROJECTION_LABELS if c in df.columns]
    return df.drop(columns=drop) if drop else df


def _mrc_image_count(path):
    """Number of images (nz) of an MRC file, from its header only."""
    try:
        with mrcfile.open(path, header_only=True, permissive=False) as mrc:
            return int(mrc.header.nz)
    except (ValueError, OSError) as err:
        raise FormatError(f"{path}: not a readable MRC file ({err})") from err
