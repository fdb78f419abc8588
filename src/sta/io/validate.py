"""Checks at the data-model edge: garbage in is one clear error, never a map out.

Called by :meth:`sta.io.tomograms.TomogramSet.read` and :meth:`sta.io.particles.ParticleSet.read`
(so by every tool that reads a project) and by the map readers of the half-map tools.  Each
check names the file, table, row, column and value, and what was expected.

What is refused, and why:

* non-finite numbers (NaN, inf) in any numeric column of the geometry, CTF or dose: every
  later step would turn them into a silently wrong map;
* pixel sizes, voltages and tomogram sizes that are not > 0;
* particle optics that disagree with the tomogram they belong to (voltage, Cs, amplitude
  contrast, tilt-series pixel size beyond 1e-3), as RELION's
  ``Tomogram::validateParticleOptics`` does;
* particle positions more than half a tomogram outside their tomogram (a 1e9 Å coordinate
  is a broken file, not a particle near the edge);
* half maps of different sizes or pixel sizes.
"""

import numpy as np

from sta.errors import InputError

#: per-tilt columns that must be finite when present
TILT_FINITE = ("rlnMicrographPreExposure", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
               "rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
               "rlnTomoYShiftAngst", "rlnCtfScalefactor", "rlnCtfBfactor", "rlnPhaseShift",
               "rlnTomoNominalStageTiltAngle")
#: global (per-tomogram) columns that must be > 0 / finite when present
GLOBAL_POSITIVE = ("rlnTomoTiltSeriesPixelSize", "rlnVoltage", "rlnTomoSizeX", "rlnTomoSizeY",
                   "rlnTomoSizeZ", "rlnMicrographOriginalPixelSize")
GLOBAL_FINITE = ("rlnSphericalAberration", "rlnAmplitudeContrast", "rlnTomoHand",
                 "rlnTomoDefocusSlope", "rlnCtfBfactorPerElectronDose")
#: particle columns that must be finite when present
PARTICLE_FINITE = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                   "rlnCenteredCoordinateZAngst", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
                   "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                   "rlnOriginZAngst", "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt",
                   "rlnTomoSubtomogramPsi")
#: optics columns that must be > 0 when present
OPTICS_POSITIVE = ("rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize", "rlnImageSize", "rlnVoltage")
#: (optics label, tilt-series attribute) compared as RELION's validateParticleOptics does
OPTICS_MATCH = (("rlnVoltage", "voltage", "kV"), ("rlnSphericalAberration", "cs", "mm"),
                ("rlnAmplitudeContrast", "q0", ""), ("rlnTomoTiltSeriesPixelSize", "pixel_size", "Å"))
OPTICS_TOLERANCE = 1e-3


def _numbers(values, where, label):
    """``values`` as float64; the first entry that is not a number is an error."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for row, v in enumerate(values, 1):
            try:
                float(v)
            except (TypeError, ValueError):
                raise InputError(f"{where} row {row} column {label}: {_shown(v)} is not a number") from None
        raise


def _shown(value):
    """A value as a person wrote it: ``0``, ``nan``, ``'abc'`` (not ``np.float64(0.0)``)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value)


def check_finite(df, labels, where):
    """Every present column of ``labels`` holds finite numbers (first bad row named)."""
    for label in labels:
        if label not in df.columns:
            continue
        values = _numbers(df[label].tolist(), where, label)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = int(bad[0])
            raise InputError(f"{where} row {row + 1} column {label}: {_shown(df[label].iloc[row])} "
                             "(expected a finite number)")


def check_positive(df, labels, where):
    """Every present column of ``labels`` holds finite numbers > 0."""
    check_finite(df, labels, where)
    for label in labels:
        if label not in df.columns:
            continue
        values = df[label].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~(values > 0))
        if bad.size:
            row = int(bad[0])
            raise InputError(f"{where} row {row + 1} column {label}: {_shown(df[label].iloc[row])} "
                             "(expected a number > 0)")


def check_tomogram_set(tomograms):
    """Global rows and per-tilt tables of a :class:`~sta.io.tomograms.TomogramSet`."""
    gdf = tomograms.global_df
    where = f"{tomograms.path or '<memory>'}: table global"
    check_positive(gdf, GLOBAL_POSITIVE, where)
    check_finite(gdf, GLOBAL_FINITE, where)
    for ts in tomograms:
        check_finite(ts.df, TILT_FINITE, f"{ts.source}: table {ts.name}")


def check_particle_set(particles, tomograms=None):
    """Optics, numbers and positions of a :class:`~sta.io.particles.ParticleSet`.

    With ``tomograms`` the optics of every group in use are compared with each of its
    tomograms (as RELION does) and positions are checked against the tomogram extents.
    """
    where = particles.path or "<memory>"
    check_finite(particles.df, PARTICLE_FINITE, f"{where}: table particles")
    if particles.optics is not None:
        check_positive(particles.optics, OPTICS_POSITIVE, f"{where}: table optics")
    if tomograms is None or "rlnTomoName" not in particles.df.columns:
        return
    names = particles.df["rlnTomoName"].astype(str).tolist()
    if particles.optics is not None:
        _check_optics_match(particles, tomograms, names, where)
    if particles.has_centred_coordinates or particles.has_legacy_coordinates:
        _check_positions(particles, tomograms, where)


def _check_optics_match(particles, tomograms, names, where):
    seen = set()
    for i, tomo in enumerate(names):
        group = particles.optics_group(i) if "rlnOpticsGroup" in particles.df.columns else 1
        if (group, tomo) in seen or tomo not in tomograms:
            continue
        seen.add((group, tomo))
        row = particles.optics_row(i)
        ts = tomograms[tomo]
        for label, attr, unit in OPTICS_MATCH:
            if label not in row:
                continue
            ours, theirs = float(row[label]), float(getattr(ts, attr))
            if abs(ours - theirs) > OPTICS_TOLERANCE:
                raise InputError(
                    f"{where}: table optics group {group} column {label}: {ours:g}{' ' + unit if unit else ''} "
                    f"but tomogram {tomo} has {theirs:g}{' ' + unit if unit else ''} in "
                    f"{ts.global_source} (they must agree to {OPTICS_TOLERANCE:g}, as in RELION)")


def _check_positions(particles, tomograms, where):
    if any(t not in tomograms for t in particles.df["rlnTomoName"].astype(str)):
        return  # named by the callers that need the tomogram (one clear line there)
    centred = particles.centered_coordinates_angst()
    for tomo, rows in particles.indices_by_tomogram().items():
        ts = tomograms[tomo]
        limit = np.asarray(ts.size, dtype=np.float64) * ts.pixel_size  # half a tomogram + half beyond its edge
        outside = np.flatnonzero(np.any(np.abs(centred[rows]) > limit, axis=1))
        if outside.size:
            i = int(np.asarray(rows)[outside[0]])
            x, y, z = centred[i]
            raise InputError(
                f"{where}: table particles row {i + 1} ({particles.particle_name(i)}): position "
                f"({x:.6g}, {y:.6g}, {z:.6g}) Å from the centre of tomogram {tomo} lies more than half "
                f"a tomogram outside it (size {ts.size[0]}x{ts.size[1]}x{ts.size[2]} px at {ts.pixel_size:g} Å)")


def check_half_maps(path1, shape1, px1, path2, shape2, px2):
    """Two half maps of one reconstruction: the same box, and the same header pixel size (to
    0.1%) where both headers carry one (> 0; a header without one is left to ``--angpix``)."""
    if tuple(shape1) != tuple(shape2):
        raise InputError(f"{path1} and {path2}: the half maps differ in size "
                         f"({'x'.join(map(str, tuple(shape1)[::-1]))} vs {'x'.join(map(str, tuple(shape2)[::-1]))}); "
                         "expected the same box")
    if px1 > 0 and px2 > 0 and abs(px1 - px2) > 1e-3 * max(px1, px2):
        raise InputError(f"{path2}: header pixel size {px2:g} Å but {path1} has {px1:g} Å "
                         "(half maps of one reconstruction have the same pixel size)")
