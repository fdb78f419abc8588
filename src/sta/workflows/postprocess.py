"""Gold-standard FSC, resolution and sharpening: the algorithm of ``relion_postprocess``.

Follows ``Postprocessing::run`` (``src/postprocessing.cpp``, RELION 5):

1. FSC of the unmasked half maps; with a mask, FSC of the masked maps and of the masked
   maps whose phases were randomised beyond the shell where the unmasked FSC drops below
   ``randomize_at_fsc`` (or beyond ``randomize_at_A``); the corrected FSC
   ``(FSC_masked - FSC_rand)/(1 - FSC_rand)`` two shells beyond the randomisation shell.
2. Resolution: the last shell before the corrected FSC first drops below 0.143
   (the unmasked curve is used instead when it reaches further, unless ``force_mask``).
3. The average of the unmasked halves is divided by the MTF, FSC-weighted
   (``sqrt(2 FSC/(1 + FSC))``), B-factor sharpened (fitted on the Guinier plot or ad hoc)
   and optionally low-pass filtered.

Volumes are cubic ``(n, n, n)`` arrays (NumPy or CuPy); curves are NumPy arrays over the
shells ``0 .. n//2``; resolutions in Å, B-factors in Å², frequencies in 1/Å.
"""

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from sta.backend import get_array_module, get_fft, to_host
from sta.kernels import filters
from sta.kernels import fsc as fsck
from sta.kernels.grid import shell_index

log = logging.getLogger(__name__)

#: RELION's stdout label width (``std::cout.width(35); std::left``)
LABEL_WIDTH = 35

PHASE_RANDOM_WARNING = (
    " WARNING: The phase-randomised FSC is larger than 0.10 at the estimated resolution!",
    " WARNING: This may result in an incorrect resolution estimation. Provide a softer mask "
    "with less features to get lower phase-randomised FSCs.",
)
UNMASKED_BETTER_WARNING = " WARNING: the unmasked FSC extends beyond the solvent-corrected FSC."
UNMASKED_BETTER_SKIP = (
    " WARNING: the unmasked FSC extends beyond the solvent-corrected FSC. Skip masking for now, "
    "but you may want to adjust you mask!",
    "          You can force the mask by the '--force_mask' option.",
)
NOT_SHARPENED_WARNING = (
    " WARNING: map will not be sharpened. This map may be used as reference for subsequent "
    "refinements, but you would need to run a postprocessing job with B-factor sharpening to "
    "better visualise high-resolution features.")
POSITIVE_B_WARNING = (" WARNING: using a positive B-factor. This will effectively dampen your map. "
                      "Use negative value to sharpen it!")


def g(value):
    """A number as C++ ``std::cout`` prints a double (6 significant digits)."""
    return f"{value:g}"


def line(label, value):
    """RELION's ``  + label:  value`` progress line (label padded to 35 characters)."""
    return f"{label:<{LABEL_WIDTH}}{value}"


@dataclass
class PostprocessOptions:
    """Parameters of :func:`postprocess` (RELION's option names in the comments).

    Attributes
    ----------
    angpix : float
        Pixel size of the maps (Å) (``--angpix``).
    mtf : tuple of (ndarray, ndarray) or None
        MTF as (resolution in 1/Å, value) (``--mtf`` / ``--mtf_angpix``).
    auto_bfac, autob_lowres, autob_highres : bool, float, float
        Fit the B-factor on the Guinier plot between these resolutions (Å).
    adhoc_bfac : float
        User B-factor (Å²), used when not ``auto_bfac``.
    fsc_weighting : bool
        Apply ``sqrt(2 FSC/(1+FSC))`` (not ``--skip_fsc_weighting``).
    low_pass : float
        Final low-pass (Å); 0 = none, negative = at the FSC 0.143 resolution.
    randomize_at_fsc, randomize_at_A : float
        Where to start phase randomisation (FSC value, or resolution in Å if > 0).
    filter_edge_width : int
        Low-pass edge width in shells.
    molweight : float
        Ordered molecular weight (kDa) for the part FSC; <= 0: not used.
    force_mask : bool
        Keep the masked curve even when the unmasked one reaches further.
    interpolate : bool
        Also report a fractional (interpolated) resolution.
    """

    angpix: float
    mtf: tuple = None
    auto_bfac: bool = False
    autob_lowres: float = 10.0
    autob_highres: float = 0.0
    adhoc_bfac: float = 0.0
    fsc_weighting: bool = True
    low_pass: float = 0.0
    randomize_at_fsc: float = 0.8
    randomize_at_A: float = -1.0
    filter_edge_width: int = 2
    molweight: float = -1.0
    force_mask: bool = False
    interpolate: bool = False


@dataclass
class GoldStandardFsc:
    """FSC curves (NumPy, one value per shell ``0 .. n//2``) and the resolution.

    ``fsc_masked``, ``fsc_random``, ``fsc_part_mask`` are None without a mask;
    ``fsc_part_molweight`` is None without a molecular weight.  ``randomize_at`` is the
    first randomised shell (-1 without a mask).  ``resolution`` in Å; ``resolution_shell``
    the shell it was read at.
    """

    box: int
    angpix: float
    fsc_unmasked: np.ndarray
    fsc_true: np.ndarray
    fsc_masked: np.ndarray = None
    fsc_random: np.ndarray = None
    fsc_part_mask: np.ndarray = None
    fsc_part_molweight: np.ndarray = None
    randomize_at: int = -1
    resolution: float = 999.0
    resolution_shell: int = 0
    fractional_resolution: float = 999.0
    frac_solvent_mask: float = 0.0
    molweight_from_mask: float = 0.0
    frac_molweight: float = 0.0
    warnings: list = field(default_factory=list)

    @property
    def masked(self):
        return self.fsc_masked is not None

    @property
    def randomise_from(self):
        """Resolution (Å) from which phases were randomised."""
        return self.box * self.angpix / self.randomize_at if self.randomize_at > 0 else 0.0

    @property
    def resolution_inv(self):
        """``rlnResolution`` of every shell (1/Å; shell 0 is 1/999)."""
        return np.array([1.0 / fsck.shell_resolution(self.box, self.angpix, i)
                         for i in range(self.fsc_true.size)])

    @property
    def resolution_angstrom(self):
        return np.array([fsck.shell_resolution(self.box, self.angpix, i) for i in range(self.fsc_true.size)])


@dataclass
class Sharpening:
    """Result of :func:`sharpen`: the map, Guinier curves, B-factor and fit.

    ``guinier`` maps RELION label -> curve over shells (``rlnResolutionSquared`` in 1/Å²,
    log-amplitudes with -99 where a shell is empty).
    """

    volume: object
    guinier: dict
    bfactor: float = 0.0
    slope: float = 0.0
    intercept: float = 0.0
    correlation: float = 0.0
    applied_low_pass: float = 0.0
    warnings: list = field(default_factory=list)


@dataclass
class PostprocessResult:
    """Everything :func:`postprocess` produced."""

    fsc: GoldStandardFsc
    sharpening: Sharpening

    @property
    def warnings(self):
        return self.fsc.warnings + self.sharpening.warnings


# ------------------------------------------------------------------ FSC part


def mask_statistics(mask, box, angpix):
    """Solvent-mask fraction ``f = 0.476 / fraction(mask > 0.5)`` and the mask's mass (Da).

    Returns
    -------
    (float, float)
        ``frac_solvent_mask`` and ``molweight_from_mask = fraction · (box·angpix)³ · 0.81``.
    """
    xp = get_array_module(mask)
    frac = float(to_host(xp.count_nonzero(mask > 0.5))) / float(mask.size)
    f = 0.476 / frac if frac > 0 else float("inf")
    return f, frac * (box * angpix) ** 3 * 0.81


def gold_standard_fsc(half1, half2, mask, opts, rng):
    """Unmasked, masked, phase-randomised and corrected FSC, and the resolution.

    Parameters
    ----------
    half1, half2 : arrays ``(n, n, n)``
        Unfiltered half maps.
    mask : array ``(n, n, n)`` in [0, 1] or None
    opts : PostprocessOptions
    rng : object with ``uniform(low, high, size)``
        Source of the random phases: :class:`sta.kernels.fsc.RelionRandom` reproduces
        RELION's numbers; a NumPy ``Generator`` also works.

    Returns
    -------
    GoldStandardFsc

    Raises
    ------
    ValueError
        The unmasked FSC never drops below ``randomize_at_fsc`` (RELION's error).
    """
    xp = get_array_module(half1, half2)
    box = half1.shape[-1]
    angpix = opts.angpix
    h1 = xp.asarray(half1, dtype=np.float64)
    h2 = xp.asarray(half2, dtype=np.float64)
    idx = shell_index(h1.shape, xp)
    fsc_unmasked = fsck.fsc(h1, h2, idx)
    out = GoldStandardFsc(box=box, angpix=angpix, fsc_unmasked=fsc_unmasked, fsc_true=fsc_unmasked)
    if opts.molweight > 0:
        out.frac_molweight = 0.476 * (box * angpix) ** 3 * 0.81 / (opts.molweight * 1000.0)
        log.info(line("  + ordered molecular weight (kDa): ", g(opts.molweight)))
        log.info(line("  + fraction f (molweight based): ", g(out.frac_molweight)))
        out.fsc_part_molweight = fsck.part_fsc(fsc_unmasked, out.frac_molweight)

    if mask is not None:
        m = xp.asarray(mask, dtype=np.float64)
        out.frac_solvent_mask, out.molweight_from_mask = mask_statistics(m, box, angpix)
        log.info(line("  + fraction f (solvent mask based): ", g(out.frac_solvent_mask)))
        log.info(line("  + molecular weight inside protein mask: ", g(out.molweight_from_mask)))
        log.info("== Masking input maps ...")
        fsc_masked = fsck.fsc(h1 * m, h2 * m, idx)
        shell = fsck.randomisation_shell(fsc_unmasked, box, angpix, opts.randomize_at_fsc, opts.randomize_at_A)
        if shell <= 0:
            raise ValueError(f"the unmasked FSC never drops below --randomize_at_fsc {opts.randomize_at_fsc:g}"
                             if opts.randomize_at_A <= 0 else
                             f"--randomize_at_A {opts.randomize_at_A:g} is beyond the box "
                             f"({box} x {angpix:g} Å)")
        log.info(line("  + randomize phases beyond: ", f"{g(box * angpix / shell)} Angstroms"))
        r1 = fsck.randomize_phases_beyond(h1, shell, rng)
        r2 = fsck.randomize_phases_beyond(h2, shell, rng)
        fsc_random = fsck.fsc(r1 * m, r2 * m, idx)
        out.fsc_masked = fsck.fix_origin(fsc_masked)
        out.fsc_unmasked = fsck.fix_origin(fsc_unmasked)
        out.fsc_random = fsck.fix_origin(fsc_random)
        out.randomize_at = shell
        out.fsc_true = fsck.corrected_fsc(out.fsc_masked, out.fsc_random, shell)
        out.fsc_part_mask = fsck.part_fsc(out.fsc_unmasked, out.frac_solvent_mask)
        if opts.molweight > 0:
            out.fsc_part_molweight = fsck.part_fsc(out.fsc_unmasked, out.frac_molweight)

    _resolution(out, opts)
    return out


def _resolution(out, opts):
    box, angpix = out.box, out.angpix
    shell = fsck.resolution_shell(out.fsc_true, 0.143)
    if out.fsc_true[0] < 0.143:  # RELION leaves 999 when shell 0 is already below
        shell = 0
    out.resolution_shell = shell
    out.resolution = fsck.shell_resolution(box, angpix, shell)
    if opts.interpolate and shell < out.fsc_true.size - 1:
        frac = fsck.fractional_resolution_shell(out.fsc_true, shell, 0.143)
        out.fractional_resolution = box * angpix / frac if frac > 0 else 999.0
    else:
        out.fractional_resolution = out.resolution
    if not out.masked:
        return
    unmasked_shell = fsck.resolution_shell(out.fsc_unmasked, 0.143)
    if unmasked_shell > shell:
        if opts.force_mask:
            out.warnings.append(UNMASKED_BETTER_WARNING)
        else:
            out.warnings.extend(UNMASKED_BETTER_SKIP)
            out.fsc_true = out.fsc_unmasked.copy()
            out.resolution = fsck.shell_resolution(box, angpix, unmasked_shell)
    elif out.fsc_random[shell] > 0.1:
        out.warnings.extend(PHASE_RANDOM_WARNING)


# ------------------------------------------------------------------ sharpening part


def guinier_curve(spec, box, angpix, idx, fit_lowres=np.inf, fit_highres=0.0):
    """Guinier plot of a half-grid spectrum.

    Returns
    -------
    x : ndarray
        ``1/res²`` (1/Å²) for shells ``0 .. n//2`` (0 for shell 0).
    y : ndarray
        ``ln(mean |F|)`` per shell, -99 where the shell is empty or zero.
    w : ndarray
        Fit weights: 1 where ``fit_highres <= res <= fit_lowres`` and ``y`` is defined.
    """
    nshell = box // 2 + 1
    mean, _ = filters.radial_mean_amplitude(spec, idx, nshell)
    i = np.arange(nshell)
    with np.errstate(divide="ignore"):
        res = np.where(i > 0, box * angpix / np.maximum(i, 1), np.inf)
    x = np.where(i > 0, 1.0 / (res * res), 0.0)
    defined = mean > 0
    y = np.where(defined, np.log(np.where(defined, mean, 1.0)), -99.0)
    w = (defined & (res <= fit_lowres) & (res >= fit_highres)).astype(np.float64)
    return x, y, w


def fit_straight_line(x, y, w):
    """Weighted least-squares line; returns ``(slope, intercept, corr_coeff)``.

    ``corr_coeff = ss_xy² / (ss_xx · ss_yy)`` as RELION's ``fitStraightLine``; all zero
    when there are fewer than two distinct points.
    """
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    sw = w.sum()
    if sw <= 0:
        return 0.0, 0.0, 0.0
    ax = (w * x).sum() / sw
    ay = (w * y).sum() / sw
    sxx = (w * x * x).sum() - sw * ax * ax
    syy = (w * y * y).sum() - sw * ay * ay
    sxy = (w * x * y).sum() - sw * ax * ay
    if not sxx > 0:
        return 0.0, 0.0, 0.0
    slope = sxy / sxx
    corr = sxy * sxy / (sxx * syy) if syy > 0 else 0.0
    return float(slope), float(ay - slope * ax), float(corr)


def sharpen(volume, fsc_true, opts, resolution=999.0, verbose=True):
    """MTF correction, FSC weighting, B-factor sharpening and low-pass of one map.

    Parameters
    ----------
    volume : array ``(n, n, n)``
        Map to sharpen (the average of the unmasked halves).
    fsc_true : ndarray (n//2 + 1,)
        Corrected FSC used for the weighting.
    opts : PostprocessOptions
    resolution : float
        FSC-0.143 resolution (Å), used when ``opts.low_pass < 0``.
    verbose : bool
        Log RELION's progress lines.

    Returns
    -------
    Sharpening
    """
    info = log.info if verbose else log.debug
    xp = get_array_module(volume)
    fft = get_fft(xp)
    box = volume.shape[-1]
    angpix = opts.angpix
    v = xp.asarray(volume, dtype=np.float64)
    # RELION's forward transform is normalised by 1/N (Guinier intercepts depend on it)
    spec = fft.rfftn(v) / float(v.size)
    idx = shell_index(v.shape, xp)
    out = Sharpening(volume=None, guinier={})
    x, y_in, _ = guinier_curve(spec, box, angpix, idx)
    out.guinier["rlnResolutionSquared"] = x
    out.guinier["rlnLogAmplitudesOriginal"] = y_in
    if opts.mtf is not None:
        info("== Dividing map by the MTF of the detector ...")
        filters.mtf_divide_spectrum(spec, box, angpix, opts.mtf[0], opts.mtf[1])
        out.guinier["rlnLogAmplitudesMTFCorrected"] = guinier_curve(spec, box, angpix, idx)[1]
    if opts.fsc_weighting:
        info("== Applying sqrt(2*FSC/(FSC+1)) weighting (as in Rosenthal & Henderson, 2003) ...")
        filters.shell_weights_spectrum(spec, filters.fsc_weights(fsc_true), idx)
    _, y_w, w_w = guinier_curve(spec, box, angpix, idx, opts.autob_lowres, opts.autob_highres)
    if opts.fsc_weighting:
        out.guinier["rlnLogAmplitudesWeighted"] = y_w

    if opts.auto_bfac:
        info("== Fitting straight line through Guinier plot to find B-factor ...")
        info(line("  + fit from resolution: ", g(opts.autob_lowres)))
        info(line("  + fit until resolution: ", g(opts.autob_highres)))
        out.slope, out.intercept, out.correlation = fit_straight_line(x, y_w, w_w)
        out.bfactor = 4.0 * out.slope
        info(line("  + slope of fit: ", g(out.slope)))
        info(line("  + intercept of fit: ", g(out.intercept)))
        info(line("  + correlation of fit: ", g(out.correlation)))
    elif abs(opts.adhoc_bfac) > 0:
        info("== Using a user-provided (ad-hoc) B-factor ...")
        if opts.adhoc_bfac > 0:
            out.warnings.append(POSITIVE_B_WARNING)
        out.bfactor = float(opts.adhoc_bfac)
    if abs(out.bfactor) > 0:
        info(line("  + apply b-factor of: ", g(out.bfactor)))
        filters.bfactor_spectrum(spec, box, out.bfactor, angpix)
    else:
        out.warnings.append(NOT_SHARPENED_WARNING)
    if opts.auto_bfac or abs(opts.adhoc_bfac) > 0:
        out.guinier["rlnLogAmplitudesSharpened"] = guinier_curve(spec, box, angpix, idx)[1]
    if opts.auto_bfac:
        out.guinier["rlnLogAmplitudesIntercept"] = np.full(x.size, out.intercept)

    out.applied_low_pass = opts.low_pass
    if opts.low_pass != 0:
        out.applied_low_pass = resolution if opts.low_pass < 0 else opts.low_pass
        info("== Low-pass filtering final map ... ")
        info(line("  + filter frequency: ", g(out.applied_low_pass)))
        filters.lowpass_spectrum(spec, box, out.applied_low_pass, angpix, opts.filter_edge_width)
    out.volume = fft.irfftn(spec * float(v.size), s=v.shape, axes=tuple(range(v.ndim)))
    return out


def postprocess(half1, half2, mask, opts, rng):
    """Run the whole of ``relion_postprocess`` (without ``--locres``) on arrays.

    Parameters
    ----------
    half1, half2 : arrays ``(n, n, n)``
    mask : array ``(n, n, n)`` in [0, 1] or None
    opts : PostprocessOptions
    rng : object with ``uniform(low, high, size)`` (see :func:`gold_standard_fsc`)

    Returns
    -------
    PostprocessResult
        ``result.sharpening.volume`` is the sharpened average (float64, same module as
        the input).
    """
    curves = gold_standard_fsc(half1, half2, mask, opts, rng)
    xp = get_array_module(half1, half2)
    average = 0.5 * (xp.asarray(half1, dtype=np.float64) + xp.asarray(half2, dtype=np.float64))
    sharp = sharpen(average, curves.fsc_true, opts, curves.resolution)
    return PostprocessResult(fsc=curves, sharpening=sharp)


def sharpen_like(volume, fsc_true, opts, sharpening):
    """Sharpen another map (a half map) exactly as a previous :func:`sharpen` call did.

    Uses the same B-factor and low-pass (RELION ``--half_maps``).
    """
    same = replace(opts, auto_bfac=False, adhoc_bfac=sharpening.bfactor, low_pass=sharpening.applied_low_pass)
    return sharpen(volume, fsc_true, same, sharpening.applied_low_pass, verbose=False)
