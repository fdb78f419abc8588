"""RELION's ZYZ Euler angles (spec §2.4).

Convention: ``A(rot, tilt, psi) = [Rz(rot) Ry(tilt) Rz(psi)]^T`` with active right-handed
rotation matrices and angles in degrees.  A point ``r`` of the reference frame appears at
``A @ r`` in the particle frame; a 2D image frequency ``k`` samples the reference at
``A.T @ k``.  scipy: ``Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True).as_matrix()``
equals ``A.T``.
"""

import numpy as np

_FLT_EPSILON = np.finfo(np.float32).eps


def rot_x(angle):
    """Active rotation about x by ``angle`` degrees (broadcasts), shape (..., 3, 3)."""
    a = np.deg2rad(np.asarray(angle, dtype=float))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_y(angle):
    """Active rotation about y by ``angle`` degrees (broadcasts), shape (..., 3, 3)."""
    a = np.deg2rad(np.asarray(angle, dtype=float))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(angle):
    """Active rotation about z by ``angle`` degrees (broadcasts), shape (..., 3, 3)."""
    a = np.deg2rad(np.asarray(angle, dtype=float))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def euler_to_matrix(rot, tilt, psi):
    """RELION ``Euler_angles2matrix``: angles in degrees (arrays broadcast) -> (..., 3, 3)."""
    rot, tilt, psi = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=float)) for v in (rot, tilt, psi)))
    ca, sa = np.cos(rot), np.sin(rot)
    cb, sb = np.cos(tilt), np.sin(tilt)
    cg, sg = np.cos(psi), np.sin(psi)
    cc, cs = cb * ca, cb * sa
    sc, ss = sb * ca, sb * sa
    a = np.empty(rot.shape + (3, 3))
    a[..., 0, 0] = cg * cc - sg * sa
    a[..., 0, 1] = cg * cs + sg * ca
    a[..., 0, 2] = -cg * sb
    a[..., 1, 0] = -sg * cc - cg * sa
    a[..., 1, 1] = -sg * cs + cg * ca
    a[..., 1, 2] = sg * sb
    a[..., 2, 0] = sc
    a[..., 2, 1] = ss
    a[..., 2, 2] = cb
    return a


def matrix_to_euler(a):
    """RELION ``Euler_matrix2angles``: (..., 3, 3) -> (rot, tilt, psi) in degrees.

    Reproduces RELION's branch choices, so ``tilt`` may come out negative; ranges are
    rot, psi in (-180, 180].  Gimbal lock (``sqrt(A02² + A12²) < 16 FLT_EPSILON``) gives
    rot = tilt = 0 (or tilt = 180) with the whole in-plane angle in psi.
    """
    a = np.asarray(a, dtype=float)
    shape = a.shape[:-2]
    a = a.reshape(-1, 3, 3)
    rot = np.empty(len(a))
    tilt = np.empty(len(a))
    psi = np.empty(len(a))
    for i, m in enumerate(a):
        rot[i], tilt[i], psi[i] = _matrix_to_euler_one(m)
    return rot.reshape(shape), tilt.reshape(shape), psi.reshape(shape)


def _matrix_to_euler_one(m):
    abs_sb = np.sqrt(m[0, 2] ** 2 + m[1, 2] ** 2)
    if abs_sb > 16 * _FLT_EPSILON:
        gamma = np.arctan2(m[1, 2], -m[0, 2])
        alpha = np.arctan2(m[2, 1], m[2, 0])
        if abs(np.sin(gamma)) < _FLT_EPSILON:
            sign_sb = np.sign(-m[0, 2] / np.cos(gamma))
        elif np.sin(gamma) > 0:
            sign_sb = np.sign(m[1, 2])
        else:
            sign_sb = -np.sign(m[1, 2])
        beta = np.arctan2(sign_sb * abs_sb, m[2, 2])
    elif np.sign(m[2, 2]) > 0:
        alpha, beta = 0.0, 0.0
        gamma = np.arctan2(-m[1, 0], m[0, 0])
    else:
        alpha, beta = 0.0, np.pi
        gamma = np.arctan2(m[1, 0], -m[0, 0])
    return np.rad2deg(alpha), np.rad2deg(beta), np.rad2deg(gamma)


def matrix_to_euler_simple(a):
    """The jaz ``Euler::matrixToAngles`` variant (tilt >= 0), used by ``--apply_orientations``."""
    a = np.asarray(a, dtype=float)
    tilt = np.arctan2(np.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2), a[..., 2, 2])
    rot = np.arctan2(a[..., 2, 1], a[..., 2, 0])
    psi = np.arctan2(a[..., 1, 2], -a[..., 0, 2])
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def wrap_angle(angle):
    """Wrap degrees into (-180, 180]."""
    a = np.mod(np.asarray(angle, dtype=float) + 180.0, 360.0) - 180.0
    return np.where(a == -180.0, 180.0, a)


def angular_distance(a, b):
    """Rotation angle (degrees) of ``a^T b`` for matrices of shape (..., 3, 3)."""
    tr = np.einsum("...ji,...ji->...", a, b)
    return np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))
