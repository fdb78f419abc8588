"""Point-group symmetry operators as RELION builds them (spec §11, ``src/symmetries.cpp``).

Conventions
-----------
* A group is described by generators: n-fold rotation axes, mirror planes (given by their
  normal) and the inversion.  An n-fold axis contributes ``R_k = [Rot(axis, k·360/n)]^T``
  for k = 1 … n−1, where ``Rot`` is the *active* right-handed rotation; a mirror
  contributes the reflection ``I − 2 n nᵀ``; the inversion contributes ``R = −I``.
* Every operator is a pair ``(L, R)`` of 3×3 matrices, as in RELION.  ``L`` is the
  identity except for operators derived from the inversion, where RELION stores
  ``L = diag(1, 1, −1)``; ``L`` only matters when projection *directions* are mapped
  (``v' = L Rᵀ v``, used by the HEALPix sampling, :mod:`sta.geometry.healpix`).
* The set is closed under multiplication exactly in RELION's order (the pair scan of
  ``SymList::compute_subgroup``), with RELION's tolerance (1e-6 per element) for
  "same matrix" and with values below 1e-6 set to 0.  The operators therefore come out
  in the order ``relion_refine --sym X --print_symmetry_ops`` prints them.
* Unlike RELION's ``SymList`` (which keeps the identity implicit), every array here
  **starts with the identity**: ``SymmetryGroup.matrices[0] == I`` and
  ``len(matrices) == order``.

Example
-------
>>> g = parse_symmetry("d7")
>>> g.name, g.order, g.matrices.shape
('D7', 14, (14, 3, 3))
"""

import functools
import logging
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from sta.errors import InputError

logger = logging.getLogger(__name__)

_EQUAL_ACCURACY = 1e-6  # RELION's XMIPP_EQUAL_ACCURACY in a double-precision build

_EXPECTED = ("expected C<n>, D<n>, T, O, I, I1-I4, or Ci, Cs, C<n>v, C<n>h, S<2n>, "
             "D<n>v, D<n>h, Td, Th, Oh, Ih, I1h-I4h, or a symmetry file")

# Generators per group kind, as RELION's SymList::fill_symmetry_class lists them.
# ("rot", fold, axis) with fold "n" / "n/2" filled in from the group's number;
# ("mirror", normal); ("inversion",).
_I2_AXES = [("rot", 2, (0, 0, 1)), ("rot", 5, (0.525731114, 0, 0.850650807)),
            ("rot", 3, (0, 0.356822076, 0.934172364))]
_I1_AXES = [("rot", 2, (1, 0, 0)), ("rot", 5, (0.85065080702670, 0, -0.5257311142635)),
            ("rot", 3, (0.9341723640, 0.3568220765, 0))]
_I3_AXES = [("rot", 2, (-0.5257311143, 0, 0.8506508070)), ("rot", 5, (0.0, 0.0, 1.0)),
            ("rot", 3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))]
_I4_AXES = [("rot", 2, (0.5257311143, 0, 0.8506508070)),
            ("rot", 5, (0.8944271932547096, 0, 0.4472135909903704)),
            ("rot", 3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))]
_T_AXES = [("rot", 3, (0.0, 0.0, 1.0)), ("rot", 2, (0.0, 0.816496, 0.577350))]
_O_AXES = [("rot", 3, (0.5773502, 0.5773502, 0.5773502)), ("rot", 4, (0, 0, 1))]
_Z_N = [("rot", "n", (0, 0, 1))]
_X_2 = [("rot", 2, (1, 0, 0))]

_GENERATORS = {
    "CN": _Z_N,
    "CI": [("inversion",)],
    "CS": [("mirror", (0, 0, 1))],
    "CNV": _Z_N + [("mirror", (0, 1, 0))],
    "CNH": _Z_N + [("mirror", (0, 0, 1))],
    "SN": [("rot", "n/2", (0, 0, 1)), ("inversion",)],
    "DN": _Z_N + _X_2,
    "DNV": _Z_N + _X_2 + [("mirror", (1, 0, 0))],
    "DNH": _Z_N + _X_2 + [("mirror", (0, 0, 1))],
    "T": _T_AXES,
    "TD": _T_AXES + [("mirror", (1.4142136, 2.4494897, 0.0))],
    "TH": [("rot", 3, (0.0, 0.0, 1.0)), ("rot", 2, (0.0, -0.816496, -0.577350)), ("inversion",)],
    "O": _O_AXES,
    "OH": _O_AXES + [("mirror", (0, 1, 1))],
    "I": _I2_AXES, "I2": _I2_AXES, "I1": _I1_AXES, "I3": _I3_AXES, "I4": _I4_AXES,
    "IH": _I2_AXES + [("mirror", (1, 0, 0))], "I2H": _I2_AXES + [("mirror", (1, 0, 0))],
    "I1H": _I1_AXES + [("mirror", (0, 0, -1))],
    "I3H": _I3_AXES + [("mirror", (0.850650807, 0, 0.525731114))],
    "I4H": _I4_AXES + [("mirror", (0.850650807, 0, -0.525731114))],
}

_NAME_RE = re.compile(r"^(?:(C)(\d{1,2})([VH]?)|(D)(\d{1,2})([VH]?)|(S)(\d{1,2})|"
                      r"(CI|CS|T|TD|TH|O|OH|I|I[1-4]|IH|I[1-4]H))$")


@dataclass(frozen=True, eq=False)
class SymmetryGroup:
    """A point group as a stack of RELION operators.

    Attributes
    ----------
    name : str
        Canonical upper-case name (``'C6'``, ``'D7'``, ``'I2'``, ``'I'``, ...), or the file
        name for a group read from a symmetry file.
    kind : str
        RELION's group family: ``'CN', 'CI', 'CS', 'CNV', 'CNH', 'SN', 'DN', 'DNV', 'DNH',
        'T', 'TD', 'TH', 'O', 'OH', 'I', 'I1'–'I4', 'IH', 'I1H'–'I4H'``, or ``'FILE'``.
    n : int
        The number in the name (``C6`` → 6, ``S4`` → 4), 0 for groups without one.
    matrices : ndarray, shape (order, 3, 3)
        The operators ``R``; ``matrices[0]`` is the identity.
    left_matrices : ndarray, shape (order, 3, 3)
        RELION's ``L`` companions (identity except for inversion-derived operators).
    """

    name: str
    kind: str
    n: int
    matrices: np.ndarray
    left_matrices: np.ndarray

    @property
    def order(self):
        """Number of operators, identity included."""
        return len(self.matrices)

    @property
    def is_point_group_rotation_only(self):
        """True when every operator is a proper rotation (det +1, ``L`` = identity)."""
        dets = np.linalg.det(self.matrices)
        return bool(np.all(dets > 0) and np.allclose(self.left_matrices, np.eye(3)))

    def direction_mates(self, directions):
        """Map unit direction vectors by every operator, RELION's ``L (vᵀ R)ᵀ``.

        Parameters
        ----------
        directions : array_like, shape (..., 3)

        Returns
        -------
        ndarray, shape (order, ..., 3)
            ``mates[0]`` equals the input (identity operator).
        """
        v = np.asarray(directions, dtype=float)
        vr = np.einsum("...i,kij->k...j", v, self.matrices)
        return np.einsum("kij,k...j->k...i", self.left_matrices, vr)


def parse_symmetry(name):
    """Build the symmetry group RELION would use for ``--sym name``.

    Parameters
    ----------
    name : str or SymmetryGroup
        A RELION group name, case-insensitive (``C<n>`` with n of 1–2 digits, ``Ci``,
        ``Cs``, ``C<n>v``, ``C<n>h``, ``S<n>`` with n even, ``D<n>``, ``D<n>v``, ``D<n>h``,
        ``T``, ``Td``, ``Th``, ``O``, ``Oh``, ``I`` (= ``I2``), ``I1``–``I4``, ``Ih``,
        ``I1h``–``I4h``), or the path of a RELION symmetry file (lines ``rot_axis n x y z``,
        ``mirror_plane x y z``, ``inversion``).  A group name wins over a file of the same
        name.  A :class:`SymmetryGroup` is returned unchanged.

    Returns
    -------
    SymmetryGroup

    Raises
    ------
    sta.errors.InputError
        For an unknown or malformed name (``'X5'``, ``'C0'``, ``'S3'``, ``'I5'``, ``''``).
    """
    if isinstance(name, SymmetryGroup):
        return name
    text = str(name).strip()
    key = text.upper()
    match = _NAME_RE.match(key)
    if match is None:
        if text and os.path.isfile(text):
            return _group_from_file(text)
        raise InputError(f"unknown symmetry group {text!r} ({_EXPECTED})")
    kind, n = _kind_and_number(match)
    if kind in ("CN", "CNV", "CNH", "DN", "DNV", "DNH", "SN") and n < 1:
        raise InputError(f"unknown symmetry group {text!r} (the order must be >= 1; {_EXPECTED})")
    if kind == "SN" and n % 2:
        raise InputError(f"unknown symmetry group {text!r} (S<n> needs an even n; {_EXPECTED})")
    return _build_named(kind, n)


def _kind_and_number(match):
    g = match.groups()
    if g[0]:
        return "CN" + g[2], int(g[1])
    if g[3]:
        return "DN" + g[5], int(g[4])
    if g[6]:
        return "SN", int(g[7])
    return g[8], 0


def _canonical_name(kind, n):
    if kind[:2] in ("CN", "DN"):
        return f"{kind[0]}{n}{kind[2:].lower()}"
    if kind == "SN":
        return f"S{n}"
    if len(kind) > 1 and kind[-1].isalpha():
        return kind[:-1] + kind[-1].lower()  # Ci, Cs, Td, Th, Oh, Ih, I1h ...
    return kind


@functools.lru_cache(maxsize=None)
def _build_named(kind, n):
    generators = []
    for gen in _GENERATORS[kind]:
        if gen[0] == "rot" and isinstance(gen[1], str):
            fold = n if gen[1] == "n" else n // 2
            if kind.startswith("DN") and gen[1] == "n" and n == 1:
                continue  # D1: only the 2-fold along x
            gen = ("rot", fold, gen[2])
        generators.append(gen)
    group = _group_from_generators(_canonical_name(kind, n), kind, n, generators)
    logger.debug("symmetry group %s: %d operators", group.name, group.order)
    return group


def _group_from_file(path):
    generators = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            generators.extend(_parse_file_line(path, lineno, line))
    return _group_from_generators(os.path.basename(path), "FILE", 0, generators)


def _parse_file_line(path, lineno, line):
    tokens = line.replace(",", " ").split()
    if not tokens or tokens[0].startswith((";", "#")):
        return []
    try:
        if tokens[0] == "rot_axis":
            return [("rot", int(tokens[1]), tuple(float(t) for t in tokens[2:5]))]
        if tokens[0] == "mirror_plane":
            return [("mirror", tuple(float(t) for t in tokens[1:4]))]
        if tokens[0] == "inversion":
            return [("inversion",)]
    except (IndexError, ValueError) as err:
        raise InputError(f"{path}, line {lineno}: cannot parse {line.strip()!r} "
                         "(expected 'rot_axis n x y z', 'mirror_plane x y z' or 'inversion')") from err
    raise InputError(f"{path}, line {lineno}: unknown symmetry element {tokens[0]!r} "
                     "(expected rot_axis, mirror_plane or inversion)")


def _group_from_generators(name, kind, n, generators):
    ops = []
    for gen in generators:
        ops.extend(_generator_operators(gen))
    lefts, rights = _close_group([o[0] for o in ops], [o[1] for o in ops])
    eye = np.eye(3)
    left = np.array([eye] + lefts).reshape(-1, 3, 3)
    right = np.array([eye] + rights).reshape(-1, 3, 3)
    left.flags.writeable = False
    right.flags.writeable = False
    return SymmetryGroup(name, kind, n, right, left)


def _generator_operators(gen):
    """(L, R) pairs contributed by one generator, in RELION's order."""
    eye = np.eye(3)
    if gen[0] == "inversion":
        return [(np.diag([1.0, 1.0, -1.0]), -eye)]
    if gen[0] == "mirror":
        a = _align_with_z(gen[1])
        return [(eye, a.T @ np.diag([1.0, 1.0, -1.0]) @ a)]
    fold, axis = gen[1], gen[2]
    if fold < 1:
        raise InputError(f"rotation axis of fold {fold} in symmetry definition (expected >= 1)")
    step = 360.0 / fold
    out, angle = [], step
    for _ in range(1, fold):
        rot = _rotation_about_axis(angle, axis)
        rot[np.abs(rot) < _EQUAL_ACCURACY] = 0.0
        out.append((eye, rot.T))
        angle += step
    return out


def _normalise(v):
    v = np.asarray(v, dtype=float)
    m = math.sqrt(float(np.dot(v, v)))
    if m <= _EQUAL_ACCURACY:
        raise InputError(f"symmetry axis {tuple(v)} has zero length")
    return v * (1.0 / m)


def _align_with_z(axis):
    """Rotation matrix ``M`` with ``M @ axis_unit = e_z`` (RELION ``alignWithZ``)."""
    x, y, z = _normalise(axis)
    p = math.sqrt(y * y + z * z)
    if p > _EQUAL_ACCURACY:
        return np.array([[p, -x * y / p, -x * z / p], [0.0, z / p, -y / p], [x, y, z]])
    s = -1.0 if x > 0 else 1.0
    return np.array([[0.0, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, 0.0]])


def _rotation_about_axis(angle, axis):
    """Active right-handed rotation by ``angle`` degrees about ``axis``."""
    a = _align_with_z(axis)
    t = angle * math.pi / 180
    c, s = math.cos(t), math.sin(t)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return (a.T @ rz) @ a


def _shell_pairs(n):
    """RELION's scan order of the pair table: column n downwards, then row n leftwards."""
    for i in range(n + 1):
        yield i, n
    for j in range(n - 1, -1, -1):
        yield n, j


def _close_group(lefts, rights):
    """Close the operator list under multiplication in RELION's order (identity left out)."""
    table = _OperatorTable(lefts, rights)
    shell = 0
    while shell < table.size:
        pairs = np.array(list(_shell_pairs(shell)))
        products = table.products(pairs[:, 0], pairs[:, 1])
        is_new = ~table.contains_many(products) & ~_is_identity(products)
        for row in products[is_new]:
            if not table.contains_many(row[None])[0]:
                row[np.abs(row) < _EQUAL_ACCURACY] = 0.0
                table.append(row)
        shell += 1
    return table.lefts(), table.rights()


def _is_identity(flat):
    eye = np.eye(3).ravel()
    return np.all(np.abs(flat - np.concatenate([eye, eye])) <= _EQUAL_ACCURACY, axis=1)


class _OperatorTable:
    """Growing stack of (L, R) pairs, each stored flat as 18 numbers (L then R)."""

    def __init__(self, lefts, rights):
        self._data = np.zeros((max(8, 2 * len(rights)), 18))
        self.size = 0
        for left, right in zip(lefts, rights):
            self.append(np.concatenate([np.ravel(left), np.ravel(right)]))

    def append(self, row):
        if self.size == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self.size] = row
        self.size += 1

    def products(self, i, j):
        """Flat (L_i L_j, R_i R_j) for index arrays ``i, j``, shape (len(i), 18)."""
        ops = self._data[:self.size].reshape(-1, 2, 3, 3)
        return np.einsum("mkab,mkbc->mkac", ops[i], ops[j]).reshape(len(i), 18)

    def contains_many(self, rows):
        """For each flat row: is it within 1e-6 (every element) of a stored pair?"""
        diff = np.abs(rows[:, None, :] - self._data[None, :self.size, :]).max(axis=2)
        return np.any(diff <= _EQUAL_ACCURACY, axis=1)

    def lefts(self):
        return list(self._data[:self.size, :9].reshape(-1, 3, 3))

    def rights(self):
        return list(self._data[:self.size, 9:].reshape(-1, 3, 3))
