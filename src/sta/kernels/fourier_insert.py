"""RELION's ``BackProjector`` for ``relion_refine``: slice insertion, symmetry, SSNR and reconstruction.

Layout (RELION's, ``Projector::initialiseData``)
-----------------------------------------------
The accumulator is a padded, *centred* 3D half grid of complex data and real weights of
shape ``(D, D, D//2+1)`` with ``D = 2·(R+1)+1``, ``R = ROUND(pad·r_max)`` and
``r_max = min(current_size, ori_size)//2``.  Index ``[z, y, x]`` holds the logical
frequency ``(kz, ky, kx) = (z − D//2, y − D//2, x)`` in units of ``1/(pad·ori_size)``
cycles per pixel (one image frequency ``k`` lands at ``pad·k``).  Only ``kx >= 0`` is
stored; ``kx < 0`` is the complex-conjugate mate.  ``R`` is recovered from the shape, so
functions take the arrays alone.

Normalisation: slices are in the ``centred_rfft`` scaling of the images
(:mod:`sta.kernels.likelihood`); :func:`reconstruct` returns the real-space map in the
units of the reference that predicts the images (a projection of the returned map is
the data).  Quadratic spectra (σ², τ²) are ``ori_size²`` times RELION's.

Order of use per class and half set (RELION ``maximization``): :func:`insert_slices` for
every particle → reduce the sums over ranks → :func:`symmetrise` (always: it also enforces
Hermitian symmetry on the ``kx = 0`` plane, which the inverse real FFT relies on; pass the
identity / C1 when there is no point group) → for the gold-standard FSC
:func:`downsampled_average` of both halves and :func:`downsampled_fsc` (optionally
:func:`join_low_resolution` first) → :func:`reconstruct` with ``fsc=`` (or no τ² for the
unfiltered half maps).

All functions derive the array module ``xp`` from their inputs (NumPy or CuPy).
"""

from dataclasses import dataclass

import numpy as np

from sta.backend import get_array_module, get_fft
from sta.kernels.grid import centred_axes, centred_squared, cosine_edge, distance_grid, fft_freqs


def _round(x, xp):
    """C ``ROUND`` (half away from zero) as int64."""
    return (xp.sign(x) * xp.floor(xp.abs(x) + 0.5)).astype(xp.int64)


def _c_round(x):
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def accumulator_shape(ori_size, pad=2, current_size=None):
    """Shape ``(D, D, D//2+1)`` and ``r_max`` of RELION's back-projector data array."""
    cs = ori_size if current_size is None else int(current_size)
    r_max = min(cs // 2, ori_size // 2)
    big_r = _c_round(pad * r_max)
    d = 2 * (big_r + 1) + 1
    return (d, d, d // 2 + 1), r_max


def new_accumulator(ori_size, pad=2, current_size=None, xp=np):
    """Zeroed ``(data complex128, weight float64)`` accumulators (see module docstring)."""
    shape, _ = accumulator_shape(ori_size, pad, current_size)
    return xp.zeros(shape, dtype=xp.complex128), xp.zeros(shape, dtype=xp.float64)


def grid_radius(shape):
    """``R = ROUND(pad·r_max)`` from an accumulator shape."""
    d = shape[0]
    if len(shape) != 3 or shape[1] != d or shape[2] != d // 2 + 1 or d % 2 == 0:
        raise ValueError(f"not a centred half-grid accumulator: shape {shape}")
    return (d - 3) // 2


def _scatter_add(dest_flat, idx, values):
    """``dest_flat[idx] += values`` (repeated indices summed) via one bincount over the touched range."""
    xp = get_array_module(dest_flat)
    if idx.size == 0:
        return
    lo = int(idx.min())
    hi = int(idx.max()) + 1
    rel = idx - lo
    if xp.iscomplexobj(dest_flat):
        dest_flat[lo:hi] += (xp.bincount(rel, weights=values.real, minlength=hi - lo)
                             + 1j * xp.bincount(rel, weights=values.imag, minlength=hi - lo))
    else:
        dest_flat[lo:hi] += xp.bincount(rel, weights=values, minlength=hi - lo)


def insert_slices(acc_data, acc_weight, slices, slice_weights, matrices, pad=2, kz=None):
    """Trilinear forward insertion of 2D half slices (RELION ``backproject2Dto3D``), in place.

    For every slice pixel ``(x, y)`` (``y = i`` for ``i <= cs//2`` else ``i − cs``; the
    ``x = 0`` column is taken for ``y >= 0`` only) with ``slice_weight > 0``, the 3D
    position is ``K = pad · M⁻¹ (x, y, 0)`` (``M`` rotates the reference into the image,
    so ``M⁻¹ = Mᵀ``).  Points with ``|K|² > R²`` are skipped; for ``K_x < 0`` the point is
    mirrored (``−K``) and the value conjugated; points whose 2x2x2 neighbourhood leaves the
    array are skipped; otherwise the eight neighbours receive the trilinear fractions of the
    value (data) and of the slice weight (weight).

    Parameters
    ----------
    acc_data : (D, D, D//2+1) complex, C-contiguous (updated in place)
    acc_weight : (D, D, D//2+1) float, C-contiguous (updated in place)
    slices : (n, cs, cs//2+1) complex
        Prepared data, e.g. ``Σ w X φ / σ²`` (:func:`sta.kernels.likelihood.backprojection_slices`).
    slice_weights : (n, cs, cs//2+1) float
        E.g. ``Σ w · Fctf / σ²``.
    matrices : (n, 3, 3)
        ``Aproj_f · A`` per slice.
    pad : float, padding factor (2)
    kz : (n,) float, optional
        Slice f is the plane ``kz_f`` of a 3D spectrum (3D pseudo-subtomograms): its points
        are ``pad · M⁻¹ (x, y, kz_f)``.

    Returns
    -------
    acc_data, acc_weight (the same arrays)

    Notes
    -----
    Cost O(number of slice pixels) plus one bincount over the span of touched voxels per
    call; insert many slices per call (a whole particle or batch) for speed.
    """
    xp = get_array_module(acc_data)
    if not (acc_data.flags.c_contiguous and acc_weight.flags.c_contiguous):
        raise ValueError("insert_slices: accumulators must be C-contiguous (they are updated in place)")
    big_r = grid_radius(acc_data.shape)
    d, _, wid = acc_data.shape
    c = d // 2
    slices = slices.reshape((-1,) + slices.shape[-2:])
    slice_weights = slice_weights.reshape(slices.shape)
    n, s, sh = slices.shape
    y = fft_freqs(s, xp, nyquist_positive=True).astype(float).reshape(-1, 1)
    x = xp.arange(sh, dtype=float).reshape(1, -1)
    ok2d = ~((x == 0) & (y < 0))
    minv = xp.linalg.inv(xp.asarray(matrices, dtype=float).reshape(n, 3, 3)) * pad
    pos = minv[:, :, 0, None, None] * x + minv[:, :, 1, None, None] * y         # (n, 3, s, sh)
    if kz is not None:
        pos = pos + minv[:, :, 2, None, None] * xp.asarray(kz, dtype=float).reshape(n, 1, 1, 1)
    r2 = (pos * pos).sum(axis=1)
    keep = ok2d & (slice_weights > 0) & (r2 <= big_r * big_r)
    px, py, pz = pos[:, 0][keep], pos[:, 1][keep], pos[:, 2][keep]
    val = slices[keep].astype(xp.complex128)
    wgt = slice_weights[keep].astype(xp.float64)
    neg = px < 0
    sg = xp.where(neg, -1.0, 1.0)
    px, py, pz = px * sg, py * sg, pz * sg
    val = xp.where(neg, xp.conj(val), val)
    x0, y0, z0 = xp.floor(px), xp.floor(py), xp.floor(pz)
    fx, fy, fz = px - x0, py - y0, pz - z0
    x0 = x0.astype(xp.int64)
    y0 = y0.astype(xp.int64) + c
    z0 = z0.astype(xp.int64) + c
    inb = (x0 + 1 < wid) & (y0 >= 0) & (y0 + 1 < d) & (z0 >= 0) & (z0 + 1 < d)
    x0, y0, z0, fx, fy, fz, val, wgt = (a[inb] for a in (x0, y0, z0, fx, fy, fz, val, wgt))
    base = (z0 * d + y0) * wid + x0
    idx, frac = [], []
    for dz, gz in ((0, 1 - fz), (1, fz)):
        for dy, gy in ((0, 1 - fy), (1, fy)):
            for dx, gx in ((0, 1 - fx), (1, fx)):
                idx.append(base + (dz * d + dy) * wid + dx)
                frac.append(gz * gy * gx)
    idx = xp.concatenate(idx)
    frac = xp.concatenate(frac)
    _scatter_add(acc_data.reshape(-1), idx, frac * xp.tile(val, 8))
    _scatter_add(acc_weight.reshape(-1), idx, frac * xp.tile(wgt, 8))
    return acc_data, acc_weight


# --------------------------------------------------------------------------- symmetry

def enforce_hermitian(acc_data, acc_weight):
    """RELION ``enforceHermitianSymmetry`` on the ``kx = 0`` plane (returns new arrays).

    Every pair ``(kz, ky), (−kz, −ky)`` (origin excluded) gets ``data + conj(mate)`` and
    ``weight + mate`` (summed, not averaged).
    """
    xp = get_array_module(acc_data)
    data = acc_data.copy()
    weight = acc_weight.copy()
    pd = acc_data[:, :, 0]
    pw = acc_weight[:, :, 0]
    md = pd[::-1, ::-1]
    mw = pw[::-1, ::-1]
    c = acc_data.shape[0] // 2
    new_d = pd + xp.conj(md)
    new_w = pw + mw
    new_d[c, c] = pd[c, c]
    new_w[c, c] = pw[c, c]
    data[:, :, 0] = new_d
    weight[:, :, 0] = new_w
    return data, weight


def _operators(group):
    mats = np.asarray(getattr(group, "matrices", group), dtype=float).reshape(-1, 3, 3)
    return [m for m in mats if not np.allclose(m, np.eye(3), atol=1e-9)]


def symmetrise(acc_data, acc_weight, group):
    """RELION ``BackProjector::symmetrise`` for a point group (returns new arrays).

    Hermitian symmetry is enforced first (:func:`enforce_hermitian`); then, for every voxel
    with ``|K|² <= R²``, the data and weights trilinearly sampled at ``R_op · K`` (Hermitian
    mate for negative x) are *added* for each non-identity operator (RELION sums; it does not
    divide by the group order).

    Parameters
    ----------
    acc_data, acc_weight : accumulators
    group : SymmetryGroup or (n_op, 3, 3) operators (identity entries are skipped)
    """
    xp = get_array_module(acc_data)
    data, weight = enforce_hermitian(acc_data, acc_weight)
    ops = _operators(group)
    if not ops:
        return data, weight
    shape = data.shape
    big_r = grid_radius(shape)
    d, _, wid = shape
    c = d // 2
    kz, ky, kx = centred_axes(shape, xp, half=True)
    sel = centred_squared(shape, xp, half=True) <= big_r * big_r
    zz, yy, xx = (xp.broadcast_to(a, shape)[sel].astype(float) for a in (kz, ky, kx))
    flat_d = data.reshape(-1)
    flat_w = weight.reshape(-1)
    sum_d = data.copy()
    sum_w = weight.copy()
    add_d = xp.zeros(zz.shape, dtype=data.dtype)
    add_w = xp.zeros(zz.shape)
    for m in ops:
        m = xp.asarray(m)
        px = m[0, 0] * xx + m[0, 1] * yy + m[0, 2] * zz
        py = m[1, 0] * xx + m[1, 1] * yy + m[1, 2] * zz
        pz = m[2, 0] * xx + m[2, 1] * yy + m[2, 2] * zz
        neg = px < 0
        sg = xp.where(neg, -1.0, 1.0)
        px, py, pz = px * sg, py * sg, pz * sg
        x0, y0, z0 = xp.floor(px), xp.floor(py), xp.floor(pz)
        fx, fy, fz = px - x0, py - y0, pz - z0
        base = ((z0.astype(xp.int64) + c) * d + (y0.astype(xp.int64) + c)) * wid + x0.astype(xp.int64)
        vd = xp.zeros(zz.shape, dtype=data.dtype)
        vw = xp.zeros(zz.shape)
        for dz, gz in ((0, 1 - fz), (1, fz)):
            for dy, gy in ((0, 1 - fy), (1, fy)):
                for dx, gx in ((0, 1 - fx), (1, fx)):
                    j = base + (dz * d + dy) * wid + dx
                    g = gz * gy * gx
                    vd = vd + g * flat_d[j]
                    vw = vw + g * flat_w[j]
        add_d += xp.where(neg, xp.conj(vd), vd)
        add_w += vw
    sum_d[sel] += add_d
    sum_w[sel] += add_w
    return sum_d, sum_w


# --------------------------------------------------------------------------- SSNR and reconstruction

@dataclass
class SSNRArrays:
    """Per-shell arrays of ``updateSSNRarrays`` (length ``ori_size//2 + 1``).

    Attributes
    ----------
    ssnr : ``data_vs_prior`` (``rlnSsnrMap``)
    sigma2 : σ² of the reconstruction, ``1/mean(pad³·weight)`` (``rlnReferenceSigma2``)
    tau2 : τ² (``rlnReferenceTau2``)
    fourier_coverage : fraction of voxels with ``weight/invtau2 >= 1`` (``rlnFourierCompleteness``)
    """

    ssnr: object
    sigma2: object
    tau2: object
    fourier_coverage: object


def ssnr_arrays(acc_weight, ori_size, pad=2, tau2_fudge=1.0, fsc=None, tau2=None, join_halves=False,
                avgctf2=None, r_max=None):
    """RELION ``BackProjector::updateSSNRarrays``.

    With ``fsc`` (gold-standard auto-refine, ``update_tau2_with_fsc``): ``fsc`` clamped to
    ``>= 0.001``, ``sqrt(2f/(1+f))`` if ``join_halves``, then ``<= 0.999``;
    ``ssnr = tau2_fudge · f/(1−f)``; ``tau2 = ssnr · sigma2``.  Otherwise ``tau2`` (given,
    or zeros) is kept and ``ssnr`` is the shell mean of ``weight / invtau2``.

    Parameters
    ----------
    acc_weight : (D, D, D//2+1) float accumulator weights
    ori_size : int
    pad : float
    tau2_fudge : float, ``--tau2_fudge``
    fsc : (ori//2+1,) half-set FSC, optional
    tau2 : (ori//2+1,) previous τ², optional
    join_halves : bool, halves joined (final iteration)
    avgctf2 : (ori//2+1,) average CTF², optional (premultiplied data without split halves)
    r_max : int, optional (default ``round(R/pad)``)

    Returns
    -------
    SSNRArrays (NumPy/CuPy arrays of length ``ori//2 + 1``)
    """
    xp = get_array_module(acc_weight)
    big_r = grid_radius(acc_weight.shape)
    r_max = int(round(big_r / pad)) if r_max is None else int(r_max)
    nsh = ori_size // 2 + 1
    ovs = float(pad) ** 3
    r2 = centred_squared(acc_weight.shape, xp, half=True)
    sel = r2 < big_r * big_r
    ires = _round(xp.sqrt(r2[sel].astype(float)) / pad, xp)
    w = acc_weight[sel]
    count = xp.bincount(ires, minlength=nsh)[:nsh].astype(float)
    wsum = xp.bincount(ires, weights=ovs * w, minlength=nsh)[:nsh]
    if bool(xp.any(wsum < 0)):
        raise ValueError("ssnr_arrays: negative weight sum in a shell")
    sigma2 = xp.where(wsum > 1e-20, count / xp.where(wsum > 1e-20, wsum, 1.0), 0.0)
    update = fsc is not None
    if update:
        f = xp.maximum(0.001, xp.asarray(fsc, dtype=float)[:nsh])
        if join_halves:
            f = xp.sqrt(2.0 * f / (f + 1.0))
        f = xp.minimum(0.999, f)
        ssnr = tau2_fudge * f / (1.0 - f)
        tau2 = ssnr * sigma2
    else:
        tau2 = xp.zeros(nsh) if tau2 is None else xp.asarray(tau2, dtype=float)[:nsh].copy()
        ssnr = xp.zeros(nsh)
    if bool(xp.any(tau2 < 0)):
        raise ValueError("ssnr_arrays: negative tau2")
    t = tau2[ires]
    with np.errstate(divide="ignore", invalid="ignore"):
        invtau2 = xp.where(t > 0, 1.0 / (ovs * tau2_fudge * xp.where(t > 0, t, 1.0)), 1.0 / (0.001 * w))
        if avgctf2 is not None:
            a = xp.asarray(avgctf2, dtype=float)[ires]
            invtau2 = xp.where((t > 0) & (a > 0), invtau2 / xp.where(a > 0, a, 1.0), invtau2)
        ratio = w / invtau2
    ratio = xp.where(xp.isnan(ratio), 0.0, ratio)
    cov = xp.bincount(ires, weights=(ratio >= 1.0).astype(float), minlength=nsh)[:nsh]
    coverage = xp.where(count > 0, cov / xp.where(count > 0, count, 1.0), 0.0)
    if not update:
        s = xp.bincount(ires, weights=ratio, minlength=nsh)[:nsh]
        ssnr = xp.where(count < 0.001, 999.0, s / xp.where(count > 0, count, 1.0))
        ssnr = xp.where(xp.arange(nsh) > r_max, 0.0, ssnr)
    return SSNRArrays(ssnr=ssnr, sigma2=sigma2, tau2=tau2, fourier_coverage=coverage)


def _soft_mask_outside(vol, radius, width):
    """RELION ``softMaskOutsideMap`` without a noise image: blend to the edge-weighted background mean."""
    xp = get_array_module(vol)
    r = distance_grid(vol.shape, xp=xp)
    bg_w = cosine_edge(r, radius, radius + width, xp, rising=True)
    bg = float((bg_w * vol).sum() / bg_w.sum())
    return xp.where(r < radius, vol, (1.0 - bg_w) * vol + bg_w * bg)


def reconstruct(acc_data, acc_weight, ori_size, pad=2, tau2=None, tau2_fudge=1.0, minres_map=5, fsc=None,
                join_halves=False, avgctf2=None, r_max=None):
    """RELION ``BackProjector::reconstruct`` with ``skip_gridding`` (the default), after ``updateSSNRarrays``.

    1. SSNR arrays (:func:`ssnr_arrays`); with ``fsc`` τ² is derived from it.
    2. MAP term (only when ``fsc`` or ``tau2`` is given): for ``|K|² < R²`` and shells
       ``ires = ROUND(|K|/pad) >= minres_map``: ``weight += 1/(pad³·tau2_fudge·τ²(ires))``,
       or ``1/(0.001·weight)`` where τ² = 0 (0 where the weight is 0).
    3. ``F = data / max(weight, radavg/1000)`` with ``radavg(i)`` the mean weight over
       ``FLOOR(|K|/pad) = i`` (``|K|² < ROUND((r_max·pad)²)``), ``i`` clamped to ``r_max−1``;
       voxels beyond ``|K|² > R²`` are zero.
    4. Window to the ``P = pad·ori`` grid, centre, inverse FFT, window to ``ori`` in real
       space, soft-mask the corners (radius ``ori/2``, 3-pixel cosine edge, background mean),
       divide by ``sinc²(r/(pad·ori))`` (trilinear gridding correction).

    The accumulators must be Hermitian on the ``kx = 0`` plane (:func:`symmetrise` /
    :func:`enforce_hermitian` first, as RELION does before every reconstruction).

    Parameters
    ----------
    acc_data, acc_weight : accumulators (not modified)
    ori_size : int
    pad : float
    tau2 : (ori//2+1,) τ² to regularise with (ignored when ``fsc`` is given)
    tau2_fudge : float
    minres_map : int, ``--minres_map`` (5)
    fsc : (ori//2+1,) half-set FSC, optional (gold standard; gives τ²)
    join_halves : bool, the final iteration's joined halves
    avgctf2 : optional, see :func:`ssnr_arrays`
    r_max : int, optional

    Returns
    -------
    volume : (ori, ori, ori) float (z, y, x), origin at voxel ``ori//2``
    arrays : SSNRArrays
    """
    xp = get_array_module(acc_data)
    shape = acc_data.shape
    big_r = grid_radius(shape)
    r_max = int(round(big_r / pad)) if r_max is None else int(r_max)
    arrays = ssnr_arrays(acc_weight, ori_size, pad, tau2_fudge, fsc=fsc, tau2=tau2, join_halves=join_halves,
                         avgctf2=avgctf2, r_max=r_max)
    do_map = fsc is not None or tau2 is not None
    r2 = centred_squared(shape, xp, half=True)
    inside = r2 <= big_r * big_r
    data = xp.where(inside, acc_data, 0)
    fw = xp.where(inside, acc_weight, 0.0)
    rr = xp.sqrt(r2.astype(float))
    if do_map:
        ires = _round(rr / pad, xp)
        ires_c = xp.minimum(ires, ori_size // 2)
        t = arrays.tau2[ires_c]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = xp.where(t > 0, 1.0 / (float(pad) ** 3 * tau2_fudge * xp.where(t > 0, t, 1.0)),
                           xp.where(fw > 1e-20, 1.0 / (0.001 * xp.where(fw > 1e-20, fw, 1.0)), 0.0))
        fw = xp.where((r2 < big_r * big_r) & (ires >= minres_map), fw + inv, fw)
    ifl = xp.floor(rr / pad).astype(xp.int64)
    round_max_r2 = _c_round(r_max * pad * r_max * pad)
    ring = r2 < round_max_r2
    ri = ifl[ring]
    cnt = xp.bincount(ri, minlength=r_max)[:r_max].astype(float)
    tot = xp.bincount(ri, weights=fw[ring], minlength=r_max)[:r_max]
    if bool(xp.any((cnt == 0) & (tot == 0))):
        raise ValueError("reconstruct: a shell inside r_max has no voxels (accumulator too small?)")
    radavg = tot / (1000.0 * cnt)
    floor_w = radavg[xp.minimum(ifl, r_max - 1)]
    wmax = xp.maximum(fw, floor_w)
    f = xp.where(wmax > 0, data / xp.where(wmax > 0, wmax, 1.0), data)
    return _to_real_space(f, ori_size, pad), arrays


def _to_real_space(f_centred, ori_size, pad):
    """``windowToOridimRealSpace`` + ``griddingCorrect`` for a centred half grid (our scaling)."""
    xp = get_array_module(f_centred)
    shape = f_centred.shape
    p = _c_round(pad * ori_size)
    p += p % 2
    ph = p // 2
    kz, ky, kx = centred_axes(shape, xp, half=True)
    keep = (kz > -ph) & (kz <= ph) & (ky > -ph) & (ky <= ph) & (kx <= ph)
    sel = xp.broadcast_to(keep, shape)
    zi = xp.broadcast_to(kz % p, shape)[sel]
    yi = xp.broadcast_to(ky % p, shape)[sel]
    xi = xp.broadcast_to(kx, shape)[sel]
    par = xp.broadcast_to((kz + ky + kx) % 2, shape)[sel]
    big = xp.zeros((p, p, ph + 1), dtype=xp.complex128)
    big[zi, yi, xi] = xp.where(par == 1, -f_centred[sel], f_centred[sel])
    vol = get_fft(xp).irfftn(big, s=(p, p, p))
    vol = vol * (float(p) ** 3 / (float(pad) ** 3 * float(ori_size) ** 2))
    lo = ph - ori_size // 2
    vol = vol[lo:lo + ori_size, lo:lo + ori_size, lo:lo + ori_size]
    vol = _soft_mask_outside(vol, ori_size / 2.0, 3.0)
    r = distance_grid(vol.shape, xp=xp)
    rv = r / (ori_size * pad)
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = xp.where(r > 0, xp.sin(np.pi * rv) / (np.pi * rv), 1.0)
    return vol / (sinc * sinc)


# --------------------------------------------------------------------------- gold-standard helpers

def downsampled_average(acc_data, acc_weight, pad=2, r_max=None):
    """RELION ``getDownsampledAverage``: sums over ``ROUND(K/pad)`` cells, divided by the weights.

    Returns
    -------
    (d, d, d//2+1) complex, ``d = 2·(r_max+1)+1``, centred like the accumulator.
    """
    xp = get_array_module(acc_data)
    shape = acc_data.shape
    big_r = grid_radius(shape)
    r_max = int(round(big_r / pad)) if r_max is None else int(r_max)
    dd = 2 * (r_max + 1) + 1
    cd = dd // 2
    kz, ky, kx = centred_axes(shape, xp, half=True)
    zi = _round(kz / pad, xp) + cd
    yi = _round(ky / pad, xp) + cd
    xi = _round(kx / pad, xp)
    flat = ((xp.broadcast_to(zi, shape) * dd + xp.broadcast_to(yi, shape)) * (dd // 2 + 1)
            + xp.broadcast_to(xi, shape)).ravel()
    size = dd * dd * (dd // 2 + 1)
    avg = (xp.bincount(flat, weights=acc_data.real.ravel(), minlength=size)
           + 1j * xp.bincount(flat, weights=acc_data.imag.ravel(), minlength=size))
    w = xp.bincount(flat, weights=acc_weight.ravel(), minlength=size)
    avg = xp.where(w > 0, avg / xp.where(w > 0, w, 1.0), 0)
    return avg.reshape(dd, dd, dd // 2 + 1)


def downsampled_fsc(avg1, avg2, ori_size, r_max=None):
    """RELION ``calculateDownSampledFourierShellCorrelation`` of two :func:`downsampled_average` grids.

    Shells ``ROUND(|k|)`` for ``|k| <= r_max`` (default ``d//2 − 1``); ``fsc[0] = 1``.

    Returns
    -------
    (ori//2+1,) float
    """
    xp = get_array_module(avg1)
    if avg1.shape != avg2.shape:
        raise ValueError(f"downsampled_fsc: shapes differ {avg1.shape} vs {avg2.shape}")
    r_max = avg1.shape[0] // 2 - 1 if r_max is None else int(r_max)
    nsh = ori_size // 2 + 1
    rr = xp.sqrt(centred_squared(avg1.shape, xp, half=True).astype(float))
    sel = rr <= r_max
    idx = _round(rr[sel], xp)
    a, b = avg1[sel], avg2[sel]
    num = xp.bincount(idx, weights=(a.real * b.real + a.imag * b.imag), minlength=nsh)[:nsh]
    d1 = xp.bincount(idx, weights=(a.real ** 2 + a.imag ** 2), minlength=nsh)[:nsh]
    d2 = xp.bincount(idx, weights=(b.real ** 2 + b.imag ** 2), minlength=nsh)[:nsh]
    den = d1 * d2
    fsc = xp.where(den > 0, num / xp.sqrt(xp.where(den > 0, den, 1.0)), 0.0)
    fsc[0] = 1.0
    return fsc


def join_low_resolution(data1, weight1, data2, weight2, lowres_r_max, pad=2):
    """``--low_resol_join_halves``: average both halves where ``|K|² <= ROUND(pad·lowres_r_max)²``.

    ``lowres_r_max = CEIL(ori_size·pixel_size / max(low_resol_join_halves, current_res_Å))``.

    Returns
    -------
    data1, weight1, data2, weight2 : new arrays
    """
    xp = get_array_module(data1)
    lim = _c_round(pad * lowres_r_max)
    sel = centred_squared(data1.shape, xp, half=True) <= lim * lim
    ad = (data1 + data2) / 2.0
    aw = (weight1 + weight2) / 2.0
    return (xp.where(sel, ad, data1), xp.where(sel, aw, weight1),
            xp.where(sel, ad, data2), xp.where(sel, aw, weight2))
