"""Row operations on particle tables (what ``relion_star_handler`` does), as array functions.

All functions take a particle table (:class:`pandas.DataFrame`, RELION labels as columns)
and return new arrays or tables; none reads or writes files.  Units: Å for
``rlnOrigin*Angst`` and ``rlnCenteredCoordinate*Angst``, micrograph pixels for
``rlnCoordinateX/Y/Z``, degrees for angles.  Geometry conventions (spec §2.3, §2.6):
a tomography particle's reference centre sits at
``rlnCenteredCoordinate*Angst - A_sub · rlnOrigin*Angst`` (``A_sub`` from
``rlnTomoSubtomogramRot/Tilt/Psi``, identity when absent), and reference point ``c``
(pixels of the particle images) at ``… + A_sub · A · c · angpix`` with ``A`` the RELION
matrix of ``rlnAngleRot/Tilt/Psi``.
"""

import numpy as np
from scipy.spatial import cKDTree

from sta.errors import InputError
from sta.geometry.euler import euler_to_matrix
from sta.geometry.tilt import subtomogram_matrices

ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
CENTRED_LABELS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                  "rlnCenteredCoordinateZAngst")
COORD_LABELS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMO_LABELS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")


def _columns(df, labels, n=None):
    """Stack the given columns as float64, shape (rows, len(labels)); absent columns are 0."""
    out = np.zeros((len(df), len(labels) if n is None else n))
    for j, label in enumerate(labels):
        if label in df.columns:
            out[:, j] = df[label].to_numpy(dtype=np.float64)
    return out


def _numeric(df, label, where):
    if label not in df.columns:
        raise InputError(f"{where}: no column {label}")
    try:
        return df[label].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: column {label} is not numeric; "
                         "use --select_by_str for text labels") from None


def select_range(df, label, minval, maxval, where="table"):
    """Rows whose numeric ``label`` lies in ``[minval, maxval]`` (both inclusive), bool (n,)."""
    values = _numeric(df, label, where)
    return (values >= minval) & (values <= maxval)


def select_by_string(df, label, text, exclude=False, where="table"):
    """Rows whose ``label`` contains ``text`` (``exclude``: does not contain it), bool (n,)."""
    if label not in df.columns:
        raise InputError(f"{where}: no column {label}")
    found = np.array([text in str(v) for v in df[label].tolist()], dtype=bool)
    return ~found if exclude else found


def subtomogram_rotations(df):
    """``A_sub`` of every row from ``rlnTomoSubtomogramRot/Tilt/Psi``, shape (n, 3, 3)."""
    if all(label in df.columns for label in SUBTOMO_LABELS):
        angles = [df[label].to_numpy(dtype=np.float64) for label in SUBTOMO_LABELS]
        return subtomogram_matrices(*angles)
    return subtomogram_matrices(n=len(df))


def tomo_centres(df, where="table"):
    """Reference centres of tomography particles in Å from the tomogram centre, shape (n, 3).

    ``rlnCenteredCoordinate*Angst - A_sub · rlnOrigin*Angst`` (absent origins are 0).
    """
    missing = [label for label in CENTRED_LABELS[:2] if label not in df.columns]
    if missing:
        raise InputError(f"{where}: no column {missing[0]} (tomography particles need "
                         "rlnCenteredCoordinateX/Y/ZAngst)")
    centred = _columns(df, CENTRED_LABELS)
    origins = _columns(df, ORIGIN_LABELS)
    return centred - np.einsum("nij,nj->ni", subtomogram_rotations(df), origins)


def micrograph_centres(df, origin_scale, where="table"):
    """Particle centres in micrograph pixels: ``rlnCoordinate - rlnOrigin*Angst · scale``.

    Shape (n, 2), or (n, 3) when ``rlnCoordinateZ`` is present; ``origin_scale`` is
    1 / (micrograph pixel size in Å).
    """
    missing = [label for label in COORD_LABELS[:2] if label not in df.columns]
    if missing:
        raise InputError(f"{where}: no column {missing[0]} (needed to find duplicates)")
    dims = 3 if COORD_LABELS[2] in df.columns else 2
    return _columns(df, COORD_LABELS[:dims]) - _columns(df, ORIGIN_LABELS[:dims]) * origin_scale


def duplicates(groups, positions, threshold):
    """Rows RELION's ``removeDuplicatedParticles`` removes, bool (n,).

    Within each group (micrograph or tomogram, ``groups`` shape (n,)), row ``i`` is removed
    when any *later* row ``j > i`` of the same group lies within ``threshold`` (distance
    ``<= threshold``, same units as ``positions`` (n, d)), whether or not ``j`` is itself
    removed.  So the last particle of each cluster is kept.
    """
    positions = np.asarray(positions, dtype=np.float64)
    groups = np.asarray(groups)
    removed = np.zeros(len(positions), dtype=bool)
    if threshold <= 0 or len(positions) < 2:
        return removed
    threshold_sq = float(threshold) ** 2
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) < 2:
            continue
        pts = positions[rows]
        pairs = cKDTree(pts).query_pairs(float(threshold) * (1 + 1e-9) + 1e-12, output_type="ndarray")
        if len(pairs) == 0:
            continue
        d_sq = ((pts[pairs[:, 0]] - pts[pairs[:, 1]]) ** 2).sum(axis=1)
        pairs = pairs[d_sq <= threshold_sq]  # RELION's exact test on squared distances
        removed[rows[pairs.min(axis=1)]] = True
    return removed


def recentre_origins(df, centre_px, angpix):
    """New ``rlnOriginX/Y/ZAngst`` that put reference point ``centre_px`` at the box centre.

    RELION's ``star_handler --center``: ``origin -= A · c · angpix`` with ``A`` from
    ``rlnAngleRot/Tilt/Psi`` (absent = 0), ``c`` (3,) in pixels of the particle images and
    ``angpix`` (n,) their pixel size in Å.  Returns shape (n, 3).
    """
    a = euler_to_matrix(*(_columns(df, ANGLE_LABELS).T))
    shift = np.einsum("nij,j->ni", a, np.asarray(centre_px, dtype=np.float64))
    return _columns(df, ORIGIN_LABELS) - shift * np.asarray(angpix, dtype=np.float64)[:, None]


def fold_origins(df, where="table"):
    """Return a copy of a tomography table with the origins folded into the coordinates.

    ``rlnCenteredCoordinate*Angst := rlnCenteredCoordinate*Angst - A_sub · rlnOrigin*Angst``
    and ``rlnOrigin*Angst := 0``, as ``relion_tomo_subtomo`` does on extraction: the
    particle's reference centre does not move.
    """
    centres = tomo_centres(df, where)
    out = df.copy()
    for j, label in enumerate(CENTRED_LABELS):
        out[label] = centres[:, j]
    for label in ORIGIN_LABELS:
        out[label] = 0.0
    return out
