"""Local resolution and locally filtered maps: ``relion_postprocess --locres``.

Follows ``Postprocessing::run_locres`` (``src/postprocessing.cpp``, RELION 5):

* The average of the two half maps is divided by the MTF and sharpened with the ad-hoc
  B-factor once (``FT_sum``).
* The phases of both half maps are randomised beyond ``randomize_at_A`` once.
* On a grid of points every ``sampling`` Å (from the box corner, logical coordinate
  ``-n//2``), for every point closer than ``n/2 - maskrad`` voxels to the box centre: a soft
  sphere (radius ``maskrad``, raised-cosine edge ``edgewidth``) masks both half maps and
  both phase-randomised half maps; the corrected FSC of the window gives the local
  resolution (last shell before 0.143, capped at ``minres``).  ``FT_sum`` is FSC-weighted
  with the window's corrected FSC and low-passed at that resolution.
* Every voxel receives the window-weighted average of ``1/resolution`` (the local
  resolution map is its inverse) and of the filtered maps (the locally filtered map).

Volumes are cubic ``(n, n, n)`` arrays; resolutions in Å.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from sta.backend import get_array_module, get_fft
from sta.kernels import filters
from sta.kernels import fsc as fsck
from sta.kernels.grid import shell_index

log = logging.getLogger(__name__)


@dataclass
class LocresOptions:
    """Parameters of :func:`local_resolution` (Å unless stated; RELION option in brackets).

    Attributes
    ----------
    angpix : float
    sampling : float
        Grid spacing of the windows [--locres_sampling, 25].
    maskrad : float
        Window radius; < 0: ``sampling / 2`` [--locres_maskrad].
    edgewidth : float
        Raised-cosine edge of the window; < 0: ``sampling`` [--locres_edgwidth].
    randomize_at : float
        Phase randomisation from this resolution [--locres_randomize_at, 25].
    minres : float
        Lowest local resolution reported [--locres_minres, 50].
    bfactor : float
        Ad-hoc B-factor (Å²) of the filtered map [--adhoc_bfac].
    mtf : tuple (res 1/Å, value) or None
    filter_edge_width : int
        Low-pass edge in shells [--filter_edge_width, 2].
    """

    angpix: float
    sampling: float = 25.0
    maskrad: float = -1.0
    edgewidth: float = -1.0
    randomize_at: float = 25.0
    minres: float = 50.0
    bfactor: float = 0.0
    mtf: tuple = None
    filter_edge_width: int = 2


@dataclass
class LocresResult:
    """Local-resolution map (Å, 0 outside every window), locally filtered map, and one
    record per window (``centre`` (z, y, x) logical voxels, ``resolution``, FSC curves)."""

    locres: object
    filtered: object
    windows: list = field(default_factory=list)
    randomize_shell: int = 0


def window_centres(box, step, maskrad_pix):
    """Logical ``(z, y, x)`` centres of the sampling windows, in RELION's loop order.

    Points start at ``-box//2`` every ``step`` voxels and are kept when their distance to
    the box centre is below ``box//2 - maskrad_pix``.
    """
    start = -(box // 2)
    coords = np.arange(start, start + box, step)
    myrad = box // 2 - maskrad_pix
    out = []
    for z in coords:
        for y in coords:
            for x in coords:
                if math.sqrt(z * z + y * y + x * x) < myrad:
                    out.append((int(z), int(y), int(x)))
    return out


def local_resolution(half1, half2, opts, rng, progress=None, abort_check=None):
    """Estimate the local resolution and make a locally filtered map.

    Parameters
    ----------
    half1, half2 : arrays ``(n, n, n)``
    opts : LocresOptions
    rng : object with ``uniform(low, high, size)``
        Source of the random phases (:class:`sta.kernels.fsc.RelionRandom` for RELION's).
    progress : callable or None
        ``progress(done, total)`` after each window.
    abort_check : callable or None
        Called before each window (raises to abort).

    Returns
    -------
    LocresResult
        ``locres`` and ``filtered`` are float64 arrays on the input's array module.
    """
    xp = get_array_module(half1, half2)
    fft = get_fft(xp)
    box = half1.shape[-1]
    angpix = opts.angpix
    maskrad = opts.maskrad if opts.maskrad >= 0 else 0.5 * opts.sampling
    edgewidth = opts.edgewidth if opts.edgewidth >= 0 else opts.sampling
    step = max(int(math.floor(opts.sampling / angpix + 0.5)), 1)
    maskrad_pix = int(math.floor(maskrad / angpix + 0.5))
    edge_pix = int(math.floor(edgewidth / angpix + 0.5))

    h1 = xp.asarray(half1, dtype=np.float64)
    h2 = xp.asarray(half2, dtype=np.float64)
    idx = shell_index(h1.shape, xp)
    nshell = fsck.n_shells(h1.shape)
    ft_sum = fft.rfftn(0.5 * (h1 + h2))
    if opts.mtf is not None:
        filters.mtf_divide_spectrum(ft_sum, box, angpix, opts.mtf[0], opts.mtf[1])
    filters.bfactor_spectrum(ft_sum, box, opts.bfactor, angpix)

    fsc_unmasked = fsck.fix_origin(fsck.fsc(h1, h2, idx))
    shell = int(box * angpix / opts.randomize_at)
    log.info("%-35s%s Angstroms", "  + randomize phases beyond: ", f"{box * angpix / max(shell, 1):g}")
    p1 = fsck.randomize_phases_beyond(h1, shell, rng)
    p2 = fsck.randomize_phases_beyond(h2, shell, rng)

    centres = window_centres(box, step, maskrad_pix)
    log.info(" Calculating local resolution in %d sampling points ...", len(centres))
    ifil = xp.zeros(h1.shape)
    iloc = xp.zeros(h1.shape)
    isumw = xp.zeros(h1.shape)
    windows = []
    for n, centre in enumerate(centres):
        if abort_check is not None:
            abort_check()
        m = filters.raised_cosine_sphere(h1.shape, maskrad_pix, maskrad_pix + edge_pix, centre, xp)
        fsc_masked = fsck.fix_origin(fsck.fsc(h1 * m, h2 * m, idx))
        fsc_random = fsck.fix_origin(fsck.fsc(p1 * m, p2 * m, idx))
        fsc_true = fsck.corrected_fsc(fsc_masked, fsc_random, shell)
        ires = fsck.resolution_shell(fsc_true, 0.143)
        local = fsck.shell_resolution(box, angpix, ires) if fsc_true[0] >= 0.143 else 999.0
        local = min(opts.minres, local)
        spec = ft_sum.copy()
        filters.shell_weights_spectrum(spec, filters.fsc_weights(fsc_true), idx)
        filters.lowpass_spectrum(spec, box, local, angpix, opts.filter_edge_width)
        filtered = fft.irfftn(spec, s=h1.shape, axes=(0, 1, 2))
        ifil += m * filtered
        iloc += m / local
        isumw += m
        windows.append({"centre": centre, "resolution": local, "fsc_true": fsc_true,
                        "fsc_masked": fsc_masked, "fsc_random": fsc_random,
                        "fsc_unmasked": fsc_unmasked[:nshell]})
        if progress is not None:
            progress(n + 1, len(centres))
    covered = isumw > 0
    safe = xp.where(covered, isumw, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        locres = xp.where(covered, 1.0 / (iloc / safe), 0.0)
    filtered = xp.where(covered, ifil / safe, 0.0)
    return LocresResult(locres=locres, filtered=filtered, windows=windows, randomize_shell=shell)
