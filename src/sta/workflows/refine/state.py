"""The explicit state of an auto-refinement and the sums of one iteration.

:class:`RefineState` is everything that carries from one iteration to the next: the models
(per half set, per class), the poses, what is sampled (schedule), the sampled grid and the
convergence bookkeeping.  :class:`HalfSetSums` is what one half set's E-step accumulates for
the M-step (RELION's ``wsum_model`` of one half), per class.  Both are laid out for K
classes; sta_refine runs K = 1.

Pose results travel between ranks as float64 rows (:data:`RESULT_FIELDS`), the sums as the
list of arrays of :meth:`HalfSetSums.arrays` (MPI buffers, reduced in place).
"""

import dataclasses

import numpy as np

from sta.geometry.healpix import OrientationSampling
from sta.workflows.refine.schedule import AutoRefine, Sampling


@dataclasses.dataclass
class PoseState:
    """Per-particle hidden variables carried between iterations (table row order)."""

    angles: np.ndarray          # (n, 3) deg
    offsets: np.ndarray         # (n, 3) Å
    prior_offsets: np.ndarray   # (n, 3) Å
    half: np.ndarray            # (n,) 0/1
    pmax: np.ndarray
    nsig: np.ndarray
    logl: np.ndarray
    spread: np.ndarray
    acc_rot: np.ndarray
    acc_trans: np.ndarray

    #: the fields an E-step updates, in the column order of a result row (after the index)
    UPDATED = ("angles", "offsets", "pmax", "nsig", "logl", "spread", "acc_rot", "acc_trans")

    def copy(self):
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    def apply_rows(self, rows):
        """Store E-step result rows (:func:`result_rows`)."""
        if len(rows) == 0:
            return
        idx = rows[:, 0].astype(np.int64)
        self.angles[idx] = rows[:, 1:4]
        self.offsets[idx] = rows[:, 4:7]
        self.pmax[idx] = rows[:, 7]
        self.nsig[idx] = rows[:, 8]
        self.logl[idx] = rows[:, 9]
        self.spread[idx] = rows[:, 10]
        self.acc_rot[idx] = rows[:, 11]
        self.acc_trans[idx] = rows[:, 12]


#: columns of an E-step result row: particle index, rot, tilt, psi (deg), x, y, z offset (Å), pmax,
#: number of significant samples, log-likelihood, angular spread, accuracy rotation, accuracy translation
RESULT_FIELDS = 13


def result_rows(indices, results):
    """(n, :data:`RESULT_FIELDS`) float64 rows of :class:`~sta.workflows.refine.engine.ParticleResult`\\ s."""
    out = np.empty((len(indices), RESULT_FIELDS))
    for k, (i, r) in enumerate(zip(indices, results)):
        out[k, 0] = i
        out[k, 1:4] = r.angles
        out[k, 4:7] = r.offset
        out[k, 7:] = (r.pmax, r.n_significant, r.log_likelihood, r.acc_spread, r.acc_rot, r.acc_trans)
    return out


@dataclasses.dataclass
class RefineState:
    """What carries from one iteration to the next (identical on every rank after the model
    broadcast, except that a follower holds only its own half's models)."""

    models: list                  # [half][class] HalfModel; None for a half this rank does not hold
    poses: PoseState
    sampling: Sampling            # what is sampled: HEALPix order, offset range/step, local searches
    grid: OrientationSampling     # the orientations and translations of ``sampling``, perturbed
    auto: AutoRefine              # convergence bookkeeping
    fsc: np.ndarray               # gold-standard FSC of the last M-step (shells 0..ori/2)
    current_size: int
    current_resolution: float     # 1/Å
    iteration: int = 0
    final: bool = False

    @property
    def n_classes(self):
        return len(next(m for m in self.models if m is not None))

    def held_models(self):
        """Every model this rank holds, all halves and classes."""
        return [m for half in self.models if half is not None for m in half]


class HalfSetSums:
    """The weighted sums of one half set for K classes: one
    :class:`~sta.workflows.refine.engine.HalfSums` per class (back-projection, direction pdf, and
    the noise, offset and scale sums of the particles assigned to that class)."""

    def __init__(self, classes):
        self.classes = list(classes)

    def arrays(self):
        """Every sum as a numpy array, in a fixed order (MPI reductions; the arrays of the sums
        themselves where they are arrays, so reducing them in place updates the sums)."""
        return [a for s in self.classes for a in s.arrays()]

    def set_arrays(self, arrays):
        n = len(arrays) // len(self.classes)
        for k, s in enumerate(self.classes):
            s.set_arrays(list(arrays[k * n:(k + 1) * n]))

    def add_(self, other):
        """``self += other`` in place (a thread's sums into another's, without a third copy)."""
        mine = self.arrays()
        for a, b in zip(mine, other.arrays()):
            a += b
        self.set_arrays(mine)
        return self

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.arrays())
