"""Write the STAR files of a simulated project (RELION 5 layout, paths relative to it)."""

import os

import numpy as np
import pandas as pd

from sta.geometry.euler import matrix_to_euler
from sta.geometry.tilt import centred_from_positions
from sta.io.star import list_table, loop_table, write_star


def tilt_image_names(name, angles):
    """Per-tilt image paths (relative to the project): ``tilt_images/<TS>/<TS>_<row>_<angle>.mrc``."""
    return [f"tilt_images/{name}/{name}_{i + 1:03d}_{a:.1f}.mrc" for i, a in enumerate(angles)]


def _tilt_table(params, tomo, names):
    return pd.DataFrame({
        "rlnMicrographName": names,
        "rlnTomoNominalStageTiltAngle": tomo["angles"].astype(float),
        "rlnTomoNominalTiltAxisAngle": np.full(len(names), float(params.tilt_axis)),
        "rlnMicrographPreExposure": tomo["pre_exposure"],
        "rlnTomoNominalDefocus": np.full(len(names), -tomo["base_defocus"] / 1e4),
        "rlnDefocusU": tomo["defocus_u"],
        "rlnDefocusV": tomo["defocus_v"],
        "rlnCtfAstigmatism": tomo["defocus_u"] - tomo["defocus_v"],
        "rlnDefocusAngle": tomo["defocus_angle"],
        "rlnCtfScalefactor": tomo["scale"],
        "rlnTomoXTilt": tomo["xtilt"],
        "rlnTomoYTilt": tomo["ytilt"],
        "rlnTomoZRot": tomo["zrot"],
        "rlnTomoXShiftAngst": tomo["xshift"],
        "rlnTomoYShiftAngst": tomo["yshift"],
    })


def _global_table(params, tomos):
    p = params
    n = len(tomos)
    df = pd.DataFrame({
        "rlnTomoName": [t["name"] for t in tomos],
        "rlnVoltage": np.full(n, p.voltage),
        "rlnSphericalAberration": np.full(n, p.cs),
        "rlnAmplitudeContrast": np.full(n, p.q0),
        "rlnMicrographOriginalPixelSize": np.full(n, p.pixel_size),
        "rlnTomoHand": np.full(n, float(p.hand)),
        "rlnOpticsGroupName": ["optics1"] * n,
        "rlnTomoTiltSeriesPixelSize": np.full(n, p.pixel_size),
        "rlnTomoTiltSeriesStarFile": [f"tilt_series/{t['name']}.star" for t in tomos],
        "rlnTomoSizeX": np.full(n, int(p.tomo_size[0])),
        "rlnTomoSizeY": np.full(n, int(p.tomo_size[1])),
        "rlnTomoSizeZ": np.full(n, int(p.tomo_size[2])),
    })
    if p.defocus_slope != 1.0:
        df["rlnTomoDefocusSlope"] = p.defocus_slope
    if p.bfactor_per_dose > 0:
        df["rlnCtfBfactorPerElectronDose"] = p.bfactor_per_dose
    return df


def _optics_table(params):
    p = params
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["optics1"], "rlnVoltage": [p.voltage],
                         "rlnSphericalAberration": [p.cs], "rlnAmplitudeContrast": [p.q0],
                         "rlnTomoTiltSeriesPixelSize": [p.pixel_size]})


def _particle_table(params, particles, a_parts, origins):
    p = params
    pos = np.stack([q["pos_px"] for q in particles])
    centred = centred_from_positions(pos, p.pixel_size, p.tomo_size)
    rot, tilt, psi = matrix_to_euler(np.stack(a_parts))
    data = {
        "rlnTomoName": [q["tomo"] for q in particles],
        "rlnTomoParticleName": [q["name"] for q in particles],
        "rlnCenteredCoordinateXAngst": centred[:, 0],
        "rlnCenteredCoordinateYAngst": centred[:, 1],
        "rlnCenteredCoordinateZAngst": centred[:, 2],
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": origins[:, 0], "rlnOriginYAngst": origins[:, 1], "rlnOriginZAngst": origins[:, 2],
        "rlnRandomSubset": [q["half"] for q in particles],
        "rlnOpticsGroup": np.ones(len(particles), dtype=int),
    }
    if p.subtomo_fraction > 0:
        srot, stilt, spsi = matrix_to_euler(np.stack([q["A_sub"] for q in particles]))
        data.update({"rlnTomoSubtomogramRot": srot, "rlnTomoSubtomogramTilt": stilt,
                     "rlnTomoSubtomogramPsi": spsi})
    return pd.DataFrame(data)


def _write_particles(path, params, particles, a_parts, origins):
    write_star(path, [list_table("general", {"rlnTomoSubTomosAre2DStacks": 0}),
                      loop_table("optics", _optics_table(params)),
                      loop_table("particles", _particle_table(params, particles, a_parts, origins))])


def write_project(out_dir, params, tomos, particles, perturbed=None):
    """tomograms.star, tilt_series/*.star, particles.star, optimisation_set.star (+ perturbed)."""
    for t in tomos:
        names = tilt_image_names(t["name"], t["angles"])
        write_star(os.path.join(out_dir, "tilt_series", f"{t['name']}.star"),
                   [loop_table(t["name"], _tilt_table(params, t, names))])
    write_star(os.path.join(out_dir, "tomograms.star"), [loop_table("global", _global_table(params, tomos))])
    zeros = np.zeros((len(particles), 3))
    _write_particles(os.path.join(out_dir, "particles.star"), params, particles,
                     [q["A_part"] for q in particles], zeros)
    _write_optimisation_set(os.path.join(out_dir, "optimisation_set.star"), "particles.star")
    if perturbed is not None:
        _write_particles(os.path.join(out_dir, "particles_perturbed.star"), params, particles,
                         [q["A_part"] for q in perturbed], np.stack([q["origin"] for q in perturbed]))
        _write_optimisation_set(os.path.join(out_dir, "optimisation_set_perturbed.star"),
                                "particles_perturbed.star")


def _write_optimisation_set(path, particles_file):
    write_star(path, [list_table("", {"rlnTomoParticlesFile": particles_file,
                                      "rlnTomoTomogramsFile": "tomograms.star"})])
