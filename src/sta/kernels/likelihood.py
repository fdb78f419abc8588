"""Expectation kernels of ``relion_refine`` for one tomography particle (a stack of 2D images).

A particle is a stack of ``n_img`` CTF-premultiplied tilt images that share one set of
hidden variables (orientation ``A``, 3D translation ``t``), spec §3.6 and §6.3.  A 3D
pseudo-subtomogram is handled as the stack of the planes ``kz`` of its 3D spectrum (``kz``
arguments; ``Aproj`` = identity): plane f holds frequencies ``(kx, ky, kz_f)``.  Every
function here is a pure array function written against ``xp`` (NumPy or CuPy, taken
from the inputs); nothing reads files or knows about MPI.

Conventions
-----------
* **Spectra** are FFTW half grids ``(s, s//2+1)`` of the *centred* transform
  :func:`sta.kernels.fourier.centred_rfft` (real-space origin at pixel ``s//2``, forward
  scaling ``1/sqrt(N) = 1/s``).  RELION scales its forward FFT by ``1/N = 1/s²``, so every
  quadratic quantity of the image domain here (σ²_noise, the reconstruction's σ² and τ²)
  is ``s²`` times RELION's number; divide by ``ori_size²`` when writing RELION STAR files.
* **Current size** ``cs`` (RELION ``image_current_size``, even): images are windowed to
  ``(cs, cs//2+1)`` with RELION's ``windowFourierTransform``: rows ``0..cs//2`` are the
  frequencies ``ky = 0..cs//2`` (the Nyquist row of the window is *positive*), the rows
  after it ``ky = -(cs//2-1)..-1``.  Frequencies stay integers in cycles per *ori* box.
* **Resolution index** (RELION ``Mresol_fine``): ``ires = ROUND(|k|)`` for pixels with
  ``ires <= cs//2`` excluding the duplicated ``kx = 0, ky < 0`` half column, else −1.
* **Noise weights**: ``inv_sigma2 = 1/(2·sigma2_fudge·σ²(ires))`` on pixels with
  ``ires > 0`` (0 elsewhere) is the factor of the squared difference; the back-projection
  uses ``bp_inv_sigma2 = 1/(sigma2_fudge·σ²(ires))`` including the origin (RELION's
  ``Minvsigma2``); :func:`noise_maps` builds both.
* **Model**: for orientation ``A`` (3x3, RELION Euler matrix) and image f the reference is
  sampled at ``(Aproj_f · A)⁻¹ k`` (= ``(Aproj_f A)ᵀ k`` for rotations), ``Aproj_f = R_f ·
  A_sub``; the predicted image is ``scale · Fctf_f · P_f`` with ``Fctf = C_f²``.
* **Translation sign** (spec §2.6; RELION ``getTranslationInTiltSeries`` followed by
  ``shiftImageInFourierTransform``): a 3D translation ``t`` (pixels, subtomogram frame,
  ``t = old_offset + trial``) becomes the 2D shift ``s_f = Aproj_f[0:2, :] · t`` and the
  *image* is multiplied by ``exp(-2πi (kx·s_x + ky·s_y) / ori_size)``, which moves its
  content by ``+s_f``.  A particle whose centre sits at ``box_centre − s_f`` in image f
  (i.e. whose 3D centre is displaced by ``−t``) is therefore matched by ``+t``; its
  ``rlnOriginX/Y/ZAngst`` is ``t · pixel_size``.
* **Orientation order**: arrays over hidden variables are ``(n_o, n_t)`` with the
  orientation index major, RELION's loop order (``idir, ipsi, iover_rot`` then
  ``itrans, iover_trans``), so ``argmax`` ties resolve as in RELION.

Cost of :func:`squared_differences` (the hot loop)
--------------------------------------------------
``diff2[o, t] = Σ_f Σ_k w(k) |c_f(k) P_of(k) − X_f(k) φ_ft(k)|²`` is expanded as
``a2[o] + x2 − 2·Re⟨P_o, c X φ_t w⟩``; the cross term is a real matrix product
``(n_o × 2M) @ (2M × n_t)`` over the interleaved (re, im) views, ``M = n_img · n_pix``
(``n_pix`` = pixels with ``inv_sigma2 > 0``, about ``π cs²/8``): ``4 · n_o · n_t · M``
flops; ``a2`` costs ``3 · n_o · M``.  In float32 the product is summed over pieces of
:data:`GEMM_K` reals (one BLAS call each, added in float64): with OpenBLAS this is about 3x
faster than one call over the whole ``2M`` axis, and more accurate.  For ``n_img = 41``,
``cs = 32`` (``n_pix = 426``), ``n_o = 1000``, ``n_t = 125`` (8.7 GFlop), CPU seconds on the
loaded 2-core development machine, one BLAS thread, complex64 slices, ``dtype=float32``:

* precomputed compressed slices (n_o, n_img, n_pix): 0.36 s (1.0 s with one product over
  the whole axis and ``a2`` on the whole chunk);
* slices interpolated on the fly by :class:`SliceSampler` (the callable form): 1.8 s
  (4.9 s before the sampler worked in cache-sized blocks): the 17.5 M trilinear lookups
  dominate, not the product.

A list of per-image slices (``model_proj[f]``: (n_o, n_pix)) is the form of slices shared by
the particles of a tilt series (sta_refine's global searches): the products run image by
image, without stacking the slices.

Working memory is bounded by ``max_bytes``: the translated-image matrix (``2·n_t·M``
reals, fixed) plus orientations in chunks sized to fit the rest (the caller's own
``model_proj`` array is not counted; use the callable form to stay within the budget).
"""

from dataclasses import dataclass

import numpy as np

from sta.backend import get_array_module

_DEFAULT_MAX_BYTES = 64 * 2 ** 20
SAMPLER_BYTES = 16   # bytes per slice pixel of SliceSampler.project: its result (complex64 or complex128);
#                      the transient memory is a few blocks of SAMPLE_BLOCK points
SAMPLE_BLOCK = 32768  # points per block of SliceSampler.sample (NumPy): temporaries of ~0.3 MB stay in cache


# --------------------------------------------------------------------------- grids

def relion_round(x, xp=np):
    """C ``ROUND``: half away from zero, as int64."""
    x = xp.asarray(x, dtype=float)
    return (xp.sign(x) * xp.floor(xp.abs(x) + 0.5)).astype(xp.int64)


def window_rows(size, current_size, xp=np):
    """Row indices of a ``(size, size//2+1)`` half grid kept by ``windowFourierTransform``.

    Returns ``(current_size,)`` int64: ``0..cs//2`` followed by the last ``cs − cs//2 − 1``
    rows of the full grid.
    """
    if current_size > size:
        raise ValueError(f"current size {current_size} larger than the image size {size}")
    n_pos = current_size // 2 + 1
    n_neg = current_size - n_pos
    return xp.concatenate([xp.arange(n_pos), xp.arange(size - n_neg, size)]).astype(xp.int64)


def window_half_spectrum(spec, current_size):
    """Window the last two axes ``(s, s//2+1)`` of ``spec`` to ``(cs, cs//2+1)`` (RELION)."""
    xp = get_array_module(spec)
    s = spec.shape[-2]
    if spec.shape[-1] != s // 2 + 1:
        raise ValueError(f"not a half spectrum of a square image: shape {spec.shape}")
    if current_size == s:
        return spec
    rows = window_rows(s, current_size, xp)
    return spec[..., rows, :current_size // 2 + 1]


def window_frequencies(current_size, xp=np):
    """RELION's logical frequencies of a windowed half grid.

    Returns
    -------
    ky : (cs, 1) float, ``i`` for ``i <= cs//2`` else ``i − cs``
    kx : (1, cs//2+1) float
    """
    i = xp.arange(current_size)
    ky = xp.where(i < current_size // 2 + 1, i, i - current_size).astype(float).reshape(-1, 1)
    kx = xp.arange(current_size // 2 + 1, dtype=float).reshape(1, -1)
    return ky, kx


def resolution_index(current_size, xp=np, kz=None):
    """RELION ``Mresol_fine`` of a ``(cs, cs//2+1)`` window: ``ROUND(|k|)`` or −1.

    −1 marks pixels beyond ``cs//2`` and the redundant ``kx = 0, ky < 0`` half column.
    With ``kz`` (n_planes,) the planes ``kz`` of a 3D window: (n_planes, cs, cs//2+1), the
    3D radius, and the same ``kx = 0, ky < 0`` exclusion in every plane (RELION's 3D rule).
    """
    ky, kx = window_frequencies(current_size, xp)
    r2 = ky * ky + kx * kx
    if kz is not None:
        kz = xp.asarray(kz, dtype=float).reshape(-1, 1, 1)
        r2 = r2[None] + kz * kz
    ires = relion_round(xp.sqrt(r2), xp)
    bad = (ires >= current_size // 2 + 1) | ((kx == 0) & (ky < 0))
    return xp.where(bad, -1, ires)


def plane_frequencies(size, xp=np):
    """Logical ``kz`` of the planes of a 3D half spectrum of side ``size`` (FFTW order, and
    the order :func:`window_rows` keeps when windowing): (size,) float."""
    return window_frequencies(size, xp)[0].ravel()


def npix_per_shell(ori_size, xp=np):
    """RELION ``Npix_per_shell`` (length ``ori//2+1``) of the full-size 2D half grid."""
    ires = resolution_index(ori_size, xp)
    ok = ires >= 0
    return xp.bincount(ires[ok].ravel(), minlength=ori_size // 2 + 1).astype(float)


def noise_maps(sigma2_noise, current_size, sigma2_fudge=1.0, remap=1.0, kz=None):
    """The two per-pixel noise factors of a window of size ``cs`` (RELION's ``Minvsigma2``).

    Parameters
    ----------
    sigma2_noise : (n_shells,) σ² per shell of the optics group (our normalisation)
    current_size : int
    sigma2_fudge : float, ``--sigma2_fudge``
    remap : float, ``(ori_model·px_model)/(image_size·px_image)`` (1 when sizes agree)
    kz : (n_planes,) float, optional: the maps of the planes of a 3D window (3D radius),
        (n_planes, cs, cs//2+1)

    Returns
    -------
    inv_sigma2 : (cs, cs//2+1) ``1/(2·fudge·σ²)`` for ``ires > 0``, 0 elsewhere (diff2 term)
    bp_inv_sigma2 : (cs, cs//2+1) ``1/(fudge·σ²)`` for ``ires >= 0`` (origin included),
        0 elsewhere (back-projection).  Shells with σ² = 0 give 0.
    """
    xp = get_array_module(sigma2_noise)
    s2 = xp.asarray(sigma2_noise, dtype=float)
    ires = resolution_index(current_size, xp, kz)
    remapped = relion_round(remap * ires, xp)
    ok = (ires >= 0) & (remapped < s2.shape[0])
    val = s2[xp.where(ok, remapped, 0)]
    inv = xp.where(ok & (val > 0), 1.0 / (sigma2_fudge * xp.where(val > 0, val, 1.0)), 0.0)
    return xp.where(ires > 0, 0.5 * inv, 0.0), inv


def log_sigma2_term(sigma2_noise, current_size, n_img, remap=1.0):
    """``Σ_pixels n_img · log(2π σ²)`` over pixels with ``ires > 0`` (RELION's ``logsigma2``)."""
    xp = get_array_module(sigma2_noise)
    s2 = xp.asarray(sigma2_noise, dtype=float)
    ires = resolution_index(current_size, xp)
    remapped = relion_round(remap * ires, xp)
    ok = (ires > 0) & (remapped < s2.shape[0])
    return float(n_img * xp.sum(xp.log(2 * np.pi * s2[remapped[ok]])))


def power_spectra(images_ft, kz=None):
    """Per-image power per shell, RELION's ``exp_power_img`` (``ires > 0`` only).

    Parameters
    ----------
    images_ft : (n_img, s, s//2+1) complex, full size
    kz : (n_img,) float, optional: the images are the planes ``kz`` of a 3D spectrum (3D radius)

    Returns
    -------
    (n_img, s//2+1) float
    """
    xp = get_array_module(images_ft)
    n, s = images_ft.shape[0], images_ft.shape[-2]
    ires = xp.broadcast_to(resolution_index(s, xp, kz), images_ft.shape).reshape(n, -1)
    p = (images_ft.real ** 2 + images_ft.imag ** 2).reshape(n, -1)
    nsh = s // 2 + 1
    out = xp.zeros((n, nsh))
    for f in range(n):
        ok = ires[f] > 0
        out[f] = xp.bincount(ires[f][ok], weights=p[f][ok], minlength=nsh)[:nsh]
    return out


# --------------------------------------------------------------------------- the particle

@dataclass
class PreparedParticle:
    """One particle's images windowed to the current size, with everything the E- and M-step need.

    Attributes
    ----------
    images : (n_img, cs, csh) complex
        Masked image spectra (alignment, σ² sums).
    images_nomask : (n_img, cs, csh) complex
        Unmasked spectra (back-projection); the same object as ``images`` when not given.
    ctf2 : (n_img, cs, csh) float
        ``Fctf = C_f²`` (premultiplied data).
    aproj : (n_img, 3, 3) float
        ``R_f · A_sub`` per image.
    inv_sigma2 : (cs, csh) float
        Squared-difference factor (``1/(2σ²)``, 0 where unused).
    bp_inv_sigma2 : (cs, csh) float
        Back-projection factor (``1/σ²``).
    ori_size, current_size : int
    pix : (n_pix,) int64
        Flat indices into ``(cs, csh)`` where ``inv_sigma2 > 0``.
    resol : (cs, csh) int64
        :func:`resolution_index` of the window.
    power : (n_img, ori//2+1) float
        Full-size power spectra of the masked images (RELION ``exp_power_img``).
    highres_xi2 : (n_img,) float
        Power beyond the current size (RELION ``exp_highres_Xi2_img``).
    x2 : float
        ``Σ_f Σ_k inv_sigma2 |X_f|²`` (the image term of diff2).
    sqrt_xi2 : (n_img,) float
        ``sqrt(Σ_window |X_f|²)`` (cross-correlation normaliser).
    noise_weight : (n_img, cs, csh) float or None
        Per-pixel noise factor of the CTF-weighted noise model (:func:`ctf_noise_weight`);
        ``inv_sigma2`` is then per image, ``(n_img, cs, csh)``.
    kz : (n_img,) float or None
        3D pseudo-subtomograms: the "images" are the planes ``kz`` of the particle's 3D
        spectrum (``aproj`` = identity); ``resol``, ``inv_sigma2`` and ``bp_inv_sigma2`` are
        then per plane.  None for 2D stacks.
    shell_count : (ori//2+1,) float
        What one unit of weight adds to the σ² denominator per shell: ``n_img · Npix(r)`` of
        the full-size image (2D stacks), the multiplicity summed over the shell of the full
        3D grid (RELION's ``wsum_stMulti``), or ``Npix(r)`` of the 3D grid without one.
    """

    images: object
    images_nomask: object
    ctf2: object
    aproj: object
    inv_sigma2: object
    bp_inv_sigma2: object
    ori_size: int
    current_size: int
    pix: object
    resol: object
    power: object
    highres_xi2: object
    x2: float
    sqrt_xi2: object
    noise_weight: object = None
    kz: object = None
    shell_count: object = None

    @property
    def n_img(self):
        return self.images.shape[0]

    @property
    def n_measured(self):
        """Images of the particle in RELION's per-image sums (1 for a 3D subtomogram)."""
        return 1 if self.kz is not None else self.n_img

    @property
    def diff2_constant(self):
        """``Σ_f highres_Xi2_f / 2``: RELION's per-particle diff2 offset (log-likelihood only)."""
        return float(self.highres_xi2.sum()) / 2.0


def _to_window(arr, cs):
    return arr if arr.shape[-2] == cs else window_half_spectrum(arr, cs)


def ctf_noise_weight(ctf2, floor=0.01):
    """``1/max(Fctf_f, floor·max Fctf_f)`` per pixel of every image ``f``: the noise of a
    premultiplied image is the raw noise times its CTF, so its variance at a pixel is
    ``Fctf·σ²_raw`` rather than the shell mean that RELION assumes.  The floor (relative to
    each image's maximum, so dose-attenuated tilts keep their own scale) keeps CTF zeros,
    where signal and noise both vanish, from dominating when the premultiplying CTF differs
    slightly from ours."""
    xp = get_array_module(ctf2)
    c = xp.asarray(ctf2, dtype=float)                                   # (n_img, s, s//2+1)
    top = xp.maximum(c.reshape(c.shape[0], -1).max(axis=1), 1e-30)
    return 1.0 / xp.maximum(c, floor * top[:, None, None])


def prepare_particle(images_ft, ctf2, aproj, inv_sigma2, current_size=None, images_nomask_ft=None,
                     bp_inv_sigma2=None, noise_weight=None, volume=False, multiplicity=None, multi_thr=0.01):
    """Window one particle's stack to the current size and precompute its constants.

    Parameters
    ----------
    images_ft : (n_img, s, s//2+1) complex
        ``centred_rfft`` of the (masked) premultiplied images, full size ``s = ori_size``
        (with ``volume``: the (s, s, s//2+1) 3D spectrum of a pseudo-subtomogram).
    ctf2 : (n_img, s, s//2+1) or (n_img, cs, cs//2+1) float
        ``Fctf = C_f²`` per image (dose weight and scale inside ``C_f``); with ``volume`` the
        (s, s, s//2+1) CTF² sums of the subtomogram.
    aproj : (n_img, 3, 3) float
        ``R_f · A_sub`` (ignored with ``volume``: the planes are in the subtomogram frame).
    inv_sigma2 : (s, s//2+1) or (cs, cs//2+1) float
        ``1/(2·sigma2_fudge·σ²(|k|))``, 0 on unused pixels (see :func:`noise_maps`); pixels
        outside RELION's ``Mresol`` of the window are zeroed here.  With ``volume``: the
        (cs, cs, cs//2+1) maps of the window's planes (``noise_maps(..., kz=plane_frequencies(cs))``).
    current_size : int, optional
        Even window size ``cs <= s`` (default ``s``).
    images_nomask_ft : same shape as ``images_ft``, optional
        Unmasked spectra for back-projection (default: ``images_ft``).
    bp_inv_sigma2 : same shape as ``inv_sigma2``, optional
        Back-projection factor ``1/σ²`` (default ``2·inv_sigma2``, i.e. origin excluded).
    noise_weight : (n_img, s, s//2+1) float, optional
        CTF-weighted noise model (:func:`ctf_noise_weight`): σ² is then the raw-image noise
        and every pixel's variance is ``σ²/noise_weight``; the diff2 weights and the power
        spectra (σ² sums beyond the current size) are multiplied by it.  The back-projection
        factor stays per shell.
    volume : bool
        The particle is a 3D pseudo-subtomogram: its planes ``|kz| <= cs//2`` become the
        images (:attr:`PreparedParticle.kz`).
    multiplicity : (s, s, s//2+1) float, optional (``volume`` only)
        RELION's subtomogram multiplicity: voxels below ``multi_thr`` are zeroed in data and
        CTF², the diff2 weight of voxels with multiplicity > 0.1 is divided by it (noise
        ``σ²·M``), and the σ² denominator counts the multiplicity (``shell_count``).
    """
    xp = get_array_module(images_ft)
    s = images_ft.shape[-2]
    cs = s if current_size is None else int(current_size)
    if images_ft.ndim != 3 or images_ft.shape[-1] != s // 2 + 1 or (volume and images_ft.shape[0] != s):
        want = "(s, s, s//2+1)" if volume else "(n_img, s, s//2+1)"
        raise ValueError(f"images_ft must be {want}, got {images_ft.shape}")
    kz = None
    nsh = s // 2 + 1
    full_mult = None
    if volume:
        planes = window_rows(s, cs, xp)
        kz = plane_frequencies(cs, xp)
        full_kz = plane_frequencies(s, xp)
        ires = resolution_index(s, xp, full_kz)
        ok = ires >= 0
        if multiplicity is not None:
            full_mult = xp.asarray(multiplicity, dtype=float)
            valid = full_mult >= multi_thr
            images_ft = images_ft * valid
            if images_nomask_ft is not None:
                images_nomask_ft = images_nomask_ft * valid
            ctf2 = xp.asarray(ctf2, dtype=float) * valid
            shell_count = xp.bincount(ires[ok], weights=(full_mult * valid)[ok], minlength=nsh)[:nsh]
        else:
            shell_count = xp.bincount(ires[ok], minlength=nsh)[:nsh].astype(float)
        power = power_spectra(images_ft, full_kz)
        images_ft = images_ft[planes]
        if images_nomask_ft is not None:
            images_nomask_ft = images_nomask_ft[planes]
        ctf2 = xp.asarray(ctf2, dtype=float)[planes]
        if noise_weight is not None:
            noise_weight = xp.asarray(noise_weight, dtype=float)[planes]
        aproj = xp.broadcast_to(xp.eye(3), (cs, 3, 3))
    n = images_ft.shape[0]
    if aproj.shape != (n, 3, 3):
        raise ValueError(f"aproj must be ({n}, 3, 3), got {aproj.shape}")
    resol = resolution_index(cs, xp, kz)
    x = window_half_spectrum(images_ft, cs)
    x_nm = x if images_nomask_ft is None else window_half_spectrum(images_nomask_ft, cs)
    c2 = _to_window(xp.asarray(ctf2, dtype=float), cs)
    w = _to_window(xp.asarray(inv_sigma2, dtype=float), cs) * (resol > 0)
    if bp_inv_sigma2 is None:
        bpw = 2.0 * w
    else:
        bpw = _to_window(xp.asarray(bp_inv_sigma2, dtype=float), cs) * (resol >= 0)
    nw = None
    if noise_weight is not None:
        full = xp.asarray(noise_weight, dtype=float)
        nw = _to_window(full, cs)
        w = w * nw
        if not volume:
            power = power_spectra(images_ft * xp.sqrt(full))
    elif not volume:
        power = power_spectra(images_ft)
    if full_mult is not None:
        m = window_half_spectrum(full_mult[planes], cs)
        w = w * xp.where(m > 0.1, 1.0 / xp.where(m > 0.1, m, 1.0), 1.0)
    if not volume:
        shell_count = n * npix_per_shell(s, xp)
    pix = xp.nonzero((w.reshape(-1, w.shape[-2] * w.shape[-1]) > 0).any(axis=0))[0]
    highres = power[:, cs // 2 + 1:].sum(axis=1) if cs < s else xp.zeros(power.shape[0])
    ax2 = x.real ** 2 + x.imag ** 2
    x2 = float(xp.sum(ax2 * w))
    if volume:   # one 3D image: its planes share one norm
        sqrt_xi2 = xp.full(n, float(xp.sqrt(ax2.sum())))
    else:
        sqrt_xi2 = xp.sqrt(ax2.reshape(n, -1).sum(axis=1))
    return PreparedParticle(images=x, images_nomask=x_nm, ctf2=c2, aproj=xp.asarray(aproj, dtype=float),
                            inv_sigma2=w, bp_inv_sigma2=bpw, ori_size=s, current_size=cs, pix=pix,
                            resol=resol, power=power, highres_xi2=highres, x2=x2, sqrt_xi2=sqrt_xi2,
                            noise_weight=nw, kz=kz, shell_count=shell_count)


# --------------------------------------------------------------------------- translations

def image_shifts(trans_px, aproj):
    """2D shifts ``s_ft = Aproj_f[0:2, :] · t`` in image pixels.

    Parameters
    ----------
    trans_px : (n_t, 3) 3D translations in pixels (``old_offset + trial``), subtomogram frame
    aproj : (n_img, 3, 3)

    Returns
    -------
    (n_t, n_img, 2) (x, y) shifts; the image is moved by ``+s``.
    """
    xp = get_array_module(aproj)
    t = xp.asarray(trans_px, dtype=float).reshape(-1, 3)
    return xp.einsum("fij,tj->tfi", aproj[:, :2, :], t)


def translation_phases(trans_px, aproj, ori_size, current_size=None, pix=None, kz=None):
    """Phase factors that move each image of the stack by ``+s_ft`` (see module docstring).

    ``φ_ft(k) = exp(−2πi (kx·s_x + ky·s_y) / ori_size)`` on the window's logical frequencies
    (RELION ``shiftImageInFourierTransform`` with ``oridim = ori_size``); with ``kz`` (the
    planes of a 3D spectrum) also ``exp(−2πi kz·s_z / ori_size)``.

    Parameters
    ----------
    trans_px : (n_t, 3) pixels
    aproj : (n_img, 3, 3)
    ori_size : int
    current_size : int, optional (default ``ori_size``)
    pix : (n_pix,) int, optional
        Return only these flat pixels of the window.
    kz : (n_img,) float, optional (3D pseudo-subtomograms, :attr:`PreparedParticle.kz`)

    Returns
    -------
    (n_t, n_img, cs, cs//2+1) complex, or (n_t, n_img, n_pix) with ``pix``.
    """
    xp = get_array_module(aproj)
    cs = ori_size if current_size is None else int(current_size)
    s = image_shifts(trans_px, aproj)
    ky, kx = window_frequencies(cs, xp)
    a = -2.0 * np.pi / ori_size
    px = xp.exp(1j * a * s[..., 0, None] * kx.ravel())          # (n_t, F, csh)
    py = xp.exp(1j * a * s[..., 1, None] * ky.ravel())          # (n_t, F, cs)
    if kz is not None:
        t = xp.asarray(trans_px, dtype=float).reshape(-1, 3)
        sz = xp.einsum("fj,tj->tf", xp.asarray(aproj, dtype=float)[:, 2, :], t)
        py = py * xp.exp(1j * a * sz * xp.asarray(kz, dtype=float))[..., None]
    if pix is None:
        return py[..., :, None] * px[..., None, :]
    pix = xp.asarray(pix)
    csh = cs // 2 + 1
    return xp.take(py, pix // csh, axis=-1) * xp.take(px, pix % csh, axis=-1)   # the same products, pixels only


# --------------------------------------------------------------------------- reference slices

class SliceSampler:
    """Fast trilinear slicing of a :class:`~sta.kernels.projector.FourierProjector`.

    Gives the same values as ``trilinear_half_complex(projector.ft, …)`` (same ``inside``
    rule, Hermitian mate for ``x < 0``), from a centred copy of the padded transform so
    that the eight neighbours are constant offsets of one flat index (about 8x faster).
    With NumPy the points are done in blocks of :data:`SAMPLE_BLOCK` with in-place
    arithmetic, so that every temporary stays in the CPU cache (bit-identical to
    :meth:`sample_reference`, the one-pass formula, and 1.5-3x faster than it on large
    inputs); CuPy takes the one-pass formula.

    Parameters
    ----------
    projector : FourierProjector
        Reference of box ``n = ori_size``, padding ``p/n``.
    dtype : complex128 (default) or complex64
        Precision of the table, the coordinates and the returned slices (complex64 is
        about 1.7x faster and is what GPU E-steps use; relative error ~1e-7).

    The sampler is read-only after construction: several threads may use one at once.
    """

    def __init__(self, projector, dtype=np.complex128):
        xp = projector.xp
        p = projector.padded
        ft = projector.ft
        h = p // 2 - 1
        idx = xp.concatenate([xp.arange(p - h, p), xp.arange(0, h + 1)])
        self.table = xp.ascontiguousarray(ft[idx][:, idx]).reshape(-1).astype(dtype)
        self.real_dtype = self.table.real.dtype
        self.xp = xp
        self.h = h
        self.side = 2 * h + 1
        self.width = ft.shape[2]
        self.n = projector.n
        self.scale = p / projector.n

    def sample_reference(self, x, y, z):
        """Trilinear values at padded-grid coordinates, in one pass over all points (the
        formula :meth:`sample` blocks; kept as its oracle and for CuPy)."""
        xp = self.xp
        neg = x < 0
        sg = xp.where(neg, -1, 1).astype(x.dtype)
        x, y, z = x * sg, y * sg, z * sg
        x0 = xp.floor(x)
        y0 = xp.floor(y)
        z0 = xp.floor(z)
        fx, fy, fz = x - x0, y - y0, z - z0
        h, side, wid = self.h, self.side, self.width
        inside = (x0 + 1 < wid) & (xp.abs(y) < h) & (xp.abs(z) < h)
        base = ((z0.astype(xp.int64) + h) * side + (y0.astype(xp.int64) + h)) * wid + x0.astype(xp.int64)
        base = xp.where(inside, base, 0)
        t = self.table
        dy, dz = wid, side * wid
        c00 = t[base] + fx * (t[base + 1] - t[base])
        c10 = t[base + dy] + fx * (t[base + dy + 1] - t[base + dy])
        c01 = t[base + dz] + fx * (t[base + dz + 1] - t[base + dz])
        c11 = t[base + dz + dy] + fx * (t[base + dz + dy + 1] - t[base + dz + dy])
        c0 = c00 + fy * (c10 - c00)
        c1 = c01 + fy * (c11 - c01)
        out = xp.where(inside, c0 + fz * (c1 - c0), 0)
        return xp.where(neg, xp.conj(out), out)

    def sample(self, x, y, z, out=None, overwrite=False):
        """Trilinear values at padded-grid coordinates (arrays of one shape).

        ``out`` (optional, NumPy): a C-contiguous array of the table's dtype and the points'
        size to write into; ``overwrite``: ``x``, ``y``, ``z`` (C-contiguous) may be used as
        scratch.  Same values, bit for bit, as :meth:`sample_reference` (which coordinates of
        another precision than the table's go to).
        """
        xp = self.xp
        if xp is not np or np.result_type(x, y, z) != self.real_dtype:   # CuPy, or coordinates of another
            vals = self.sample_reference(x, y, z)                         # precision (its result type)
            if out is None:
                return vals
            out[...] = vals.reshape(out.shape)
            return out
        shape = np.shape(x)
        flat = []
        for v in (x, y, z):
            c = np.ascontiguousarray(v)
            flat.append((c if overwrite or c is not v else c.copy()).reshape(-1))
        x, y, z = flat
        n = x.shape[0]
        if out is not None and not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        res = np.empty(n, dtype=self.table.dtype) if out is None else out.reshape(-1)
        step = SAMPLE_BLOCK
        for a in range(0, n, step):
            self._sample_block(x[a:a + step], y[a:a + step], z[a:a + step], res[a:a + step])
        return res.reshape(shape) if out is None else out

    def _sample_block(self, x, y, z, out):
        """:meth:`sample_reference` of one block of points into ``out``, with in-place NumPy
        arithmetic in the same order (so the same rounding); ``x``, ``y``, ``z`` are overwritten."""
        t = self.table
        h, side, wid = self.h, self.side, self.width
        sg = np.where(x < 0, self.real_dtype.type(-1), self.real_dtype.type(1))
        x *= sg                              # Hermitian mate: −k, conjugated below
        y *= sg
        z *= sg
        x0 = np.floor(x)
        y0 = np.floor(y)
        z0 = np.floor(z)
        inside = x0 + 1 < wid
        inside &= np.abs(y) < h
        inside &= np.abs(z) < h
        fx = np.subtract(x, x0, out=x)
        fy = np.subtract(y, y0, out=y)
        fz = np.subtract(z, z0, out=z)
        if side * side * wid < 2 ** 24 or x0.dtype == np.float64:   # integers exact in the float type
            base = z0
            base += h
            base *= side
            base += y0
            base += h
            base *= wid
            base += x0
            base *= inside
            base = base.astype(np.intp)
        else:
            base = z0.astype(np.intp)
            base += h
            base *= side
            base += y0.astype(np.intp)
            base += h
            base *= wid
            base += x0.astype(np.intp)
            base *= inside
        idx = np.empty_like(base)
        c = []
        for off in (0, wid, side * wid, side * wid + wid):     # (y, z) corners; x pairs below
            lo = np.take(t, np.add(base, off, out=idx))
            hi = np.take(t, np.add(base, off + 1, out=idx))
            hi -= lo
            hi *= fx
            hi += lo                        # lo + fx·(hi − lo)
            c.append(hi)
        c00, c10, c01, c11 = c
        c10 -= c00
        c10 *= fy
        c10 += c00                          # c0 = c00 + fy·(c10 − c00)
        c11 -= c01
        c11 *= fy
        c11 += c01                          # c1 = c01 + fy·(c11 − c01)
        c11 -= c10
        c11 *= fz
        np.add(c11, c10, out=out)           # c0 + fz·(c1 − c0)
        np.logical_not(inside, out=inside)
        out[inside] = 0
        im = out.imag
        im *= sg                            # conjugate the mates

    def project(self, rotations, aproj, current_size, pix=None, kz=None, out=None):
        """Reference slices ``P_of`` for every orientation and image, in ``centred_rfft`` scaling.

        Parameters
        ----------
        rotations : (n_o, 3, 3) RELION Euler matrices ``A``
        aproj : (n_img, 3, 3)
        current_size : int (window size ``cs``; frequencies in cycles per ``ori_size = n``)
        pix : (n_pix,) int, optional, flat window pixels to return
        kz : (n_img,) float, optional: image f is the plane ``kz_f`` of a 3D spectrum
            (3D pseudo-subtomograms), sampled at ``(Aproj_f A)⁻¹ (kx, ky, kz_f)``
        out : optional C-contiguous array of the result's shape and the table's dtype

        Returns
        -------
        (n_o, n_img, cs, cs//2+1) complex, or (n_o, n_img, n_pix).  Pixels with
        ``|k| > cs//2`` are 0 (RELION ``Projector::project``).
        """
        xp = self.xp
        m = xp.matmul(xp.asarray(aproj, dtype=float)[None], xp.asarray(rotations, dtype=float)[:, None])
        return self.project_matrices(m, current_size, pix, kz, out=out)

    def project_matrices(self, m, current_size, pix=None, kz=None, out=None):
        """As :meth:`project` for explicit slice matrices ``m`` (n_o, n_img, 3, 3) = ``Aproj_f · A_of``
        (every image may have its own orientation).

        With NumPy the slices are made a few at a time (about :data:`SAMPLE_BLOCK` points),
        written straight into the result: the transient memory is a few MB whatever the
        number of slices, and the values are those of one pass over all of them.
        """
        xp = self.xp
        minv = (xp.linalg.inv(m) * self.scale).astype(self.real_dtype)  # (n_o, F, 3, 3)
        ky, kx = window_frequencies(current_size, xp)
        ky = xp.broadcast_to(ky, (current_size, current_size // 2 + 1)).ravel()
        kx = xp.broadcast_to(kx, (current_size, current_size // 2 + 1)).ravel()
        if pix is not None:
            ky, kx = ky[pix], kx[pix]
        r = current_size // 2
        keep = kx * kx + ky * ky <= r * r
        kx_in, ky_in = kx, ky
        kx, ky = kx[keep].astype(self.real_dtype), ky[keep].astype(self.real_dtype)
        kzf = None if kz is None else xp.asarray(kz, dtype=self.real_dtype).reshape(-1, 1)   # (F, 1)
        lead = m.shape[:2]
        shape = lead + ((current_size, current_size // 2 + 1) if pix is None else keep.shape)
        if out is None:
            out = xp.empty(shape, dtype=self.table.dtype)
        elif out.shape != shape or out.dtype != self.table.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {shape} {self.table.dtype}, got {out.shape} {out.dtype}")
        flat = out.reshape(lead + (-1,))
        n_keep = int(kx.shape[0])
        full = n_keep == flat.shape[-1]
        if xp is not np:
            if not full:
                flat[...] = 0
            vals = self._slice_values(minv, kx, ky, kzf, r)
            if full:
                flat[...] = vals
            else:
                flat[..., keep] = vals
            return out
        n_f = lead[1]
        if n_keep >= 0.9 * flat.shape[-1]:
            # nearly every pixel is kept: sample them all straight into the result, then zero the others
            kx_all = kx_in.astype(self.real_dtype)
            ky_all = ky_in.astype(self.real_dtype)
            n_pix = flat.shape[-1]
            rows = max(1, SAMPLE_BLOCK // max(n_pix * n_f, 1))
            for a in range(0, lead[0], rows):
                b = min(a + rows, lead[0])
                self._slice_values(minv[a:b], kx_all, ky_all, kzf, r, out=flat[a:b])
            if not full:
                np.copyto(flat, 0, where=~keep)
            return out
        flat[...] = 0
        rows = max(1, SAMPLE_BLOCK // max(n_keep * n_f, 1))          # orientations per block
        buf = np.empty(rows * n_f * n_keep, dtype=self.table.dtype)
        for a in range(0, lead[0], rows):
            b = min(a + rows, lead[0])
            vals = buf[:(b - a) * n_f * n_keep].reshape(b - a, n_f, n_keep)
            self._slice_values(minv[a:b], kx, ky, kzf, r, out=vals)
            flat[a:b, :, keep] = vals
        return out

    def _slice_values(self, minv, kx, ky, kzf, r, out=None):
        """Values (n, F, K) at ``minv · (kx, ky, kz_f)`` (zero beyond radius ``r`` in 3D)."""
        xp = self.xp
        shape = minv.shape[:2] + kx.shape
        c = []
        tmp = xp.empty(shape, dtype=self.real_dtype)
        for j in range(3):          # the same products and sums as minv @ k, one axis at a time
            cj = xp.multiply(minv[..., j, 0, None], kx, out=xp.empty(shape, dtype=self.real_dtype))
            cj += xp.multiply(minv[..., j, 1, None], ky, out=tmp)
            if kzf is not None:
                cj += xp.multiply(minv[..., j, 2, None], kzf, out=tmp)
            c.append(cj)
        vals = self.sample(c[0], c[1], c[2], out=out, overwrite=True)
        vals /= self.n
        if kzf is not None:
            far = kx * kx + ky * ky + kzf * kzf > r * r                        # (F, K)
            if xp is np:
                np.copyto(vals, 0, where=far)
            else:
                vals[...] = xp.where(far, 0, vals)
        return vals


def slice_matrices(rotations, aproj):
    """``Aproj_f · A_o`` for every orientation and image: (n_o, n_img, 3, 3)."""
    xp = get_array_module(aproj)
    return xp.matmul(xp.asarray(aproj, dtype=float)[None], xp.asarray(rotations, dtype=float)[:, None])


# --------------------------------------------------------------------------- squared differences

def _flat_pixels(arr, pix):
    """(n, n_img, cs, csh) -> (n, n_img, n_pix) at ``pix``; 3D arrays are already compressed."""
    xp = get_array_module(arr)
    if arr.ndim == 3:
        return arr
    return xp.ascontiguousarray(arr.reshape(arr.shape[:-2] + (-1,))[..., pix])


def _orientation_chunks(n_o, per_o, fixed, max_bytes):
    step = max(1, int((max_bytes - fixed) // max(per_o, 1)))
    return [(a, min(a + step, n_o)) for a in range(0, n_o, step)]


def _count_orientations(model_proj, n_orientations):
    if isinstance(model_proj, (list, tuple)):
        return model_proj[0].shape[0]
    if not callable(model_proj):
        return model_proj.shape[0]
    if n_orientations is None:
        raise ValueError("a callable model_proj needs n_orientations")
    return int(n_orientations)


def _get_chunk(model_proj, a, b):
    return model_proj(a, b) if callable(model_proj) else model_proj[a:b]


def squared_differences(model_proj, prepared, trans_phases, max_bytes=_DEFAULT_MAX_BYTES, scale=1.0,
                        n_orientations=None, dtype=np.float64):
    """``diff2[o, t] = Σ_f Σ_k inv_sigma2(k) |scale·Fctf_f(k)·P_of(k) − X_f(k)·φ_ft(k)|²``.

    RELION's ``getAllSquaredDifferences`` for one particle and class (without the constant
    ``highres_Xi2/2``, see :attr:`PreparedParticle.diff2_constant`).

    Parameters
    ----------
    model_proj : array, callable or list
        Reference slices ``P`` (not CTF-multiplied), (n_o, n_img, cs, cs//2+1) complex or
        compressed (n_o, n_img, n_pix) at ``prepared.pix``; or ``f(start, stop)`` returning
        such a chunk (then give ``n_orientations``), e.g.
        ``lambda a, b: sampler.project(rots[a:b], p.aproj, p.current_size, p.pix)``; or a list
        of ``n_img`` arrays (n_o, n_pix), the compressed slices of each image (slices shared by
        the particles of a tilt series; no further memory than the products).
    prepared : PreparedParticle
    trans_phases : (n_t, n_img, cs, cs//2+1) or (n_t, n_img, n_pix) complex
        :func:`translation_phases` of the trial translations.
    max_bytes : int
        Working-memory budget; orientations are processed in chunks that fit.
    scale : float
        Group scale correction (``--scale``).
    n_orientations : int, required with a callable ``model_proj``
    dtype : float64 (default) or float32 for the matrix product.

    Returns
    -------
    (n_o, n_t) float64
    """
    xp = get_array_module(prepared.images)
    pix = prepared.pix
    n_pix = pix.shape[0]
    f = prepared.n_img
    n_o = _count_orientations(model_proj, n_orientations)
    inv = prepared.inv_sigma2
    w = inv.reshape(-1, inv.shape[-2] * inv.shape[-1])[:, pix]      # (1 or n_img, n_pix)
    x = prepared.images.reshape(f, -1)[:, pix]
    c = scale * prepared.ctf2.reshape(f, -1)[:, pix]
    ph = _flat_pixels(trans_phases, pix)
    n_t = ph.shape[0]
    if isinstance(model_proj, (list, tuple)):
        return _squared_differences_per_image(model_proj, prepared, x, c, w, ph, dtype)
    y = xp.empty(ph.shape, dtype=xp.result_type(x.dtype, ph.dtype))  # (n_t, F, n_pix), C order
    xp.multiply(((c * w) * x)[None], ph, out=y)
    m = f * n_pix
    ys = _real_pairs(y.reshape(n_t, m), dtype)                         # (n_t, 2M): re, im interleaved
    cw2 = xp.repeat((c * c * w).reshape(-1), 2)
    per_o = m * 16 * 2 + (m * 8 if dtype != np.float64 else 0) + 8 * n_t
    if callable(model_proj):
        per_o += m * SAMPLER_BYTES
    fixed = y.nbytes + (ys.nbytes if ys.dtype != y.real.dtype else 0)
    out = xp.empty((n_o, n_t))
    for a, b in _orientation_chunks(n_o, per_o, fixed, max_bytes):
        p = _flat_pixels(_get_chunk(model_proj, a, b), pix).reshape(b - a, m)
        ps = _real_pairs(p, None)
        a2 = _weighted_squares(ps, cw2)
        if dtype != ps.dtype:
            ps = ps.astype(dtype)
        out[a:b] = a2[:, None] + prepared.x2 - 2.0 * _cross_products(ps, ys)
    return out


def _squared_differences_per_image(slices, prepared, x, c, w, ph, dtype):
    """:func:`squared_differences` for slices given per image (``slices[f]``: (n_o, n_pix)):
    the same terms, summed image by image in float64."""
    xp = get_array_module(x)
    n_img = len(slices)
    if n_img != prepared.n_img:
        raise ValueError(f"{n_img} images of slices for a particle of {prepared.n_img} images")
    n_o, n_t = slices[0].shape[0], ph.shape[0]
    cross = xp.zeros((n_o, n_t))
    a2 = xp.zeros(n_o)
    for f in range(n_img):
        wf = w[f if w.shape[0] > 1 else 0]
        y = ((c[f] * wf) * x[f])[None] * ph[:, f]                         # (n_t, n_pix)
        ps = _real_pairs(slices[f], None)
        a2 += _weighted_squares(ps, xp.repeat(c[f] * c[f] * wf, 2))
        if dtype != ps.dtype:
            ps = ps.astype(dtype)
        cross += _cross_products(ps, _real_pairs(y, dtype))
    return a2[:, None] + prepared.x2 - 2.0 * cross


GEMM_K = 384   # float32 products of the cross term are summed over pieces of this many reals


def _cross_products(ps, ys):
    """``ps @ ys.T`` (float64).  In float32 the sum over the long axis is done in pieces of
    :data:`GEMM_K` reals, each one BLAS product, added up in float64: the pieces fit the BLAS
    blocking (with OpenBLAS about 3x faster than one product over the whole axis on the
    development machine) and the float64 sum of the pieces is the more accurate one."""
    xp = get_array_module(ps)
    k = ps.shape[1]
    if xp is not np or ps.dtype != np.float32 or k <= GEMM_K:
        return ps @ ys.T
    out = np.zeros((ps.shape[0], ys.shape[0]))
    for a in range(0, k, GEMM_K):
        out += ps[:, a:a + GEMM_K] @ ys[:, a:a + GEMM_K].T
    return out


def _weighted_squares(ps, w, block_bytes=2 ** 20):
    """``(ps * ps) @ w`` (rows of ``ps`` squared, dotted with the float64 ``w``) a few rows at a
    time, so that the squares and their float64 copy stay in the CPU cache (3-4x faster on
    large ``ps``).  The same float64 sums as one product over all rows, bit for bit on most
    rows; BLAS may group the last rows of a block differently (differences of 1e-16)."""
    xp = get_array_module(ps)
    n = ps.shape[0]
    rows = max(4, int(block_bytes // max(ps.shape[1] * 8, 1)) // 4 * 4)
    if xp is not np or rows >= n:
        return (ps * ps) @ w
    out = np.empty(n, dtype=np.result_type(ps.dtype, w.dtype))
    sq = np.empty((rows, ps.shape[1]), dtype=ps.dtype)
    for a in range(0, n, rows):
        b = min(a + rows, n)
        q = np.multiply(ps[a:b], ps[a:b], out=sq[:b - a])
        out[a:b] = q @ w
    return out


def _real_pairs(z, dtype):
    """(n, M) complex -> (n, 2M) real view (re, im interleaved), cast to ``dtype`` if given.

    ``Re(conj(a)·b)`` summed over M is the dot product of the two real views.
    """
    xp = get_array_module(z)
    z = xp.ascontiguousarray(z)
    r = z.view(z.real.dtype).reshape(z.shape[0], -1)
    return r if dtype is None or r.dtype == dtype else r.astype(dtype)


def cross_correlation_scores(model_proj, prepared, trans_phases, max_bytes=_DEFAULT_MAX_BYTES, scale=1.0,
                             n_orientations=None):
    """RELION's ``--firstiter_cc`` score: ``Σ_f −Re⟨A_of, X_f φ_ft⟩ / (‖A_of‖ ‖X_f‖)``.

    ``A = scale·Fctf·P``; the sums run over every pixel of the window (no noise weights,
    origin included), ``‖X_f‖ = prepared.sqrt_xi2[f]``; the planes of a 3D subtomogram share
    one pair of norms.  Smaller is better (as diff2).

    Parameters
    ----------
    model_proj : (n_o, n_img, cs, cs//2+1) complex or callable (see :func:`squared_differences`)
    trans_phases : (n_t, n_img, cs, cs//2+1) complex (full window, not compressed)

    Returns
    -------
    (n_o, n_t) float64
    """
    xp = get_array_module(prepared.images)
    f = prepared.n_img
    k = prepared.images.shape[-2] * prepared.images.shape[-1]
    n_o = _count_orientations(model_proj, n_orientations)
    ctf = scale * prepared.ctf2.reshape(f, k)
    ph = trans_phases.reshape(trans_phases.shape[0], f, k)
    n_t = ph.shape[0]
    norm_x = xp.where(prepared.sqrt_xi2 > 0, prepared.sqrt_xi2, 1.0)
    y = xp.empty(ph.shape, dtype=xp.result_type(prepared.images.dtype, ph.dtype))
    xp.multiply((prepared.images.reshape(f, k) / norm_x[:, None])[None], ph, out=y)
    m = f * k
    ys = _real_pairs(y.reshape(n_t, m), None)
    per_o = m * (16 * 3) + (m * SAMPLER_BYTES if callable(model_proj) else 0)
    out = xp.empty((n_o, n_t))
    for a, b in _orientation_chunks(n_o, per_o, y.nbytes, max_bytes):
        p = _get_chunk(model_proj, a, b).reshape(b - a, f, k)
        na = xp.sqrt(((p.real ** 2 + p.imag ** 2) * (ctf * ctf)[None]).sum(axis=2))
        if prepared.kz is not None:     # one 3D image: one norm over all its planes
            na = xp.broadcast_to(xp.sqrt((na * na).sum(axis=1, keepdims=True)), na.shape)
        p = p * (ctf[None] / xp.where(na > 0, na, 1.0)[..., None])
        out[a:b] = -(_real_pairs(p.reshape(b - a, m), ys.dtype) @ ys.T)
    return out


# --------------------------------------------------------------------------- weights

@dataclass
class Posterior:
    """Weights of one particle over its hidden variables (RELION ``convertAllSquaredDifferencesToWeights``).

    Attributes
    ----------
    weights : (n_o, n_t) float
        RELION's ``exp_Mweight``: ``π_o π_t exp(−(diff2 − min))`` (0 beyond 700, or where
        diff2 was not evaluated), *not* normalised.
    sum_weight : float
    significant : (n_o, n_t) bool
        ``weights >= significant_weight`` (the hidden points kept for pass 2 / the M-step).
    significant_weight : float
    n_significant : int
        RELION's ``my_nr_significant_coarse_samples`` (``rlnNrOfSignificantSamples``).
    best : (int, int)
        (o, t) of the largest weight (first in (o, t) order on ties).
    pmax : float
        ``max weight / sum`` (``rlnMaxValueProbDistribution``).
    min_diff2 : float
    log_likelihood : float
        ``log(sum_weight) − min_diff2 − log_sigma2`` (``rlnLogLikeliContribution``), or
        ``−min_diff2/n_img`` for cross-correlation scores.
    """

    weights: object
    sum_weight: float
    significant: object
    significant_weight: float
    n_significant: int
    best: tuple
    pmax: float
    min_diff2: float
    log_likelihood: float

    def mstep_weights(self):
        """Normalised weights restricted to the significant set (RELION ``storeWeightedSums``)."""
        xp = get_array_module(self.weights)
        return xp.where(self.significant, self.weights / self.sum_weight, 0.0)

    def significant_orientations(self):
        """Indices of orientations with at least one significant translation."""
        xp = get_array_module(self.weights)
        return xp.nonzero(self.significant.any(axis=1))[0]


def orientation_log_prior(pdf):
    """``log(pdf / mean(pdf))`` (RELION divides the orientation pdf by its mean)."""
    xp = get_array_module(pdf)
    pdf = xp.asarray(pdf, dtype=float)
    mean = pdf.mean()
    with np.errstate(divide="ignore"):
        return xp.log(pdf / mean if mean != 0 else pdf)


def offset_log_prior(trans_px, prior_px, sigma2_offset, pixel_size):
    """RELION's normalised offset prior ``log(π_t / mean_t π_t)``.

    ``π_t = exp(−Σ_axes |t − prior|²·px² / (2σ²_axis))`` with σ² in Å² (scalar or per axis,
    ``(offset_range/3)²`` for ``--offset_range_x/y/z``); the Gaussian norm cancels in the
    mean.  RELION's quirk for σ²_x < 0.0001 Å² (every offset gets prior 1) is kept.

    Parameters
    ----------
    trans_px : (n_t, 3) absolute offsets ``old_offset + trial`` in pixels (coarse grid)
    prior_px : (3,) prior centre in pixels
    sigma2_offset : float or (3,) Å²
    pixel_size : float, Å

    Returns
    -------
    (n_t,) float
    """
    xp = get_array_module(trans_px)
    t = xp.asarray(trans_px, dtype=float).reshape(-1, 3)
    s2 = np.broadcast_to(np.asarray(sigma2_offset, dtype=float), (3,))
    if s2[0] < 0.0001:
        return xp.zeros(t.shape[0])
    d = (t - xp.asarray(prior_px, dtype=float)) ** 2 * pixel_size ** 2
    log_pdf = -(d / (2.0 * xp.asarray(s2))).sum(axis=1)
    lmax = log_pdf.max()
    return log_pdf - (lmax + xp.log(xp.mean(xp.exp(log_pdf - lmax))))


def weights_from_diff2(diff2, log_prior_orient=None, log_prior_trans=None, adaptive_fraction=0.999,
                       max_significants=0, log_sigma2=0.0):
    """Posterior weights, significant set and particle statistics from ``diff2``.

    Parameters
    ----------
    diff2 : (n_o, n_t) float
        Squared differences; ``inf`` or ``nan`` marks points not evaluated (RELION: −999).
    log_prior_orient : (n_o,) float, optional
        ``log π_o`` already normalised as RELION does (:func:`orientation_log_prior`; in
        pass 2 the oversampled children carry their coarse parent's value).
    log_prior_trans : (n_t,) float, optional
        ``log π_t`` (:func:`offset_log_prior`; children carry the parent's value).
    adaptive_fraction : float
        ``--adaptive_fraction``: keep the largest weights until their sum exceeds this
        fraction of the total (the weight that crosses is kept).
    max_significants : int
        ``--maxsig`` (0: no cap): the significant weight is that of the last point counted
        while fewer than this many were counted.
    log_sigma2 : float
        :func:`log_sigma2_term` (enters the log-likelihood only).

    Returns
    -------
    Posterior
    """
    xp = get_array_module(diff2)
    d = xp.asarray(diff2, dtype=float)
    done = xp.isfinite(d)
    if not bool(done.any()):
        raise ValueError("weights_from_diff2: no evaluated hidden variable (all diff2 are inf/nan)")
    dmin = float(d[done].min())
    rel = xp.where(done, d - dmin, 1e300)
    lp = xp.zeros(d.shape)
    if log_prior_orient is not None:
        lp = lp + xp.asarray(log_prior_orient, dtype=float)[:, None]
    if log_prior_trans is not None:
        lp = lp + xp.asarray(log_prior_trans, dtype=float)[None, :]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        wgt = xp.where(done & (rel <= 700.0), xp.exp(lp) * xp.exp(-xp.minimum(rel, 700.0)), 0.0)
    total = float(wgt.sum())
    if not total > 0:
        raise ValueError("weights_from_diff2: the sum of weights is zero (all priors zero?)")
    srt = xp.sort(wgt[wgt > 0])[::-1]
    csum = xp.cumsum(srt)
    n_cross = int(xp.searchsorted(csum, adaptive_fraction * total, side="right")) + 1
    n_cross = min(n_cross, srt.shape[0])
    n_sig = n_cross if max_significants <= 0 else min(n_cross, int(max_significants))
    sig_w = float(srt[n_sig - 1])
    flat = int(xp.argmax(wgt))
    best = (flat // d.shape[1], flat % d.shape[1])
    return Posterior(weights=wgt, sum_weight=total, significant=wgt >= sig_w, significant_weight=sig_w,
                     n_significant=n_sig, best=best, pmax=float(srt[0]) / total, min_diff2=dmin,
                     log_likelihood=float(np.log(total)) - dmin - log_sigma2)


def weights_from_cc(scores, n_img):
    """First-iteration cross-correlation: weight 1 on the best (smallest) score, 0 elsewhere."""
    xp = get_array_module(scores)
    s = xp.where(xp.isfinite(scores), scores, xp.inf)
    flat = int(xp.argmin(s))
    best = (flat // s.shape[1], flat % s.shape[1])
    w = xp.zeros(s.shape)
    w[best] = 1.0
    smin = float(s[best])
    return Posterior(weights=w, sum_weight=1.0, significant=w >= 1.0, significant_weight=1.0, n_significant=1,
                     best=best, pmax=1.0, min_diff2=smin, log_likelihood=-smin / n_img)


# --------------------------------------------------------------------------- M-step sums

def weighted_images(weights, images, trans_phases):
    """``Σ_t w_ot X_f φ_ft`` for every orientation and image, and ``Σ_t w_ot``.

    Parameters
    ----------
    weights : (n_o, n_t) float, normalised M-step weights of the orientations kept
        (rows of :meth:`Posterior.mstep_weights` at :meth:`Posterior.significant_orientations`)
    images : (n_img, cs, cs//2+1) complex (``prepared.images_nomask`` for back-projection,
        ``prepared.images`` for the σ² sums)
    trans_phases : (n_t, n_img, cs, cs//2+1) complex

    Returns
    -------
    wimg : (n_o, n_img, cs, cs//2+1) complex
    wsum : (n_o,) float
    """
    xp = get_array_module(images)
    w = xp.asarray(weights, dtype=float)
    n_t = trans_phases.shape[0]
    ph = trans_phases.reshape(n_t, -1)
    acc = (w @ ph.real) + 1j * (w @ ph.imag)
    wimg = acc.reshape((w.shape[0],) + images.shape) * images[None]
    return wimg, w.sum(axis=1)


@dataclass
class NoiseSums:
    """Per-particle contributions to the M-step of the noise and scale models.

    Attributes
    ----------
    wsum_sigma2 : (ori//2+1,) float
        ``Σ_{o,t,f} w |X_f φ_ft − A_of|²`` per shell (masked images, Mresol pixels incl. the
        origin) plus, beyond the current size, the images' power (RELION adds it unweighted).
    sumw : float
        ``n_img · Σ_{o,t} w`` (RELION sums the weight once per image: ``sumw_group``).
        σ²(r) = Σ wsum_sigma2 / (2 · Σ sumw · Npix(r)) over the optics group.
    wsum_ctf2 : (ori//2+1,) float
        ``Σ_f scale · Fctf_f`` per shell (``sumw_ctf2``, for the average CTF²).
    scale_xa, scale_aa : float
        ``Σ w Re(A* Xφ)`` and ``Σ w |A|²`` over shells with SSNR > 3 (``--scale``); A
        includes the current scale, divide by it / its square as RELION does.
    count : (ori//2+1,) float
        ``Σ w · shell_count``: the σ² denominator per shell (``sumw · Npix(r)`` for 2D
        stacks, the weighted multiplicity sums of 3D subtomograms), σ² = Σ wsum_sigma2 /
        (2 · Σ count).
    """

    wsum_sigma2: object
    sumw: float
    wsum_ctf2: object
    scale_xa: float
    scale_aa: float
    count: object = None


def noise_sums(weights, model_proj, prepared, trans_phases, scale=1.0, ssnr=None, wimg=None):
    """σ², CTF² and scale sums of one particle (RELION ``storeWeightedSums``).

    Parameters
    ----------
    weights : (n_o, n_t) normalised M-step weights of the kept orientations
    model_proj : (n_o, n_img, cs, cs//2+1) complex reference slices of those orientations
    prepared : PreparedParticle
    trans_phases : (n_t, n_img, cs, cs//2+1) complex
    scale : float, group scale correction
    ssnr : (ori//2+1,) float, optional, ``data_vs_prior`` of the class (for the scale sums)
    wimg : optional precomputed ``weighted_images(weights, prepared.images, trans_phases)[0]``

    Returns
    -------
    NoiseSums
    """
    xp = get_array_module(prepared.images)
    w = xp.asarray(weights, dtype=float)
    if wimg is None:
        wimg, wsum = weighted_images(w, prepared.images, trans_phases)
    else:
        wsum = w.sum(axis=1)
    a = scale * prepared.ctf2[None] * model_proj                       # (n_o, F, cs, csh)
    x = prepared.images
    per_pix = (float(w.sum()) * (x.real ** 2 + x.imag ** 2)
               + xp.einsum("o,ofyx->fyx", wsum, a.real ** 2 + a.imag ** 2)
               - 2.0 * (a.real * wimg.real + a.imag * wimg.imag).sum(axis=0))
    if prepared.noise_weight is not None:
        per_pix = per_pix * prepared.noise_weight
    resol = xp.broadcast_to(prepared.resol, per_pix.shape)
    ok = resol >= 0
    nsh = prepared.ori_size // 2 + 1
    idx = resol[ok]
    wsum_sigma2 = xp.bincount(idx, weights=per_pix[ok], minlength=nsh)[:nsh]
    cs = prepared.current_size
    if cs < prepared.ori_size:
        wsum_sigma2[cs // 2 + 1:] += prepared.power[:, cs // 2 + 1:].sum(axis=0)
    wsum_ctf2 = xp.bincount(idx, weights=(scale * prepared.ctf2)[ok], minlength=nsh)[:nsh]
    xa = aa = 0.0
    if ssnr is not None:
        good = ok & (xp.asarray(ssnr)[xp.where(ok, resol, 0)] > 3.0)
        xa = float((a.real * wimg.real + a.imag * wimg.imag).sum(axis=0)[good].sum())
        aa = float(xp.einsum("o,ofyx->fyx", wsum, a.real ** 2 + a.imag ** 2)[good].sum())
    count = prepared.shell_count if prepared.shell_count is not None else prepared.n_img * npix_per_shell(
        prepared.ori_size, xp)
    return NoiseSums(wsum_sigma2=wsum_sigma2, sumw=prepared.n_measured * float(w.sum()), wsum_ctf2=wsum_ctf2,
                     scale_xa=xa, scale_aa=aa, count=float(w.sum()) * count)


def offset_sums(weights, trans_px, prior_px, pixel_size, n_img):
    """``n_img · Σ_{o,t} w |t − prior|² px²`` (Å²) and ``n_img · Σ w`` for ``sigma2_offset``.

    RELION accumulates these inside its per-image loop, hence the factor ``n_img``;
    ``sigma2_offset = Σ sums / (3 · Σ sumw)`` over all particles.

    Parameters
    ----------
    weights : (n_o, n_t) normalised M-step weights
    trans_px : (n_t, 3) absolute offsets in pixels, prior_px : (3,) pixels
    """
    xp = get_array_module(weights)
    wt = xp.asarray(weights, dtype=float).sum(axis=0)
    d2 = ((xp.asarray(trans_px, dtype=float).reshape(-1, 3) - xp.asarray(prior_px, dtype=float)) ** 2).sum(axis=1)
    return n_img * float((wt * d2).sum()) * pixel_size ** 2, n_img * float(wt.sum())


def backprojection_slices(wimg, wsum, prepared, scale=1.0):
    """Data and weight slices for :func:`sta.kernels.fourier_insert.insert_slices`.

    Premultiplied data (spec §3.6/§6.4): data ``= Σ_t w X_f φ_ft / σ²`` (image not
    multiplied again), weight ``= Σ_t w · scale · Fctf_f / σ²``.

    Parameters
    ----------
    wimg : (n_o, n_img, cs, csh) complex, :func:`weighted_images` of ``prepared.images_nomask``
    wsum : (n_o,) float
    prepared : PreparedParticle

    Returns
    -------
    data : (n_o, n_img, cs, csh) complex, weight : (n_o, n_img, cs, csh) float
        Insert with ``slice_matrices(rotations, prepared.aproj)``.
    """
    bp = prepared.bp_inv_sigma2
    data = wimg * bp
    weight = wsum[:, None, None, None] * (scale * prepared.ctf2 * bp)[None]
    return data, weight
