"""Soft solvent masks as ``relion_mask_create`` makes them (``src/apps/mask_create.cpp``).

From a map: optional low-pass (raised-cosine edge of 2 shells), optional logical
combination with a second map, binarisation at ``value >= threshold``, extension or
shrinking by a Euclidean distance, a raised-cosine soft edge, the optional helical z cut
and inversion.  De novo: a spherical crown with soft edges.  Volumes are ``(z, y, x)``
arrays; distances in voxels, resolutions and pixel sizes in Å.
"""

import logging

import numpy as np

from sta.backend import get_array_module, to_host
from sta.kernels import filters

log = logging.getLogger(__name__)

#: logical operations of ``--and/--or/--and_not/--or_not`` on (input > thr, other > thr / < thr)
COMBINE = ("and", "or", "and_not", "or_not")


def combine_maps(volume, other, threshold, how):
    """RELION's logical combination of the (filtered) input with a second map.

    Voxels where the condition holds are set to ``threshold + 1``, others to
    ``threshold - 1`` so that the following binarisation reproduces the condition.

    Parameters
    ----------
    volume, other : arrays of the same shape
    threshold : float
    how : one of :data:`COMBINE`
    """
    a = volume > threshold
    if how == "and":
        keep = (other > threshold) & a
    elif how == "or":
        keep = (other > threshold) | a
    elif how == "and_not":
        keep = a & (other < threshold)
    elif how == "or_not":
        keep = a | (other < threshold)
    else:
        raise ValueError(f"unknown combination {how!r}; expected one of {COMBINE}")
    xp = get_array_module(volume)
    return xp.where(keep, threshold + 1.0, threshold - 1.0)


def mask_from_map(volume, angpix, lowpass=-1.0, threshold=0.01, extend=0.0, soft_width=0.0,
                  other=None, combine=None, helix=False, z_percentage=0.3, invert=False):
    """Make a soft mask from a density map.

    Parameters
    ----------
    volume : array ``(n, n, n)``
        Input map.
    angpix : float
        Pixel size (Å), used by the low-pass filter.
    lowpass : float
        Low-pass resolution (Å) before binarisation; <= 0 disables it.
    threshold : float
        Binarisation threshold (``value >= threshold`` is inside).
    extend : float
        Voxels to grow (> 0) or shrink (< 0) the binary mask.
    soft_width : float
        Width (voxels) of the raised-cosine soft edge.
    other, combine : array, str
        Second map and the logical operation (:data:`COMBINE`) applied before binarising.
    helix, z_percentage : bool, float
        Keep only the central z fraction (``--helix``).
    invert : bool
        Return ``1 - mask``.

    Returns
    -------
    ndarray ``(n, n, n)`` float64 in [0, 1] (host NumPy)
    """
    vol = np.asarray(to_host(volume), dtype=np.float64)
    if lowpass > 0:
        vol = filters.lowpass_map(vol, lowpass, angpix, edge_width=2)
    if combine is not None:
        vol = combine_maps(vol, np.asarray(to_host(other), dtype=np.float64), threshold, combine)
    binary = vol >= threshold
    log.debug("initial binary mask: %d voxels", int(binary.sum()))
    if extend > 0:
        log.info("== Extending initial binary mask ...")
    elif extend < 0:
        log.info("== Shrinking initial binary mask ...")
    binary = filters.extend_binary(binary, extend)
    if soft_width > 0:
        log.info("== Making a soft edge on the extended mask ...")
    mask = filters.soft_edge(binary, soft_width)
    if helix:
        mask = filters.cut_z_central(mask, z_percentage, soft_width)
    if invert:
        mask = 1.0 - mask
    return mask


def denovo_mask(box, inner_radius=0.0, outer_radius=99999.0, width=0.0, centre_xyz=(0.0, 0.0, 0.0),
                invert=False):
    """Spherical crown mask made from scratch (``--denovo``).

    Parameters
    ----------
    box : int
        Box size (voxels).
    inner_radius, outer_radius, width : float
        Radii and soft-edge width (voxels); the edges lie outside ``[inner, outer]``.
    centre_xyz : (3,) float
        Centre in voxels relative to the box centre ``box//2`` (RELION ``--center_x/y/z``).

    Returns
    -------
    ndarray ``(box, box, box)`` float64
    """
    cx, cy, cz = centre_xyz
    mask = filters.raised_crown((box, box, box), inner_radius, outer_radius, width, (cz, cy, cx))
    if invert:
        mask = 1.0 - mask
    return mask
