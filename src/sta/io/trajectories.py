"""Particle trajectory sets (``motion.star``, spec §1.3).

Layout: a ``general`` list table with ``rlnParticleNumber``, then one loop table per
particle named by its ``rlnTomoParticleName`` (e.g. ``data_TS_01/17``) with columns
``rlnOriginXAngst``, ``rlnOriginYAngst``, ``rlnOriginZAngst``: the particle's 3D
displacement in Å (tomogram frame) in each tilt image, one row per tilt in tilt-series
file row order.  Old files whose tables are named ``0``, ``1``, ... are matched to the
particles by position.
"""

import collections
import logging
import os

import numpy as np
import pandas as pd

from sta.errors import InputError
from sta.io.star import list_table, loop_table, read_star, write_star

logger = logging.getLogger(__name__)

SHIFT_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")


class TrajectorySet:
    """Per-particle, per-tilt 3D shifts.

    Attributes
    ----------
    path : str or None
        File read (for messages).
    positional : bool
        True for old files whose trajectory tables are named by position (``0``, ``1`` ...).
    """

    def __init__(self, shifts=None, *, path=None, positional=False):
        self._shifts = collections.OrderedDict()
        for name, arr in (shifts or {}).items():
            self.set_shifts(name, arr)
        self.path = path
        self.positional = positional

    def __len__(self):
        return len(self._shifts)

    def __contains__(self, name):
        return name in self._shifts

    def __repr__(self):
        return f"TrajectorySet({self.path!r}, {len(self)} trajectories)"

    def names(self):
        """Particle names (table names), in file order."""
        return list(self._shifts)

    @classmethod
    def read(cls, path, particles=None):
        """Read a ``motion.star`` file.

        Parameters
        ----------
        path : str
            Trajectory STAR file.
        particles : ParticleSet, optional
            For old position-named files: the particle names to assign, in order.
        """
        path = os.fspath(path)
        star = read_star(path)
        tables = list(star.values())
        general = star.get("general")
        if general is None or "rlnParticleNumber" not in general.df.columns:
            raise InputError(f"{path}: table general has no rlnParticleNumber")
        count = int(general.df["rlnParticleNumber"].iloc[0])
        trajectories = [t for t in tables if t is not general]
        if count != len(trajectories):
            logger.warning("%s: rlnParticleNumber is %d but the file holds %d trajectories",
                           path, count, len(trajectories))
        positional = bool(trajectories) and trajectories[0].name == "0"
        names = [t.name for t in trajectories]
        if positional:
            logger.warning("%s: trajectories are named by position; matching them to the "
                           "particles in file order", path)
            if particles is not None:
                names = _positional_names(path, particles, len(trajectories))
        out = cls(path=path, positional=positional)
        for name, table in zip(names, trajectories):
            if name in out._shifts:
                raise InputError(f"{path}: two trajectories are named {name}")
            out._shifts[name] = _table_shifts(path, table)
        return out

    @classmethod
    def from_shifts(cls, shifts):
        """Build from ``{particle name: (n_tilts, 3) array in Å}``."""
        return cls(shifts)

    def set_shifts(self, name, shifts):
        """Set the trajectory of particle ``name``: array (n_tilts, 3) in Å."""
        arr = np.asarray(shifts, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"trajectory of {name}: expected shape (n_tilts, 3), got {arr.shape}")
        self._shifts[str(name)] = arr

    def shifts(self, particle, tilt_series=None):
        """Return the shifts (Å, tomogram frame) of one particle, shape (n_tilts, 3).

        Parameters
        ----------
        particle : str or int
            ``rlnTomoParticleName`` or position in the file.
        tilt_series : TiltSeries, optional
            When given, the trajectory length must equal its number of tilts.
        """
        name = self.names()[particle] if isinstance(particle, (int, np.integer)) else particle
        if name not in self._shifts:
            raise InputError(f"{self.path or '<memory>'}: no trajectory for particle {name!r}")
        arr = self._shifts[name]
        if tilt_series is not None and len(arr) != tilt_series.n_tilts:
            raise InputError(f"{self.path or '<memory>'}: trajectory {name} has {len(arr)} rows "
                             f"but tilt series {tilt_series.name} has {tilt_series.n_tilts} tilts")
        return arr

    def validate(self, particles, tomograms):
        """Check every particle has a trajectory as long as its tilt series (InputError if not)."""
        for i in range(particles.n):
            name = particles.particle_name(i)
            self.shifts(name, tomograms[particles.tomo_name(i)])

    def write(self, path):
        """Write ``general`` + one table per particle, atomically."""
        tables = [list_table("general", {"rlnParticleNumber": len(self)})]
        for name, arr in self._shifts.items():
            df = pd.DataFrame({label: arr[:, j] for j, label in enumerate(SHIFT_LABELS)})
            tables.append(loop_table(name, df))
        write_star(path, tables)


def _table_shifts(path, table):
    for label in SHIFT_LABELS:
        if label not in table.df.columns:
            raise InputError(f"{path}: table data_{table.name} has no column {label}")
    return table.df[list(SHIFT_LABELS)].to_numpy(dtype=np.float64)


def _positional_names(path, particles, n_tables):
    if n_tables < particles.n:
        raise InputError(f"{path}: {n_tables} trajectories for {particles.n} particles")
    return [particles.particle_name(i) for i in range(particles.n)] + [
        str(k) for k in range(particles.n, n_tables)]
