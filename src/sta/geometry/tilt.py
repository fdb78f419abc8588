"""Tilt-series geometry: projection matrices, particle positions, visibility (spec §2).

Frames
------
* Tomogram frame: unbinned tilt-series pixels, origin at the tomogram corner, extent
  ``(w0, h0, d0) = rlnTomoSizeX/Y/Z``.
* Image frame of tilt f: 0-based pixel coordinates of the tilt image (x = column).
* Centred coordinates (``rlnCenteredCoordinate*Angst``): Å from the tomogram centre
  ``c = (w0/2.0, h0/2.0, d0/2.0)`` (floating; spec §2.3).

[QUIRK §13.1] the projection matrix uses the *floored* centre ``floor(size/2)`` while the
particle centring uses ``size/2.0``; for odd sizes the two differ by 0.5 px.  Both are
reproduced here on purpose.
"""

import numpy as np

from sta.geometry.euler import euler_to_matrix, rot_x, rot_y, rot_z


def tomogram_centre(size):
    """Floating centre ``(w0/2, h0/2, d0/2)`` used for particle coordinates (spec §2.3)."""
    return np.asarray(size, dtype=float) / 2.0


def projection_matrices(xtilt, ytilt, zrot, xshift_angst, yshift_angst, pixel_size, tomo_size, image_size):
    """4x4 projection matrices of every tilt (tomogram frame -> image frame), spec §2.2.

    Parameters
    ----------
    xtilt, ytilt, zrot : array_like, shape (n,)
        ``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` in degrees.
    xshift_angst, yshift_angst : array_like, shape (n,)
        ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` in Å.
    pixel_size : float
        Tilt-series pixel size in Å.
    tomo_size : (3,) ints
        ``rlnTomoSizeX/Y/Z``.
    image_size : (2,) ints
        Tilt image width and height in pixels.

    Returns
    -------
    ndarray, shape (n, 4, 4)
        ``P = T(c_img) T(shift/px) Rz(zr) Ry(yt) Rx(xt) T(-c_spec)`` with
        ``c_spec = floor(tomo_size/2)`` and ``c_img = (floor(W/2), floor(H/2), 0)``.
    """
    xtilt, ytilt, zrot = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (xtilt, ytilt, zrot))
    sx = np.atleast_1d(np.asarray(xshift_angst, dtype=float)) / pixel_size
    sy = np.atleast_1d(np.asarray(yshift_angst, dtype=float)) / pixel_size
    n = len(xtilt)
    r = rot_z(zrot) @ rot_y(ytilt) @ rot_x(xtilt)
    c_spec = np.floor_divide(np.asarray(tomo_size, dtype=np.int64), 2).astype(float)
    c_img = np.array([image_size[0] // 2, image_size[1] // 2, 0], dtype=float)
    p = np.zeros((n, 4, 4))
    p[:, :3, :3] = r
    p[:, :3, 3] = -(r @ c_spec) + c_img
    p[:, 0, 3] += sx
    p[:, 1, 3] += sy
    p[:, 3, 3] = 1.0
    return p


def projection_angles_from_matrices(p, pixel_size, tomo_size, image_size):
    """Inverse of :func:`projection_matrices` (``getProjectionAnglesFromMatrix``).

    [QUIRK §2.2] uses the unfloored centre ``size/2.0`` as RELION does.

    Returns
    -------
    xtilt, ytilt, zrot, xshift_angst, yshift_angst : ndarrays, shape (n,)
    """
    p = np.asarray(p, dtype=float).reshape(-1, 4, 4)
    r = p[:, :3, :3]
    xt = np.empty(len(p))
    yt = np.empty(len(p))
    zr = np.empty(len(p))
    for i, m in enumerate(r):
        if np.isclose(m[2, 0], -1.0):
            xt[i], yt[i], zr[i] = 0.0, 90.0, -np.rad2deg(np.arctan2(-m[1, 2], m[1, 1]))
        elif np.isclose(m[2, 0], 1.0):
            xt[i], yt[i], zr[i] = 0.0, -90.0, np.rad2deg(np.arctan2(-m[1, 2], m[1, 1]))
        else:
            yt[i] = np.rad2deg(np.arcsin(-m[2, 0]))
            xt[i] = np.rad2deg(np.arctan2(m[2, 1], m[2, 2]))
            zr[i] = np.rad2deg(np.arctan2(m[1, 0], m[0, 0]))
    c = np.asarray(tomo_size, dtype=float) / 2.0
    c_img = np.array([image_size[0] // 2, image_size[1] // 2], dtype=float)
    shift = p[:, :2, 3] + (r @ c)[:, :2] - c_img
    return xt, yt, zr, shift[:, 0] * pixel_size, shift[:, 1] * pixel_size


def subtomogram_matrices(rot=None, tilt=None, psi=None, n=None):
    """``A_sub`` of every particle from ``rlnTomoSubtomogramRot/Tilt/Psi`` (identity if absent)."""
    if rot is None:
        return np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    return euler_to_matrix(rot, tilt, psi)


def particle_positions(centred_angst, pixel_size, tomo_size, origins_angst=None, a_sub=None):
    """Particle positions in the tomogram frame (tilt-series pixels), spec §2.3.

    ``p = centred/px + c - A_sub · origin/px``  with ``c = size/2.0``.

    Parameters
    ----------
    centred_angst : (n, 3)
        ``rlnCenteredCoordinateX/Y/ZAngst``.
    pixel_size : float or (n,)
        Tilt-series pixel size (Å).
    tomo_size : (3,) or (n, 3)
        Tomogram size of each particle's tomogram.
    origins_angst : (n, 3) or None
        ``rlnOriginX/Y/ZAngst`` (subtomogram frame); None = not applied.
    a_sub : (n, 3, 3) or None
        Subtomogram orientation matrices; None = identity.
    """
    centred = np.atleast_2d(np.asarray(centred_angst, dtype=float))
    px = np.asarray(pixel_size, dtype=float).reshape(-1, 1) if np.ndim(pixel_size) else float(pixel_size)
    p = centred / px + tomogram_centre(tomo_size)
    if origins_angst is not None:
        o = np.atleast_2d(np.asarray(origins_angst, dtype=float)) / px
        if a_sub is not None:
            o = np.einsum("nij,nj->ni", a_sub, o)
        p = p - o
    return p


def centred_from_positions(positions, pixel_size, tomo_size):
    """Inverse of the centring: ``(p - size/2.0) · px`` in Å."""
    px = np.asarray(pixel_size, dtype=float).reshape(-1, 1) if np.ndim(pixel_size) else float(pixel_size)
    return (np.asarray(positions, dtype=float) - tomogram_centre(tomo_size)) * px


def project(proj, points):
    """Apply projection matrices to 3D points.

    Parameters
    ----------
    proj : (f, 4, 4)
    points : (3,) or (n, 3) or (n, f, 3) tomogram-frame positions (per tilt for motion).

    Returns
    -------
    ndarray, shape (n, f, 3) (or (f, 3) for a single point): image x, y and depth z.
    """
    proj = np.asarray(proj, dtype=float)
    pts = np.asarray(points, dtype=float)
    single = pts.ndim == 1
    if single:
        pts = pts[None]
    if pts.ndim == 2:
        q = np.einsum("fij,nj->nfi", proj[:, :3, :3], pts) + proj[None, :, :3, 3]
    else:
        q = np.einsum("fij,nfj->nfi", proj[:, :3, :3], pts) + proj[None, :, :3, 3]
    return q[0] if single else q


def depth_offsets(proj, positions, tomo_size):
    """``dz = (R_f (p - c)).z`` in tilt-series pixels (spec §3.2), shape (n, f)."""
    c = tomogram_centre(tomo_size)
    d = np.atleast_2d(np.asarray(positions, dtype=float)) - c
    return np.einsum("fj,nj->nf", np.asarray(proj)[:, 2, :3], d)


def defocus_offsets(proj, positions, tomo_size, pixel_size, hand, slope=1.0):
    """Depth-dependent defocus change in Å: ``hand · px · slope · dz`` (spec §3.2), (n, f)."""
    return hand * pixel_size * slope * depth_offsets(proj, positions, tomo_size)


def visible(image_xy, image_size, margin):
    """Strict visibility test of spec §2.8: ``r < x < W - r`` and ``r < y < H - r``."""
    xy = np.asarray(image_xy, dtype=float)
    w, h = image_size
    return (xy[..., 0] > margin) & (xy[..., 0] < w - margin) & (xy[..., 1] > margin) & (xy[..., 1] < h - margin)
