"""Output files of ``relion_postprocess``: ``postprocess.star``, ``_fsc.xml``, ``_fsc.dat``,
the FSC and Guinier plots (PNG and ``logfile.pdf``), the local-resolution FSC file and
histogram, and the detector MTF reader.

Layout of ``<o>.star`` (``Postprocessing::writeOutput``): two comment lines, then the list
table ``general``, the loop table ``fsc`` (one row per shell ``0 .. n//2``; shell 0 has
resolution 999 Å) and the loop table ``guinier``.  Plots use matplotlib's Agg backend,
imported only when a plot is written (RELION writes EPS files merged by ghostscript; we
write PNG files and a multi-page PDF).
"""

import logging
import os

import numpy as np
import pandas as pd

from sta.errors import InputError
from sta.io.atomic import atomic_path
from sta.io.star import list_table, loop_table, read_star, write_star

log = logging.getLogger(__name__)

#: size of every plot in pixels (width, height)
PLOT_SIZE_PX = (800, 600)
_DPI = 100


# ------------------------------------------------------------------ inputs


def other_half(path):
    """RELION's ``FileName::getTheOtherHalf``: swap ``half1``/``half2`` in the file name.

    Only the part after the last ``/`` is changed.  Returns None when the name contains
    neither.
    """
    head, sep, base = str(path).rpartition("/")
    if "half1" in base:
        base = base.replace("half1", "half2")
    elif "half2" in base:
        base = base.replace("half2", "half1")
    else:
        return None
    return head + sep + base


def half_map_names(i1, i2="", ios=""):
    """Names of the two half maps from ``--i``, ``--i2`` and ``--ios`` (RELION's rules).

    Raises
    ------
    InputError
        No input, no half-map entries in the optimisation set, or no ``half1``/``half2`` in
        the name of ``--i`` when ``--i2`` is absent.
    """
    if not i1 and ios:
        from sta.io.optimisation_set import OptimisationSet

        oset = OptimisationSet.read(ios)
        if not oset.ref1 or not oset.ref2:
            raise InputError(f"{ios}: no half-map file names (rlnTomoReferenceMap1File and "
                             "rlnTomoReferenceMap2File) in the optimisation set")
        return oset.ref1, oset.ref2
    if not i1:
        raise InputError("input file is missing: provide, at least, --i or --ios")
    if not i2:
        i2 = other_half(i1)
        if i2 is None:
            raise InputError(f"--i {i1}: the file name contains neither 'half1' nor 'half2'; give --i2")
    return i1, i2


def read_half_maps(path1, path2):
    """Read and check both half maps.

    Returns
    -------
    (ndarray, ndarray, float)
        float32 ``(n, n, n)`` maps and the header pixel size (Å) of the first.

    Raises
    ------
    InputError
        Missing or unreadable file, NaN/inf values, maps of different sizes or header pixel
        sizes, not cubic.
    """
    from sta.io.mrc import read_mrc

    from sta.io.validate import check_half_maps

    h1, px = read_mrc(path1)
    h2, px2 = read_mrc(path2)
    check_half_maps(path1, h1.shape, px, path2, h2.shape, px2)
    if h1.ndim != 3 or len(set(h1.shape)) != 1:
        raise InputError(f"{path1}: expected a cubic 3D map, got {_xyz(h1.shape)}")
    return h1, h2, px


def read_mask(path, shape):
    """Read a solvent mask and check it: values in [0, 1] (1e-6 tolerance) and box ``shape``.

    Returns
    -------
    ndarray float32
    """
    from sta.io.mrc import read_mrc

    mask, _ = read_mrc(path)
    lo, hi = float(mask.min()), float(mask.max())
    if lo < -1e-6 or hi - 1.0 > 1e-6:
        raise InputError(f"{path}: mask values must lie in [0, 1] (1 = protein, 0 = solvent); "
                         f"found min {lo:g}, max {hi:g}")
    if mask.shape != tuple(shape):
        raise InputError(f"{path}: mask size {_xyz(mask.shape)} differs from the half maps "
                         f"{_xyz(shape)}; expected the same box")
    return mask


def _xyz(shape):
    return " x ".join(str(s) for s in shape[::-1])


# ------------------------------------------------------------------ STAR tables


def general_table(fsc, sharpening, names, molweight=-1.0, auto_bfac=False):
    """The ``general`` list table.

    Parameters
    ----------
    fsc : sta.workflows.postprocess.GoldStandardFsc
    sharpening : sta.workflows.postprocess.Sharpening
    names : dict
        ``half1``, ``half2``, ``map``, ``masked_map``, ``mask``: paths as written in the file.
    molweight : float
        ``--molweight`` (kDa); written when > 0.
    auto_bfac : bool
        Write the Guinier-fit labels.
    """
    d = {
        "rlnFinalResolution": float(fsc.resolution),
        "rlnBfactorUsedForSharpening": float(sharpening.bfactor),
        "rlnUnfilteredMapHalf1": names["half1"],
        "rlnUnfilteredMapHalf2": names["half2"],
        "rlnPostprocessedMap": names["map"],
    }
    if molweight > 0:
        d["rlnMolecularWeight"] = float(molweight)
        d["rlnParticleBoxFractionMolecularWeight"] = float(fsc.frac_molweight)
    if fsc.masked:
        d["rlnParticleBoxFractionSolventMask"] = float(fsc.frac_solvent_mask)
        d["rlnMaskName"] = names["mask"]
        d["rlnRandomiseFrom"] = float(fsc.randomise_from)
        d["rlnPostprocessedMapMasked"] = names["masked_map"]
    if auto_bfac:
        d["rlnFittedSlopeGuinierPlot"] = float(sharpening.slope)
        d["rlnFittedInterceptGuinierPlot"] = float(sharpening.intercept)
        d["rlnCorrelationFitGuinierPlot"] = float(sharpening.correlation)
    return list_table("general", d)


def fsc_table(fsc, molweight=-1.0):
    """The ``fsc`` loop table (RELION's column set for masked / unmasked runs)."""
    n = fsc.fsc_true.size
    cols = {
        "rlnSpectralIndex": np.arange(n, dtype=np.int64),
        "rlnResolution": fsc.resolution_inv,
        "rlnAngstromResolution": fsc.resolution_angstrom,
    }
    if fsc.masked:
        cols["rlnFourierShellCorrelationCorrected"] = fsc.fsc_true
        cols["rlnFourierShellCorrelationParticleMaskFraction"] = fsc.fsc_part_mask
        if molweight > 0:
            cols["rlnFourierShellCorrelationParticleMolWeight"] = fsc.fsc_part_molweight
        cols["rlnFourierShellCorrelationUnmaskedMaps"] = fsc.fsc_unmasked
        cols["rlnFourierShellCorrelationMaskedMaps"] = fsc.fsc_masked
        cols["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"] = fsc.fsc_random
    else:
        cols["rlnFourierShellCorrelationUnmaskedMaps"] = fsc.fsc_true
        if molweight > 0:
            cols["rlnFourierShellCorrelationParticleMolWeight"] = fsc.fsc_part_molweight
    return loop_table("fsc", pd.DataFrame(cols))


def guinier_table(sharpening):
    """The ``guinier`` loop table (columns in RELION's order, -99 where undefined)."""
    order = ["rlnResolutionSquared", "rlnLogAmplitudesOriginal", "rlnLogAmplitudesMTFCorrected",
             "rlnLogAmplitudesWeighted", "rlnLogAmplitudesSharpened", "rlnLogAmplitudesIntercept"]
    cols = {k: np.asarray(sharpening.guinier[k], dtype=np.float64) for k in order if k in sharpening.guinier}
    return loop_table("guinier", pd.DataFrame(cols))


def relion_rounded(value):
    """``value`` rounded to the digits RELION prints (``%12.6f``/``%12.5f``/``%12.6e``/``%12.5e``).

    Writing pre-rounded values makes :func:`sta.io.star.write_star` produce RELION's text.
    """
    v = float(value)
    if not np.isfinite(v):
        return v
    a = abs(v)
    sci = (0 < a < 0.001) or a > 100000
    fmt = ("%.6e" if v >= 0 else "%.5e") if sci else ("%.6f" if v >= 0 else "%.5f")
    return float(fmt % v)


def _rounded_table(table):
    df = table.df.copy()
    for col in df.columns:
        if df[col].dtype.kind == "f":
            df[col] = [relion_rounded(v) for v in df[col]]
    table.df = df
    return table


def write_postprocess_star(path, fsc, sharpening, names, command_line, version_line,
                           molweight=-1.0, auto_bfac=False):
    """Write ``<o>.star`` with RELION's two comment lines and three tables.

    Floating-point values are rounded to RELION's printed precision first, so that the
    file has RELION's layout digit for digit.
    """
    tables = [_rounded_table(t) for t in (general_table(fsc, sharpening, names, molweight, auto_bfac),
                                          fsc_table(fsc, molweight), guinier_table(sharpening))]
    write_star(path, tables, comments=[f"# RELION postprocess; version {version_line}", f"# {command_line} "])


def write_fsc_xml(path, resolution_inv, fsc_values):
    """EMDB FSC file: ``<fsc title="RELION masked-corrected FSC" ...>`` with x (1/Å), y rows."""
    lines = ['<fsc title="RELION masked-corrected FSC" xaxis="Resolution (A-1)" '
             'yaxis="Correlation Coefficient">']
    for x, y in zip(resolution_inv, fsc_values):
        lines += ["  <coordinate>", f"    <x>{x:g}</x>", f"    <y>{y:g}</y>", "  </coordinate>"]
    lines.append("</fsc>")
    _write_text(path, "\n".join(lines) + "\n")


def write_fsc_dat(path, resolution_inv, fsc_values):
    """``res fsc`` lines (1/Å, corrected FSC) for xmgrace and friends."""
    _write_text(path, "".join(f"{x:g} {y:g}\n" for x, y in zip(resolution_inv, fsc_values)))


def _write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def write_optimisation_set(path, input_path, fsc_star, half1=None, half2=None):
    """``<o>_optimisation_set.star``: the input set plus ``rlnTomoReferenceFscFile``.

    ``half1``/``half2`` (when given on the command line) replace the reference maps.
    """
    from sta.io.optimisation_set import OptimisationSet

    oset = OptimisationSet.read(input_path)
    if half1 is not None:
        oset.ref1, oset.ref2 = half1, half2
    oset.fsc = fsc_star
    oset.write(path, only_tomo_files=False)


def read_mtf(path, mtf_angpix):
    """Read a detector MTF STAR file.

    Returns
    -------
    (ndarray, ndarray)
        Resolution of each row in 1/Å (``rlnResolutionInversePixel / mtf_angpix``) and the
        MTF values.

    Raises
    ------
    InputError
        Not a STAR file, labels missing, or a value <= 1e-10.
    """
    if not str(path).endswith(".star"):
        raise InputError(f"{path}: the --mtf file must be a STAR file (.star)")
    star = read_star(path)
    table = next((t for t in star.values() if {"rlnResolutionInversePixel", "rlnMtfValue"} <= set(t.df.columns)),
                 None)
    if table is None:
        raise InputError(f"{path}: no table with rlnResolutionInversePixel and rlnMtfValue")
    res = table.df["rlnResolutionInversePixel"].to_numpy(dtype=np.float64) / mtf_angpix
    val = table.df["rlnMtfValue"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(val < 1e-10)
    if bad.size:
        raise InputError(f"{path}: MTF value {val[bad[0]]:g} in row {bad[0] + 1}; expected values > 0")
    if res.size < 2 or (res[-1] - res[0]) / res.size < 1e-10:
        raise InputError(f"{path}: the MTF resolutions do not increase")
    return res, val


# ------------------------------------------------------------------ local resolution


def write_locres_fscs(path, windows, box, angpix):
    """``<o>_locres_fscs.star``: one ``fsc_<z>_<y>_<x>`` table per sampling window.

    ``windows`` is a list of dicts with ``centre`` (z, y, x logical voxels), ``fsc_true``,
    ``fsc_masked``, ``fsc_random``, ``resolution`` and the shared ``fsc_unmasked``.  RELION
    writes a bare ``kk= ... local resolution= ...`` line after each table, which is not
    STAR; it is written here as a comment line.
    """
    from sta.io.star import format_star

    parts = []
    for w in windows:
        n = len(w["fsc_true"])
        res = np.array([box * angpix / i if i > 0 else 999.0 for i in range(n)])
        df = pd.DataFrame({
            "rlnSpectralIndex": np.arange(n, dtype=np.int64),
            "rlnResolution": 1.0 / res,
            "rlnAngstromResolution": res,
            "rlnFourierShellCorrelationCorrected": w["fsc_true"],
            "rlnFourierShellCorrelationUnmaskedMaps": w["fsc_unmasked"],
            "rlnFourierShellCorrelationMaskedMaps": w["fsc_masked"],
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": w["fsc_random"],
        })
        z, y, x = (int(c) for c in w["centre"])
        parts.append(format_star([_rounded_table(loop_table(f"fsc_{z:05d}_{y:05d}_{x:05d}", df))]))
        parts.append(f"# kk= {z} ii= {y} jj= {x} local resolution= {w['resolution']:g}\n")
    _write_text(path, "".join(parts))


# ------------------------------------------------------------------ plots


def _figure():
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(PLOT_SIZE_PX[0] / _DPI, PLOT_SIZE_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def fsc_figure(fsc):
    """Matplotlib figure of the FSC curves against resolution (1/Å), RELION's colours."""
    fig = _figure()
    ax = fig.add_subplot(111)
    x = fsc.resolution_inv
    x = np.where(np.arange(x.size) == 0, 0.0, x)
    if fsc.masked:
        ax.plot(x, fsc.fsc_true, color="black", lw=2, label="corrected")
        ax.plot(x, fsc.fsc_unmasked, color="green", lw=1, label="unmasked maps")
        ax.plot(x, fsc.fsc_masked, color="blue", lw=1, label="masked maps")
        ax.plot(x, fsc.fsc_random, color="red", lw=1, label="phase-randomised masked maps")
    else:
        ax.plot(x, fsc.fsc_true, color="green", lw=2, label="unmasked maps")
    ax.axhline(0.143, color="grey", ls="--", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("resolution (1/A)")
    ax.set_ylabel("Fourier Shell Correlation")
    ax.set_title(f"Final resolution = {fsc.resolution:5.2f} Angstroms")
    ax.set_ylim(min(-0.1, float(np.nanmin(fsc.fsc_true)) - 0.05), 1.05)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def guinier_figure(sharpening):
    """Matplotlib figure of the Guinier plots (ln amplitude against 1/res²)."""
    fig = _figure()
    ax = fig.add_subplot(111)
    gdict = sharpening.guinier
    x = np.asarray(gdict["rlnResolutionSquared"])
    styles = [("rlnLogAmplitudesOriginal", "black", "original"),
              ("rlnLogAmplitudesMTFCorrected", "green", "MTF-corrected"),
              ("rlnLogAmplitudesWeighted", "blue", "FSC-weighted"),
              ("rlnLogAmplitudesSharpened", "red", "sharpened")]
    for key, colour, label in styles:
        if key in gdict:
            y = np.asarray(gdict[key])
            ok = (y > -99.0) & (x > 0)
            ax.plot(x[ok], y[ok], color=colour, lw=1.5, label=label)
    if "rlnLogAmplitudesIntercept" in gdict and sharpening.slope != 0:
        ax.plot(x[x > 0], sharpening.intercept + sharpening.slope * x[x > 0], color="orange", ls="--",
                lw=1, label=f"fit, B = {sharpening.bfactor:.1f}")
    ax.set_xlabel("resolution^2 (1/A^2)")
    ax.set_ylabel("ln(amplitudes)")
    ax.set_title("Guinier plots")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def histogram_figure(values, label="local resolution (A)"):
    """Histogram of local resolutions inside the mask."""
    fig = _figure()
    ax = fig.add_subplot(111)
    ax.hist(np.asarray(values, dtype=np.float64), bins=30, color="steelblue", edgecolor="black")
    ax.set_xlabel(label)
    ax.set_ylabel("voxels")
    ax.set_title("Histogram of local resolutions inside the mask")
    fig.tight_layout()
    return fig


def save_png(fig, path):
    """Write a figure as PNG (atomic)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)


def save_pdf(figures, path):
    """Write figures as the pages of one PDF (atomic), like RELION's ``logfile.pdf``."""
    from matplotlib.backends.backend_pdf import PdfPages

    with atomic_path(path) as tmp:
        with PdfPages(tmp) as pdf:
            for fig in figures:
                pdf.savefig(fig)


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning(" WARNING: matplotlib is not installed; plots are not written (pip install matplotlib)")
        return False
    return True


def write_histogram(root, values):
    """``<root>_histogram.png`` and ``<dir of root>/histogram.pdf`` of local resolutions.

    Returns
    -------
    list of str
        The files written (none when matplotlib is not installed).
    """
    if not _have_matplotlib():
        return []
    fig = histogram_figure(values)
    png = f"{root}_histogram.png"
    save_png(fig, png)
    pdf = os.path.join(os.path.dirname(root) or ".", "histogram.pdf")
    save_pdf([fig], pdf)
    return [png, pdf]


def write_plots(root, fsc, sharpening):
    """``<root>_fsc.png``, ``<root>_guinier.png`` and ``<dir of root>/logfile.pdf``.

    Returns
    -------
    list of str
        The files written (none when matplotlib is not installed).
    """
    if not _have_matplotlib():
        return []
    figs = [fsc_figure(fsc), guinier_figure(sharpening)]
    out = [f"{root}_fsc.png", f"{root}_guinier.png"]
    for fig, path in zip(figs, out):
        save_png(fig, path)
    pdf = os.path.join(os.path.dirname(root) or ".", "logfile.pdf")
    save_pdf(figs, pdf)
    return out + [pdf]
