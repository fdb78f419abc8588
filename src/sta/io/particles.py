"""Particle sets (``particles.star``, spec §1.2): ``general``, ``optics`` and ``particles`` tables.

Conventions (spec §2.3): ``rlnCenteredCoordinateX/Y/ZAngst`` are positions in Å relative to
the tomogram centre ``c = (w0/2.0, h0/2.0, d0/2.0)`` (tilt-series pixels); legacy
``rlnCoordinateX/Y/Z`` are positions in tilt-series pixels from the tomogram corner
(``centred_Å = (coord - c) · px`` with ``px`` the optics group's
``rlnTomoTiltSeriesPixelSize``).  Euler angles (degrees, RELION ZYZ) are kept exactly as
stored, even outside (-180, 180].
"""

import logging
import os

import numpy as np
import pandas as pd

from sta.errors import InputError
from sta.io.star import (
    list_table,
    loop_table,
    parse_int_vector,
    read_star,
    resolve_path,
    write_star,
)
from sta.io.tomograms import TomogramSet
from sta.io.validate import check_particle_set

logger = logging.getLogger(__name__)

CENTRED_LABELS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                  "rlnCenteredCoordinateZAngst")
LEGACY_LABELS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
STACK2D_LABEL = "rlnTomoSubTomosAre2DStacks"
_OPTICS_FROM_TOMOGRAMS = (  # (optics label, TiltSeries attribute), in RELION's column order
    ("rlnVoltage", "voltage"),
    ("rlnSphericalAberration", "cs"),
    ("rlnAmplitudeContrast", "q0"),
    ("rlnTomoTiltSeriesPixelSize", "pixel_size"),
)


class ParticleSet:
    """Particles of a tomography project.

    Attributes
    ----------
    df : pandas.DataFrame
        The particle table (one row per particle, file order); unknown columns are kept.
    optics : pandas.DataFrame or None
        The optics table, or None for legacy files without one (and no tomogram set).
    general : dict
        The ``general`` list table; ``rlnTomoSubTomosAre2DStacks`` defaults to 0.
    tomograms : TomogramSet or None
        Tomogram set given at read time (used to build optics and convert coordinates).
    path : str or None
        File read.
    project_dir : str
        RELION project directory for the paths inside.
    """

    def __init__(self, df, optics=None, general=None, *, tomograms=None, path=None,
                 project_dir=None):
        self.df = df
        self.optics = optics
        self.general = dict(general or {})
        self.general.setdefault(STACK2D_LABEL, 0)
        self.tomograms = tomograms
        self.path = path
        self.project_dir = project_dir if project_dir is not None else os.getcwd()
        self._where = path or "<memory>"
        if self.optics is None and tomograms is not None:
            self._build_optics()
        self._name_particles()

    # -- construction
    @classmethod
    def read(cls, path, tomograms=None, project_dir=None):
        """Read a particle set.

        Parameters
        ----------
        path : str
            Particle STAR file.
        tomograms : TomogramSet or str, optional
            Tomogram set (or the path of its STAR file) used to build a missing optics table
            and to convert legacy coordinates.
        project_dir : str, optional
            RELION project directory; default the working directory.
        """
        path = os.fspath(path)
        project_dir = os.fspath(project_dir) if project_dir is not None else os.getcwd()
        if isinstance(tomograms, (str, os.PathLike)):
            tomograms = TomogramSet.read(tomograms, project_dir=project_dir)
        star = read_star(path)
        general = star["general"].as_dict() if "general" in star else {}
        optics = star["optics"].df if "optics" in star and star["optics"].loop else None
        table = _particle_table(star, path)
        if len(table.df) == 0:
            raise InputError(f"{path}: table data_{table.name} has no particles")
        particles = cls(table.df, optics, general, tomograms=tomograms, path=path,
                        project_dir=project_dir)
        check_particle_set(particles, tomograms)
        return particles

    @classmethod
    def from_tables(cls, df, optics=None, general=None, tomograms=None, project_dir=None):
        """Build a particle set in memory (same rules as :meth:`read`)."""
        return cls(df.reset_index(drop=True), optics, general, tomograms=tomograms,
                   project_dir=project_dir)

    def _build_optics(self):
        """One optics group per distinct optics-group name, in order of first appearance."""
        names = self._column("rlnTomoName").astype(str)
        group_of_tomo, rows = {}, []
        for tomo in pd.unique(names):
            ts = self.tomograms[tomo] if tomo in self.tomograms else None
            if ts is None:
                raise InputError(f"{self._where}: table particles: rlnTomoName {tomo!r} is not in "
                                 f"the tomogram set {self.tomograms.path or '<memory>'}")
            group = ts.optics_group_name
            if group not in [r["rlnOpticsGroupName"] for r in rows]:
                row = {label: getattr(ts, attr) for label, attr in _OPTICS_FROM_TOMOGRAMS}
                row["rlnOpticsGroup"] = len(rows) + 1
                row["rlnOpticsGroupName"] = group
                rows.append(row)
            group_of_tomo[tomo] = [r["rlnOpticsGroupName"] for r in rows].index(group) + 1
        optics = pd.DataFrame(rows)
        optics["rlnOpticsGroupName"] = optics["rlnOpticsGroupName"].astype(object)
        self.optics = optics
        self.df["rlnOpticsGroup"] = np.array([group_of_tomo[t] for t in names], dtype=np.int64)

    def _name_particles(self):
        """Add ``rlnTomoParticleName = <rlnTomoName>/<k>`` (k from 1 per tomogram) if absent."""
        if "rlnTomoParticleName" in self.df.columns or "rlnTomoName" not in self.df.columns:
            return
        logger.warning("%s: particles have no rlnTomoParticleName; naming them "
                       "<rlnTomoName>/<k>", self._where)
        tomo = self.df["rlnTomoName"].astype(str)
        k = tomo.groupby(tomo, sort=False).cumcount() + 1
        names = [f"{t}/{i}" for t, i in zip(tomo.tolist(), k.tolist())]
        self.df["rlnTomoParticleName"] = pd.Series(names, dtype=object, index=self.df.index)

    # -- accessors
    def __len__(self):
        return len(self.df)

    def __repr__(self):
        return f"ParticleSet({self.path!r}, {self.n} particles)"

    @property
    def n(self):
        """Number of particles."""
        return len(self.df)

    @property
    def is_stack2d(self):
        """True when the particles are 2D stacks (``rlnTomoSubTomosAre2DStacks``)."""
        return bool(int(self.general.get(STACK2D_LABEL, 0)))

    def resolve(self, path):
        """Map a path written in a STAR file to a file-system path."""
        return resolve_path(path, self.project_dir)

    def _column(self, label):
        if label not in self.df.columns:
            raise InputError(f"{self._where}: table particles has no column {label}")
        return self.df[label]

    def has(self, label):
        """True when the particle table has column ``label``."""
        return label in self.df.columns

    def tomo_names(self):
        """Distinct ``rlnTomoName`` values in order of first appearance."""
        return [str(v) for v in pd.unique(self._column("rlnTomoName"))]

    def tomo_name(self, i):
        """``rlnTomoName`` of particle ``i`` (0-based row)."""
        return str(self._column("rlnTomoName").iloc[i])

    def particle_name(self, i):
        """``rlnTomoParticleName`` of particle ``i``."""
        return str(self._column("rlnTomoParticleName").iloc[i])

    def indices_by_tomogram(self):
        """Return ``{rlnTomoName: int64 array of row indices}`` in order of first appearance."""
        names = self._column("rlnTomoName").astype(str).to_numpy()
        return {t: np.flatnonzero(names == t) for t in pd.unique(names)}

    def optics_group(self, i):
        """1-based ``rlnOpticsGroup`` of particle ``i`` (1 when the column is absent)."""
        if "rlnOpticsGroup" not in self.df.columns:
            return 1
        return int(self.df["rlnOpticsGroup"].iloc[i])

    def optics_row(self, i):
        """Return the optics-table row (dict) of particle ``i``'s optics group."""
        if self.optics is None:
            raise InputError(f"{self._where}: no optics table (and no tomogram set to build one)")
        group = self.optics_group(i)
        if "rlnOpticsGroup" in self.optics.columns:
            match = np.flatnonzero(self.optics["rlnOpticsGroup"].to_numpy() == group)
            row = int(match[0]) if match.size else None
        else:
            row = group - 1 if 0 < group <= len(self.optics) else None
        if row is None:
            raise InputError(f"{self._where}: table optics has no optics group {group} "
                             f"(particle {i + 1})")
        return {c: _plain(self.optics[c].iloc[row]) for c in self.optics.columns}

    def pixel_size(self, i):
        """Tilt-series pixel size (Å) of particle ``i``'s optics group."""
        row = self.optics_row(i)
        if "rlnTomoTiltSeriesPixelSize" not in row:
            raise InputError(f"{self._where}: table optics has no column "
                             "rlnTomoTiltSeriesPixelSize")
        return float(row["rlnTomoTiltSeriesPixelSize"])

    def pixel_sizes(self):
        """Tilt-series pixel size (Å) of every particle, shape (n,)."""
        if self.optics is None:
            raise InputError(f"{self._where}: no optics table (and no tomogram set to build one)")
        if "rlnTomoTiltSeriesPixelSize" not in self.optics.columns:
            raise InputError(f"{self._where}: table optics has no column "
                             "rlnTomoTiltSeriesPixelSize")
        by_group = {}
        groups = (self.df["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in self.df.columns
                  else np.ones(self.n, dtype=np.int64))
        for g in np.unique(groups):
            first = int(np.flatnonzero(groups == g)[0])
            by_group[g] = self.pixel_size(first)
        return np.array([by_group[g] for g in groups], dtype=np.float64)

    def angles(self):
        """Euler angles ``(rot, tilt, psi)`` in degrees as stored, shape (n, 3); absent = 0."""
        return self._vector3(ANGLE_LABELS)

    def origins_angst(self):
        """``rlnOriginX/Y/ZAngst`` in Å, shape (n, 3); absent = 0."""
        return self._vector3(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"))

    def _vector3(self, labels):
        out = np.zeros((self.n, 3))
        for j, label in enumerate(labels):
            if label in self.df.columns:
                out[:, j] = self.df[label].to_numpy(dtype=np.float64)
        return out

    def visible_frames(self, i):
        """``rlnTomoVisibleFrames`` of particle ``i`` as an int array (1 = tilt used)."""
        return parse_int_vector(self._column("rlnTomoVisibleFrames").iloc[i])

    @property
    def has_legacy_coordinates(self):
        """True when the table has legacy ``rlnCoordinateX/Y/Z`` (tilt-series pixels)."""
        return all(c in self.df.columns for c in LEGACY_LABELS)

    @property
    def has_centred_coordinates(self):
        """True when the table has ``rlnCenteredCoordinateX/Y/ZAngst``."""
        return all(c in self.df.columns for c in CENTRED_LABELS)

    def centered_coordinates_angst(self):
        """Positions relative to the tomogram centre in Å, shape (n, 3).

        Taken from ``rlnCenteredCoordinate*Angst`` or, for legacy files, converted from
        ``rlnCoordinateX/Y/Z`` as ``(coord - (w0/2.0, h0/2.0, d0/2.0)) · px`` (needs the
        tomogram set and the optics pixel size).
        """
        if self.has_centred_coordinates:
            return self.df[list(CENTRED_LABELS)].to_numpy(dtype=np.float64)
        if not self.has_legacy_coordinates:
            raise InputError(f"{self._where}: table particles has no column {CENTRED_LABELS[0]}")
        if self.tomograms is None:
            raise InputError(f"{self._where}: converting rlnCoordinateX/Y/Z to "
                             "rlnCenteredCoordinate*Angst needs the tomogram set")
        coords = self.df[list(LEGACY_LABELS)].to_numpy(dtype=np.float64)
        px = self.pixel_sizes()
        out = np.empty_like(coords)
        for tomo, rows in self.indices_by_tomogram().items():
            out[rows] = (coords[rows] - self.tomograms[tomo].centre) * px[rows, None]
        return out

    # -- writing
    def write(self, path, keep_legacy=False):
        """Write ``general``, ``optics`` and ``particles`` (RELION's order) to ``path``.

        With ``keep_legacy=False`` legacy ``rlnCoordinateX/Y/Z`` are converted to
        ``rlnCenteredCoordinate*Angst`` (when those are absent and a tomogram set is known)
        and dropped, as RELION does; without a tomogram set they are kept (with a warning)
        rather than lost.  ``keep_legacy=True`` writes the particle table unchanged.
        """
        df = self.df if keep_legacy else self._without_legacy()
        tables = [list_table("general", self.general)]
        if self.optics is not None:
            tables.append(loop_table("optics", self.optics))
        tables.append(loop_table("particles", df))
        write_star(path, tables)

    def _without_legacy(self):
        if not self.has_legacy_coordinates:
            return self.df
        if not self.has_centred_coordinates:
            if self.tomograms is None:
                logger.warning("%s: legacy rlnCoordinateX/Y/Z kept: no tomogram set to convert "
                               "them to rlnCenteredCoordinate*Angst", self._where)
                return self.df
            df = self.df.copy()
            centred = self.centered_coordinates_angst()
            for j, label in enumerate(CENTRED_LABELS):
                df[label] = centred[:, j]
            return df.drop(columns=list(LEGACY_LABELS))
        return self.df.drop(columns=list(LEGACY_LABELS))


def _particle_table(star, path):
    """The ``particles`` table, or the file's only other loop table (legacy/Select files)."""
    table = star.get("particles")
    if table is not None and table.loop:
        return table
    others = [t for t in star.loop_tables() if t.name not in ("optics", "general")]
    if len(others) == 1:
        return others[0]
    raise InputError(f"{path}: no data_particles table "
                     f"(tables: {', '.join(repr(k) for k in star) or 'none'})")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
