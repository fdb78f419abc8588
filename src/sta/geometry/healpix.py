"""HEALPix orientation sampling and translation grids as in RELION (spec §12).

Conventions
-----------
* Directions are HEALPix pixel centres in the NEST scheme, ``Nside = 2**order``,
  ``12·4**order`` pixels.  A direction is ``(rot, tilt)`` in degrees with
  ``rot = φ`` normalised to (−180, 180] and ``tilt = acos(z)`` in [0, 180]; its unit vector
  is ``(cos rot sin tilt, sin rot sin tilt, cos tilt)`` (RELION ``Euler_angles2direction``).
  The pixel-centre arithmetic is our own implementation of the HEALPix formulas, written to
  give RELION's floating-point values (healpy is only used as a test oracle).
* The angular step of an order is ``θ(order) = 360 / (6·2**order)`` degrees.
* In-plane angles ``psi`` are ``0, step, 2·step, …`` with ``step = 360/ceil(360/psi_step)``.
* Translations are in the units of ``offset_range``/``offset_step`` (Å in this suite),
  relative to the particle's current offset.
* Orientations are enumerated direction-major: orientation ``idir·n_psi + ipsi``.
* Euler angles follow spec §2.4 (:mod:`sta.geometry.euler`).
"""

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from sta.errors import InputError
from sta.geometry.euler import euler_to_matrix, matrix_to_euler
from sta.geometry.symmetry import parse_symmetry

logger = logging.getLogger(__name__)

_PI = 3.14159265358979323846
_HALF_PI = 1.570796326794896619231321691639751442099
_MAX_ORDER = 13  # largest order whose NEST indices fit the 32-bit HEALPix base RELION uses
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])
_GREEDY_LIMIT = 4000  # RELION only removes near-equivalent seam points below this count


# --------------------------------------------------------------------------- HEALPix grid

def _check_order(order):
    if not (isinstance(order, (int, np.integer)) and 0 <= order <= _MAX_ORDER):
        raise InputError(f"HEALPix order {order!r} out of range (expected an integer 0-{_MAX_ORDER})")
    return int(order)


def n_pixels(order):
    """Number of HEALPix pixels ``12·4**order``."""
    return 12 * 4 ** _check_order(order)


def angular_step(order):
    """Angular sampling ``360 / (6·2**order)`` degrees (order 2 → 15°)."""
    return 360.0 / (6 * 2 ** int(order))


def max_pixel_radius(order):
    """Largest angle (degrees) between any pixel centre and its corners (``max_pixrad``)."""
    nside = 2 ** _check_order(order)
    va = _unit_from_z_phi(2.0 / 3.0, _PI / (4 * nside))
    t1 = (1.0 - 1.0 / nside) ** 2
    vb = _unit_from_z_phi(1 - t1 / 3, 0.0)
    angle = math.atan2(np.linalg.norm(np.cross(va, vb)), float(np.dot(va, vb)))
    return angle * 180 / _PI


def _unit_from_z_phi(z, phi):
    s = math.sqrt((1.0 - z) * (1.0 + z))
    return np.array([s * math.cos(phi), s * math.sin(phi), z])


def _compress_bits(v, order):
    """Collect the even-position bits of ``v`` (NEST de-interleave)."""
    out = np.zeros_like(v)
    for b in range(order):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def _spread_bits(v, order):
    """Inverse of :func:`_compress_bits` (bit b → bit 2b)."""
    out = np.zeros_like(v)
    for b in range(order):
        out |= ((v >> b) & 1) << (2 * b)
    return out


def nest_to_xyf(order, ipix):
    """NEST pixel index → (ix, iy, face) integer arrays."""
    ipix = np.asarray(ipix, dtype=np.int64)
    face = ipix >> (2 * order)
    local = ipix & (4 ** order - 1)
    return _compress_bits(local, order), _compress_bits(local >> 1, order), face


def xyf_to_nest(order, ix, iy, face):
    """(ix, iy, face) → NEST pixel index."""
    ix, iy, face = (np.asarray(a, dtype=np.int64) for a in (ix, iy, face))
    return (face << (2 * order)) + _spread_bits(ix, order) + (_spread_bits(iy, order) << 1)


def pix2ang_z_phi(order, ipix):
    """Pixel centres of NEST pixels: ``z = cos θ`` and ``phi`` in radians, [0, 2π).

    Parameters
    ----------
    order : int
        HEALPix order (``Nside = 2**order``).
    ipix : array_like of int
        NEST indices.

    Returns
    -------
    z, phi : ndarray
    """
    order = _check_order(order)
    nside = 2 ** order
    fact2 = 4.0 / (12 * nside * nside)
    fact1 = (nside << 1) * fact2
    ix, iy, face = nest_to_xyf(order, ipix)
    jr = (_JRLL[face] << order) - ix - iy - 1
    north, south = jr < nside, jr > 3 * nside
    nr = np.where(north, jr, np.where(south, 4 * nside - jr, nside))
    z = np.where(north, 1 - (nr * nr) * fact2,
                 np.where(south, (nr * nr) * fact2 - 1, (2 * nside - jr) * fact1))
    kshift = np.where(north | south, 0, (jr - nside) & 1)
    num = _JPLL[face] * nr + ix - iy + 1 + kshift
    jp = np.where(num >= 0, num // 2, -((-num) // 2))  # C integer division
    jp = np.where(jp > 4 * nside, jp - 4 * nside, jp)
    jp = np.where(jp < 1, jp + 4 * nside, jp)
    phi = (jp - (kshift + 1) * 0.5) * (_HALF_PI / nr)
    return z, phi


def healpix_directions(order, ipix=None):
    """(rot, tilt) in degrees of NEST pixels (all of them, in pixel order, by default).

    Returns
    -------
    rot : ndarray
        φ in degrees, normalised to (−180, 180].
    tilt : ndarray
        acos(z) in degrees, [0, 180].
    """
    if ipix is None:
        ipix = np.arange(n_pixels(order))
    z, phi = pix2ang_z_phi(order, ipix)
    rot = phi * 180 / _PI
    tilt = np.arccos(z) * 180.0 / _PI
    return np.where(rot > 180.0, rot - 360.0, rot), tilt


def direction_vectors(rot, tilt):
    """Unit vectors (..., 3) of directions (rot, tilt) in degrees (``Euler_angles2direction``).

    Computed in RELION's operation order (degrees → ``d·π/180``, then sin/cos), so that
    directions lying exactly on an asymmetric-unit boundary plane fall on the same side.
    """
    a = np.asarray(rot, dtype=float) * _PI / 180
    b = np.asarray(tilt, dtype=float) * _PI / 180
    sb = np.sin(b)
    return np.stack([sb * np.cos(a), sb * np.sin(a), np.cos(b)], axis=-1)


# --------------------------------------------------------------------------- psi and translations

def effective_psi_step(psi_step):
    """The psi step RELION really uses: ``360 / ceil(360 / psi_step)`` degrees."""
    if not psi_step > 0:
        raise InputError(f"psi step {psi_step!r} must be > 0 degrees")
    return 360.0 / math.ceil(360.0 / psi_step)


def psi_angles(order, psi_step=None):
    """In-plane angles (degrees) ``0, step, …`` for an order (or an explicit psi step > 0)."""
    raw = psi_step if psi_step is not None and psi_step > 0 else angular_step(order)
    return np.arange(math.ceil(360.0 / raw)) * effective_psi_step(raw)


def translations(offset_range, offset_step, dim=3):
    """Translation grid of spec §12.1, shape (n, dim), same units as the inputs (Å).

    All ``(ix, iy[, iz])·offset_step`` with ``|i| <= ceil(range/step)`` inside the sphere
    ``x²+y²+z² <= range²`` (3D) or the disc ``x²+y² < range² + 0.001`` (2D), ordered with x
    slowest and the last axis fastest, as RELION lists them.
    """
    if not offset_step > 0:
        raise InputError(f"offset step {offset_step!r} must be > 0")
    if not offset_range >= 0:
        raise InputError(f"offset range {offset_range!r} must be >= 0")
    if dim not in (2, 3):
        raise InputError(f"translation dimension {dim!r} must be 2 or 3")
    maxp = math.ceil(offset_range / offset_step)
    axis = np.arange(-maxp, maxp + 1) * offset_step
    grid = np.stack(np.meshgrid(*([axis] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    r2 = grid[:, 0] * grid[:, 0] + grid[:, 1] * grid[:, 1]
    if dim == 3:
        keep = (r2 + grid[:, 2] * grid[:, 2]) <= offset_range * offset_range
    else:
        keep = r2 < offset_range * offset_range + 0.001
    return grid[keep]


# --------------------------------------------------------------------------- oversampling

def oversample_directions(order, ipix, oversampling):
    """The ``4**os`` NEST children of a coarse pixel at order ``order + os`` (spec §12.3).

    Returns
    -------
    rot, tilt : ndarray, shape (4**os,)
        Degrees, normalised as in :func:`healpix_directions`.
    children : ndarray of int
        NEST indices at the fine order, in RELION's loop order (fine y outer, x inner);
        as a set they are ``ipix·4**os … ipix·4**os + 4**os − 1``.
    """
    fact = 2 ** int(oversampling)
    x, y, face = nest_to_xyf(order, int(ipix))
    fine_y, fine_x = np.arange(fact * y, fact * (y + 1)), np.arange(fact * x, fact * (x + 1))
    jj, ii = np.meshgrid(fine_y, fine_x, indexing="ij")
    children = xyf_to_nest(order + oversampling, ii.ravel(), jj.ravel(), np.full(fact * fact, face))
    rot, tilt = healpix_directions(order + oversampling, children)
    return rot, tilt, children


def oversample_psi(psi, psi_step, oversampling):
    """Fine psi values ``ψ − step/2 + (j+½)·step/2**os``, j < 2**os; shape (..., 2**os)."""
    n = 2 ** int(oversampling)
    psi = np.asarray(psi, dtype=float)[..., None]
    return psi - 0.5 * psi_step + (0.5 + np.arange(n)) * psi_step / n


def oversample_translations(t, offset_step, oversampling):
    """Fine translations of one coarse translation ``t`` (shape (dim,)): (2**os)**dim rows.

    Each component becomes ``t − step/2 + (j+½)·step/2**os``; x varies slowest.
    """
    t = np.asarray(t, dtype=float)
    per_axis = [oversample_psi(c, offset_step, oversampling) for c in t]
    return np.stack(np.meshgrid(*per_axis, indexing="ij"), axis=-1).reshape(-1, len(t))


# --------------------------------------------------------------------------- asymmetric unit

_I2_PLANES = [(0.0, 1.0, 0.0), (-0.4999999839058737, -0.8090170074556163, 0.3090169861701543),
              (0.4999999839058737, -0.8090170074556163, 0.3090169861701543)]
_I4_PLANES = [(0.0, 0.0, 1.0), (0.187592467856686, -0.303530987314591, -0.491123477863004),
              (0.187592467856686, 0.303530987314591, -0.491123477863004)]
_T_PLANES = [(-0.942809, 0.0, 0.0), (0.471405, 0.272165, 0.7698), (0.471404, 0.816497, 0.0)]
_TD_PLANES = [(-0.942809, 0.0, 0.0), (0.471405, 0.272165, 0.7698), (0.0, 0.471405, -0.666667)]
_TH_PLANES = [(-0.816496, 0.0, 0.0), (0.707107, 0.408248, -0.57735), (-0.408248, -0.707107, 0.0)]
_O_PLANES = [(0.0, -1.0, 1.0), (1.0, 1.0, 0.0), (-1.0, 1.0, 0.0)]
_I_TILT = 31.7174745559  # degrees; tilt that brings the I2 frame to the I3/I4 5-fold settings


@functools.lru_cache(maxsize=None)
def _planes(kind):
    """(normal, sign) pairs bounding RELION's geometric asymmetric unit of T/O/I kinds.

    sign +1 keeps ``v·n >= 0``, sign −1 keeps ``v·n <= 0``.
    """
    x_axis, y_axis = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    table = {
        "T": [(n, 1) for n in _T_PLANES], "TD": [(n, 1) for n in _TD_PLANES],
        "TH": [(n, 1) for n in _TH_PLANES],
        "O": [(n, 1) for n in _O_PLANES], "OH": [(n, 1) for n in _O_PLANES],
        "I": [(n, 1) for n in _I2_PLANES], "I2": [(n, 1) for n in _I2_PLANES],
        "I1": [(_tilted(n, 90), 1) for n in _I2_PLANES],
        "I3": [(_tilted(n, _I_TILT), 1) for n in _I2_PLANES],
        "I4": [(_tilted(n, -_I_TILT), -1) for n in _I4_PLANES],
        "IH": [(n, 1) for n in (_I2_PLANES[0], _I2_PLANES[1], x_axis)],
        "I1H": [(_tilted(n, 90), 1) for n in (_I2_PLANES[0], _I2_PLANES[1], x_axis)],
        "I3H": [(_tilted(n, _I_TILT), 1) for n in _I4_PLANES] + [(y_axis, 1)],
        "I4H": [(_tilted(n, -_I_TILT), -1) for n in _I4_PLANES] + [(y_axis, 1)],
    }
    table["I2H"] = table["IH"]
    return [(_unit(n), s) for n, s in table[kind]]


def _tilted(v, tilt):
    return euler_to_matrix(0.0, tilt, 0.0) @ np.asarray(v, dtype=float)


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v * (1.0 / math.sqrt(float(np.dot(v, v))))


def _angle_window(kind, n, rot, tilt):
    """The rot/tilt pre-conditions of RELION's geometric asymmetric unit (bool array)."""
    upper = tilt <= 90.0
    if kind == "CN":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n)
    if kind in ("CI", "CS"):
        return upper
    if kind == "CNV":
        return (rot >= 0.0 / n) & (rot <= 180.0 / n)
    if kind == "CNH":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n) & upper
    if kind == "SN":
        return (rot >= -180.0 * 2.0 / n) & (rot <= 180.0 * 2.0 / n) & upper
    if kind == "DN":
        return upper if n == 1 else (rot >= -180.0 / n + 90.0) & (rot <= 180.0 / n + 90.0) & upper
    if kind in ("DNV", "DNH"):
        return (rot >= 90.0) & (rot <= 180.0 / n + 90.0) & upper
    if kind == "T":
        return ((rot >= 90.0) & (rot <= 150.0)) | (rot == 0)
    if kind == "O":
        return ((rot >= 45.0) & (rot <= 135.0) & upper) | (rot == 0.0)
    if kind == "OH":
        return (rot >= 90.0) & (rot <= 135.0) & upper
    return np.ones(rot.shape, dtype=bool)


def geometric_asymmetric_unit(rot, tilt, group):
    """Mask of directions inside RELION's geometric asymmetric unit (first step of §12.2).

    Parameters
    ----------
    rot, tilt : array_like
        Directions in degrees, rot in [−180, 180], tilt in [0, 180].
    group : str or SymmetryGroup

    Returns
    -------
    ndarray of bool
    """
    group = parse_symmetry(group)
    if group.kind == "FILE":
        raise InputError(f"symmetry file {group.name!r}: no geometric asymmetric unit is defined for "
                         "file-defined groups (use a named group)")
    rot = np.asarray(rot, dtype=float)
    tilt = np.asarray(tilt, dtype=float)
    keep = _angle_window(group.kind, group.n, rot, tilt)
    if group.kind in ("CN", "CI", "CS", "CNV", "CNH", "SN", "DN", "DNV", "DNH"):
        return keep
    v = direction_vectors(rot, tilt)
    for normal, sign in _planes(group.kind):
        d = v[..., 0] * normal[0] + v[..., 1] * normal[1] + v[..., 2] * normal[2]
        keep &= (d >= 0) if sign > 0 else (d <= 0)
    return keep


def reduce_to_asymmetric_unit(rot, tilt, group, order):
    """Indices of the directions RELION keeps for a symmetry group (spec §12.2).

    First the geometric asymmetric unit (:func:`geometric_asymmetric_unit`); then, when
    fewer than 4000 directions remain, a greedy pass in input order that drops every
    direction whose angle to a symmetry mate (``L Rᵀ v``, identity included) of an already
    kept direction is below ``0.5·max_pixel_radius(order)``.

    Parameters
    ----------
    rot, tilt : array_like, shape (n,)
        Directions in degrees (normally :func:`healpix_directions` of ``order``).
    group : str or SymmetryGroup
    order : int
        HEALPix order that sets the seam tolerance.

    Returns
    -------
    ndarray of int
        Increasing indices into ``rot``/``tilt``.

    Notes
    -----
    [QUIRK] For groups containing the inversion (Ci, Sn, Th) RELION's ``L = diag(1, 1, −1)``
    makes the mate of ``v`` equal ``(−x, −y, z)``, so e.g. Ci keeps only a quarter of the
    sphere; this is reproduced.  The unit is bounded by pixel centres, so the largest
    distance from a sphere point to a kept mate can exceed the sampling step for small
    units (I at order 2: about 23°).
    """
    group = parse_symmetry(group)
    idx = np.flatnonzero(geometric_asymmetric_unit(rot, tilt, group))
    if len(idx) >= _GREEDY_LIMIT:
        return idx
    v = direction_vectors(np.asarray(rot)[idx], np.asarray(tilt)[idx])
    kept = _greedy_unique(v, group, 0.5 * max_pixel_radius(order))
    return idx[kept]


def _greedy_unique(v, group, max_angle):
    """Greedy in-order selection of directions with no near symmetry mate among earlier kept."""
    cos_max = math.cos(max_angle * _PI / 180)
    mates = group.direction_mates(v)  # (order, n, 3)
    owner = np.tile(np.arange(len(v)), group.order)
    chord = 2.0 * math.sin(0.5 * max_angle * _PI / 180) * (1 + 1e-9) + 1e-12
    tree = cKDTree(mates.reshape(-1, 3))
    keep = np.zeros(len(v), dtype=bool)
    flat = mates.reshape(-1, 3)
    for i, hits in enumerate(tree.query_ball_point(v, chord)):
        hits = np.asarray(hits, dtype=np.int64)
        hits = hits[(owner[hits] < i) & keep[owner[hits]]] if len(hits) else hits
        keep[i] = not np.any(flat[hits] @ v[i] > cos_max)
    return np.flatnonzero(keep)


def limit_tilt_mask(tilt, limit_tilt):
    """RELION ``--limit_tilt`` (spec §12.1): mask of directions kept (all when |L| >= 90)."""
    tilt = np.asarray(tilt, dtype=float)
    if abs(limit_tilt) >= 90.0:
        return np.ones(tilt.shape, dtype=bool)
    t = np.abs(np.where(tilt > 90.0, tilt - 180.0, tilt))
    return t >= abs(limit_tilt) if limit_tilt > 0 else t <= abs(limit_tilt)


def wrap_into(x, lo, hi):
    """RELION ``realWRAP``: bring ``x`` into [lo, hi] by whole periods ``hi − lo``."""
    if lo <= x <= hi:
        return x
    period = hi - lo
    if x < lo:
        return x - int((x - lo) / period - 1) * period
    return x - int((x - hi) / period + 1) * period


# --------------------------------------------------------------------------- sampling object

@dataclass
class PriorSelection:
    """Directions and psi angles with non-zero prior (spec §12.4).

    Attributes
    ----------
    directions : ndarray of int
        Indices into the sampling's direction list.
    direction_weights : ndarray
        Normalised prior weights (sum 1).
    psi : ndarray of int
        Indices into the sampling's psi list.
    psi_weights : ndarray
        Normalised prior weights (sum 1).
    n_psi : int
        Number of psi values of the full sampling (to index :meth:`OrientationSampling.orientations`).
    """

    directions: np.ndarray
    direction_weights: np.ndarray
    psi: np.ndarray
    psi_weights: np.ndarray
    n_psi: int

    @property
    def orientation_indices(self):
        """Row indices into ``orientations()`` (direction-major), shape (n_dir·n_psi_kept,)."""
        return (self.directions[:, None] * self.n_psi + self.psi[None, :]).ravel()

    @property
    def weights(self):
        """Prior weight of each selected orientation (direction weight × psi weight)."""
        return np.outer(self.direction_weights, self.psi_weights).ravel()


class OrientationSampling:
    """RELION's ``HealpixSampling`` for 3D references: directions, psi and translations.

    Parameters
    ----------
    healpix_order : int
        Coarse HEALPix order (``--healpix_order``, 2 → 15° steps).
    psi_step : float
        In-plane step in degrees; <= 0 means the HEALPix step of the order.
    offset_range, offset_step : float
        Translation search range and step in Å (RELION converts its pixel arguments to Å).
    perturbation_factor : float
        ``--perturb`` (0–1), amplitude of the random perturbation (§12.3).
    symmetry : str or SymmetryGroup
        Directions are restricted to this group's asymmetric unit.
    limit_tilt : float
        ``--limit_tilt`` in degrees (−91 = no limit).
    relax_symmetry : bool
        Keep the full sphere (``--relax_sym``).
    translation_dim : int
        3 for tomography / 3D data, 2 for 2D images.
    """

    def __init__(self, healpix_order=2, psi_step=-1.0, offset_range=6.0, offset_step=2.0,
                 perturbation_factor=0.5, symmetry="C1", limit_tilt=-91.0, relax_symmetry=False,
                 translation_dim=3):
        if not 0.0 <= perturbation_factor <= 1.0:
            raise InputError(f"perturbation factor {perturbation_factor!r} must be between 0 and 1")
        self.group = parse_symmetry(symmetry)
        self.limit_tilt = float(limit_tilt)
        self.relax_symmetry = bool(relax_symmetry)
        self.perturbation_factor = float(perturbation_factor)
        self.random_perturbation = 0.0
        self.set_orientations(healpix_order, psi_step)
        self.set_translations(offset_range, offset_step, translation_dim)

    # ---- grids
    def set_orientations(self, healpix_order, psi_step=-1.0):
        """(Re)build directions and psi angles; psi_step <= 0 uses ``angular_step(order)``."""
        self.healpix_order = _check_order(healpix_order)
        rot, tilt = healpix_directions(self.healpix_order)
        idx = np.arange(len(rot))
        if not self.relax_symmetry:
            idx = reduce_to_asymmetric_unit(rot, tilt, self.group, self.healpix_order)
        idx = idx[limit_tilt_mask(tilt[idx], self.limit_tilt)]
        if len(idx) == 0:
            raise InputError(f"no sampling directions left for symmetry {self.group.name} at HEALPix order "
                             f"{self.healpix_order} with limit_tilt {self.limit_tilt:g} (use a finer order)")
        self.directions_ipix, self.rot, self.tilt = idx, rot[idx], tilt[idx]
        step = psi_step if psi_step is not None and psi_step > 0 else angular_step(self.healpix_order)
        self.psi_step = effective_psi_step(step)
        self.psi = psi_angles(self.healpix_order, step)
        logger.debug("sampling order %d, %s: %d directions x %d psi", self.healpix_order,
                     self.group.name, len(self.rot), len(self.psi))

    def set_translations(self, offset_range, offset_step, translation_dim=3):
        """(Re)build the translation grid (Å), spec §12.1."""
        self.offset_range, self.offset_step = float(offset_range), float(offset_step)
        self.translation_dim = int(translation_dim)
        self.translations = translations(offset_range, offset_step, translation_dim)

    @property
    def n_directions(self):
        return len(self.rot)

    @property
    def n_psi(self):
        return len(self.psi)

    def angular_sampling(self, oversampling=0):
        """Angular step in degrees at ``healpix_order + oversampling``."""
        return angular_step(self.healpix_order + oversampling)

    def orientations(self):
        """All coarse (rot, tilt, psi) in degrees, shape (n_directions·n_psi, 3), direction-major."""
        n_dir, n_psi = self.n_directions, self.n_psi
        return np.stack([np.repeat(self.rot, n_psi), np.repeat(self.tilt, n_psi),
                         np.tile(self.psi, n_dir)], axis=-1)

    # ---- random perturbation (§12.3)
    def perturb(self, rng):
        """Advance the random perturbation ρ ← wrap(ρ + U(0.5f, f), [−f, f]) and return it.

        Parameters
        ----------
        rng : numpy.random.Generator
        """
        f = self.perturbation_factor
        rho = self.random_perturbation + rng.uniform(0.5 * f, f)
        self.random_perturbation = wrap_into(rho, -f, f)
        return self.random_perturbation

    def perturb_orientations(self, angles):
        """Apply ``A ← A·Euler(δ, δ, δ)``, ``δ = ρ·θ(order)``, to (n, 3) Euler angles (degrees)."""
        angles = np.asarray(angles, dtype=float).reshape(-1, 3)
        if self.random_perturbation == 0.0:
            return angles
        delta = self.random_perturbation * self.angular_sampling()
        a = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]) @ euler_to_matrix(delta, delta, delta)
        return np.stack(matrix_to_euler(a), axis=-1)

    def perturb_translations(self, t):
        """Shift every component of translations ``t`` (Å) by ``ρ·offset_step``."""
        return np.asarray(t, dtype=float) + self.random_perturbation * self.offset_step

    # ---- oversampling (§12.3)
    def oversampled_orientations(self, idir, ipsi, oversampling):
        """Fine, perturbed (rot, tilt, psi) of coarse orientation (idir, ipsi): (8**os, 3)."""
        if oversampling == 0:
            fine = np.array([[self.rot[idir], self.tilt[idir], self.psi[ipsi]]])
        else:
            rot, tilt, _ = oversample_directions(self.healpix_order, self.directions_ipix[idir], oversampling)
            psi = oversample_psi(self.psi[ipsi], self.psi_step, oversampling)
            fine = np.stack([np.repeat(rot, len(psi)), np.repeat(tilt, len(psi)),
                             np.tile(psi, len(rot))], axis=-1)
        return self.perturb_orientations(fine)

    def oversampled_translations(self, itrans, oversampling):
        """Fine, perturbed translations (Å) of coarse translation ``itrans``."""
        t = self.translations[itrans]
        fine = t[None] if oversampling == 0 else oversample_translations(t, self.offset_step, oversampling)
        return self.perturb_translations(fine)

    # ---- priors (§12.4)
    def local_orientations(self, prior_rot, prior_tilt, prior_psi, sigma_rot, sigma_tilt, sigma_psi,
                           group=None, bimodal_psi=False, sigma_cutoff=3.0):
        """Directions and psi angles within ``sigma_cutoff·σ`` of a prior, with Gaussian weights.

        Follows RELION's ``selectOrientationsWithNonZeroPriorProbability``: distances are
        minimised over the symmetry mates of each sampled direction; a direction/psi is kept
        when its distance is strictly below ``sigma_cutoff·σ``; weights ``exp(−d²/2σ²)`` are
        normalised to sum 1; when nothing qualifies, the single nearest one is used with
        weight 1.  With σ <= 0 for both rot and tilt (or for psi) all are kept with equal weight.
        Only-rot priors use RELION's distance ``|asin(sin tilt · sin(rot − rot_prior))|``;
        only-tilt priors use ``|tilt − tilt_prior|``.  Differences from RELION: its
        fallback for rot-only/tilt-only priors picks the nearest by a stale variable (we use
        the true nearest), and the ``--relax_sym`` mate expansion is not done here.

        Parameters
        ----------
        prior_rot, prior_tilt, prior_psi : float
            Prior angles in degrees.
        sigma_rot, sigma_tilt, sigma_psi : float
            Prior widths in degrees (<= 0: no prior on that angle).
        group : str or SymmetryGroup, optional
            Symmetry for the mates; the sampling's own group by default.
        bimodal_psi : bool
            Fold distances above 90° by 180° (``--bimodal_psi``).
        sigma_cutoff : float
            Cut-off in units of σ (RELION: 3).

        Returns
        -------
        PriorSelection
        """
        group = self.group if group is None else parse_symmetry(group)
        d_idx, d_w = _direction_prior(self.rot, self.tilt, prior_rot, prior_tilt, sigma_rot, sigma_tilt,
                                      group, bimodal_psi, sigma_cutoff)
        p_idx, p_w = _psi_prior(self.psi, prior_psi, sigma_psi, bimodal_psi, sigma_cutoff)
        return PriorSelection(d_idx, d_w, p_idx, p_w, self.n_psi)


def _gaussian_select(dist, sigma, cutoff):
    """Indices with dist < cutoff·σ and their normalised Gaussian weights (nearest if none)."""
    idx = np.flatnonzero(dist < cutoff * sigma)
    if len(idx) == 0:
        return np.array([int(np.argmin(dist))]), np.ones(1)
    w = np.exp(-0.5 * (dist[idx] / sigma) ** 2)
    return idx, w / w.sum()


def _direction_distance(rot, tilt, prior_rot, prior_tilt, sigma_rot, sigma_tilt, group, bimodal):
    """Distance (degrees) of each direction to the prior, minimised over symmetry mates."""
    mates = group.direction_mates(direction_vectors(rot, tilt))  # (order, n, 3)
    if sigma_rot > 0 and sigma_tilt > 0:
        prior = direction_vectors(prior_rot, prior_tilt)
        best = np.clip((mates @ prior).max(axis=0), -1.0, 1.0)
        dist = np.degrees(np.arccos(best))
        return np.where(bimodal & (dist > 90.0), np.abs(dist - 180.0), dist)
    if sigma_rot > 0:
        a = prior_rot * _PI / 180
        y = -math.sin(a) * mates[..., 0] + math.cos(a) * mates[..., 1]
        return np.degrees(np.abs(np.arcsin(np.clip(y, -1.0, 1.0)))).min(axis=0)
    norm = np.linalg.norm(mates, axis=-1)
    sym_tilt = np.degrees(np.arccos(np.clip(mates[..., 2] / norm, -1.0, 1.0)))
    dist = np.abs(sym_tilt - prior_tilt)
    return np.where(dist > 180.0, np.abs(dist - 360.0), dist).min(axis=0)


def _direction_prior(rot, tilt, prior_rot, prior_tilt, sigma_rot, sigma_tilt, group, bimodal, cutoff):
    if not (sigma_rot > 0 or sigma_tilt > 0):
        return np.arange(len(rot)), np.full(len(rot), 1.0 / len(rot))
    dist = _direction_distance(rot, tilt, prior_rot, prior_tilt, sigma_rot, sigma_tilt, group, bimodal)
    sigma = max(sigma_rot, sigma_tilt) if (sigma_rot > 0 and sigma_tilt > 0) else \
        (sigma_rot if sigma_rot > 0 else sigma_tilt)
    return _gaussian_select(dist, sigma, cutoff)


def _psi_prior(psi, prior_psi, sigma_psi, bimodal, cutoff):
    if not sigma_psi > 0:
        return np.arange(len(psi)), np.full(len(psi), 1.0 / len(psi))
    dist = np.abs(psi - prior_psi)
    dist = np.where(dist > 180.0, np.abs(dist - 360.0), dist)
    if bimodal:
        dist = np.where(dist > 90.0, np.abs(dist - 180.0), dist)
    return _gaussian_select(dist, sigma_psi, cutoff)
