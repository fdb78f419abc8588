"""Optimisation sets (``optimisation_set.star``, spec §1.4): the files a tomo job works on.

One table (any block name; list or loop form) with the labels below.  Empty strings
(``""``) mean "absent".  Paths are relative to the RELION project directory.

=============  ============================  ==================
field          label                         CLI override
=============  ============================  ==================
particles      rlnTomoParticlesFile          ``--p``
tomograms      rlnTomoTomogramsFile          ``--t``
trajectories   rlnTomoTrajectoriesFile       ``--mot``
manifolds      rlnTomoManifoldsFile          ``--man``
ref1           rlnTomoReferenceMap1File      ``--ref1``
ref2           rlnTomoReferenceMap2File      ``--ref2``
mask           rlnTomoReferenceMaskFile      ``--mask``
fsc            rlnTomoReferenceFscFile       ``--fsc``
=============  ============================  ==================

[QUIRK, spec §1.4] RELION's C++ tomo programs write only particles, tomograms,
trajectories and manifolds, in a block with an empty name (``data_``); that is
``write(path)``'s default.
"""

import collections
import os

import numpy as np

from sta.errors import InputError
from sta.io.particles import ParticleSet
from sta.io.star import list_table, read_star, resolve_path, write_star
from sta.io.tomograms import TomogramSet
from sta.io.trajectories import TrajectorySet

FIELDS = collections.OrderedDict([
    ("particles", "rlnTomoParticlesFile"),
    ("tomograms", "rlnTomoTomogramsFile"),
    ("trajectories", "rlnTomoTrajectoriesFile"),
    ("manifolds", "rlnTomoManifoldsFile"),
    ("ref1", "rlnTomoReferenceMap1File"),
    ("ref2", "rlnTomoReferenceMap2File"),
    ("mask", "rlnTomoReferenceMaskFile"),
    ("fsc", "rlnTomoReferenceFscFile"),
])
#: fields written by RELION's ``OptimisationSet::write``
TOMO_FIELDS = ("particles", "tomograms", "trajectories", "manifolds")
_OVERRIDES = {"p": "particles", "t": "tomograms", "mot": "trajectories", "man": "manifolds",
              "ref1": "ref1", "ref2": "ref2", "mask": "mask", "fsc": "fsc"}


class OptimisationSet:
    """File names of one optimisation set; each field is a str path or None.

    Attributes
    ----------
    particles, tomograms, trajectories, manifolds, ref1, ref2, mask, fsc : str or None
        Paths as written (relative to the project directory).
    extra : dict
        Entries with other labels, kept for ``write(..., only_tomo_files=False)``.
    path : str or None
        File read.
    project_dir : str
        RELION project directory for :meth:`resolve`.
    """

    def __init__(self, *, path=None, project_dir=None, extra=None, **fields):
        for field in FIELDS:
            setattr(self, field, _absent_to_none(fields.pop(field, None)))
        if fields:
            raise TypeError(f"unknown optimisation-set fields: {', '.join(fields)}")
        self.extra = dict(extra or {})
        self.path = path
        self.project_dir = project_dir if project_dir is not None else os.getcwd()

    def __repr__(self):
        set_fields = {f: getattr(self, f) for f in FIELDS if getattr(self, f) is not None}
        return f"OptimisationSet({self.path!r}, {set_fields})"

    @classmethod
    def read(cls, path, project_dir=None):
        """Read an optimisation set (any block name, list or loop form)."""
        path = os.fspath(path)
        star = read_star(path)
        tables = [t for t in star.values() if t.df.shape[1] > 0]
        if not tables:
            raise InputError(f"{path}: no optimisation-set entries")
        table = tables[0]
        if len(table.df) != 1:
            raise InputError(f"{path}: table data_{table.name} has {len(table.df)} rows; "
                             "expected one optimisation set")
        entries = table.as_dict()
        by_label = {label: field for field, label in FIELDS.items()}
        fields = {by_label[k]: _text(v) for k, v in entries.items() if k in by_label}
        extra = {k: v for k, v in entries.items() if k not in by_label}
        return cls(path=path, project_dir=project_dir, extra=extra, **fields)

    def apply_overrides(self, p=None, t=None, mot=None, man=None, ref1=None, ref2=None,
                        mask=None, fsc=None):
        """Replace entries by command-line values (``--p --t --mot --man --ref1 --ref2 --mask
        --fsc``); None leaves an entry unchanged.  Returns self."""
        given = dict(p=p, t=t, mot=mot, man=man, ref1=ref1, ref2=ref2, mask=mask, fsc=fsc)
        for option, value in given.items():
            if value is not None:
                setattr(self, _OVERRIDES[option], _absent_to_none(os.fspath(value)))
        return self

    def entries(self, only_tomo_files=False):
        """Return ``{label: path}`` of the set entries (plus extras unless ``only_tomo_files``)."""
        fields = TOMO_FIELDS if only_tomo_files else tuple(FIELDS)
        out = {FIELDS[f]: getattr(self, f) for f in fields if getattr(self, f) is not None}
        if not only_tomo_files:
            out.update(self.extra)
        return out

    def write(self, path, only_tomo_files=True):
        """Write the set as a list table in a bare ``data_`` block, atomically.

        With ``only_tomo_files`` (default, RELION's C++ behaviour) only particles,
        tomograms, trajectories and manifolds are written; otherwise every entry and the
        unknown ones.
        """
        write_star(path, [list_table("", self.entries(only_tomo_files))])

    def resolve(self, path):
        """Map a path written in the set to a file-system path."""
        return resolve_path(path, self.project_dir)

    def _require(self, field):
        value = getattr(self, field)
        if value is None:
            raise InputError(f"{self.path or '<memory>'}: optimisation set has no "
                             f"{FIELDS[field]} (and no override was given)")
        return self.resolve(value)

    def load_tomograms(self):
        """Read the tomogram set (:class:`~sta.io.tomograms.TomogramSet`)."""
        return TomogramSet.read(self._require("tomograms"), project_dir=self.project_dir)

    def load_particles(self, tomograms=None):
        """Read the particle set, with ``tomograms`` (default: :meth:`load_tomograms` when set)."""
        path = self._require("particles")
        if tomograms is None and self.tomograms is not None:
            tomograms = self.load_tomograms()
        return ParticleSet.read(path, tomograms=tomograms, project_dir=self.project_dir)

    def load_trajectories(self, particles=None):
        """Read the trajectory set, or return None when the set has no trajectories."""
        if self.trajectories is None:
            return None
        return TrajectorySet.read(self._require("trajectories"), particles=particles)


def _absent_to_none(value):
    if value is None:
        return None
    text = _text(value)
    return text if text not in ("", '""') else None


def _text(value):
    if isinstance(value, np.generic):
        value = value.item()
    return "" if value is None else str(value)
