"""A tilt series in memory (images + geometry) and the per-particle geometry on it.

Shared by subtomogram extraction, particle reconstruction and refinement.  Everything is
in RELION's conventions (spec §2, §3): tomogram-frame positions in tilt-series pixels,
projection matrices from :func:`sta.geometry.tilt.projection_matrices` (or legacy
``rlnTomoProjX/Y/Z/W`` rows), depth-dependent CTF, Grant–Grigorieff dose weights.
"""

import logging

import numpy as np

from sta.errors import InputError
from sta.geometry.euler import euler_to_matrix
from sta.geometry.tilt import particle_positions, project, projection_matrices
from sta.io.mrc import read_header, read_mrc, read_stack_images
from sta.kernels.ctf import ctf_2d, dose_weights_2d

log = logging.getLogger(__name__)


class TiltData:
    """Geometry (and optionally images) of one tilt series.

    Attributes
    ----------
    ts : sta.io.tomograms.TiltSeries
    proj : (f, 4, 4) projection matrices (tomogram frame -> image frame, tilt-series px)
    image_size : (W, H)
    images : (f, H, W) float32 or None
    doses : (f,) cumulative pre-exposure (e/Å²)
    """

    def __init__(self, ts, load_images=True):
        self.ts = ts
        self.name = ts.name
        self.pixel_size = float(ts.pixel_size)
        self.size = tuple(int(v) for v in ts.size)
        entries = ts.micrograph_entries()
        if load_images:
            self.images = _load_images(ts, entries)
            self.image_size = (self.images.shape[2], self.images.shape[1])
        else:
            self.images = None
            shape, _, _ = read_header(entries[0][0])
            self.image_size = (shape[2], shape[1])
        legacy = ts.legacy_projection_rows()
        if legacy is not None:
            self.proj = legacy
        else:
            self.proj = projection_matrices(ts.column("rlnTomoXTilt", 0.0), ts.column("rlnTomoYTilt"),
                                            ts.column("rlnTomoZRot"), ts.column("rlnTomoXShiftAngst"),
                                            ts.column("rlnTomoYShiftAngst"), self.pixel_size, self.size,
                                            self.image_size)
        self.doses = ts.column("rlnMicrographPreExposure").astype(float)
        self.n_tilts = ts.n_tilts
        self.defocus_u = ts.column("rlnDefocusU").astype(float)
        self.defocus_v = ts.column("rlnDefocusV").astype(float)
        self.defocus_angle = ts.column("rlnDefocusAngle", 0.0).astype(float)
        self.ctf_scale = ts.column("rlnCtfScalefactor", 1.0).astype(float)
        self.ctf_bfactor = ts.column("rlnCtfBfactor", 0.0).astype(float)
        self.phase_shift = ts.column("rlnPhaseShift", 0.0).astype(float)
        self.centre = np.asarray(self.size, dtype=float) / 2.0

    def dose_weights(self, box, binning):
        """(f, box, box//2+1) dose weights at pixel size ``binning·px``."""
        return dose_weights_2d(box, self.pixel_size * binning, self.doses, self.ts.bfactor_per_dose)

    def ctf(self, box, binning, position):
        """(f, box, box//2+1) depth-corrected CTF of a particle at ``position`` (tomogram px).

        Includes ``rlnCtfScalefactor`` and the per-tilt ``rlnCtfBfactor`` envelope (as
        RELION's subtomo and reconstruct_particle do, spec §3.4).
        """
        dz = (self.proj[:, 2, :3] @ (np.asarray(position, dtype=float) - self.centre))
        delta = self.ts.hand * self.pixel_size * self.ts.defocus_slope * dz
        return ctf_2d(box, self.pixel_size * binning, self.defocus_u + delta, self.defocus_v + delta,
                      self.defocus_angle, self.ts.voltage, self.ts.cs, self.ts.q0,
                      phase_shift=self.phase_shift, bfactor=self.ctf_bfactor, scale=self.ctf_scale)

    def project(self, positions):
        """(n, f, 3) image positions and depths of tomogram-frame points (n, 3) or (n, f, 3)."""
        return project(self.proj, positions)


def _load_images(ts, entries):
    paths = [p for p, _ in entries]
    sections = [s for _, s in entries]
    if all(s is not None for s in sections) and len(set(paths)) == 1:
        images = read_stack_images(paths[0], [s - 1 for s in sections])
    else:
        stack = []
        for path, section in entries:
            if section is not None:
                stack.append(read_stack_images(path, [section - 1])[0])
            else:
                data, _ = read_mrc(path)
                if data.ndim == 3:
                    if data.shape[0] != 1:
                        raise InputError(f"{path}: expected a single tilt image, found a stack of {data.shape[0]}")
                    data = data[0]
                stack.append(data)
        shapes = {a.shape for a in stack}
        if len(shapes) != 1:
            raise InputError(f"tilt series {ts.name}: tilt images have different sizes {sorted(shapes)}")
        images = np.stack(stack)
    if images.shape[0] != ts.n_tilts:
        raise InputError(f"tilt series {ts.name}: {ts.n_tilts} rows but {images.shape[0]} images")
    return images.astype(np.float32, copy=False)


class ParticleGeometry:
    """Positions and orientations of a set of particles (spec §2.3-§2.6).

    Attributes
    ----------
    positions : (n, 3) tomogram-frame positions (offsets applied if requested)
    a_sub : (n, 3, 3) subtomogram matrices
    a_part : (n, 3, 3) particle matrices (rlnAngleRot/Tilt/Psi)
    """

    def __init__(self, particles, indices, tilt, apply_offsets=True):
        df = particles.df
        idx = np.asarray(indices)
        self.indices = idx
        n = len(idx)
        px = particles.pixel_sizes()[idx]
        centred = particles.centered_coordinates_angst()[idx]
        if {"rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"} <= set(df.columns):
            sub = df.iloc[idx][["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]]
            self.a_sub = euler_to_matrix(*sub.to_numpy(dtype=float).T).reshape(n, 3, 3)
        else:
            self.a_sub = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        ang = particles.angles()[idx]
        self.a_part = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]).reshape(n, 3, 3)
        origins = particles.origins_angst()[idx] if apply_offsets else None
        self.positions = particle_positions(centred, px, tilt.size, origins, self.a_sub)
        self.pixel_sizes = px

    @property
    def matrices(self):
        """``M = A_sub · A_part`` (reference frame -> tomogram frame), (n, 3, 3)."""
        return self.a_sub @ self.a_part

    def trajectories(self, particles, trajectories, tilt):
        """(n, f, 3) per-tilt positions (motion shifts added when a trajectory set is given)."""
        f = tilt.n_tilts
        out = np.repeat(self.positions[:, None, :], f, axis=1)
        if trajectories is not None:
            for k, i in enumerate(self.indices):
                shifts = trajectories.shifts(particles.particle_name(int(i)), tilt.ts)
                out[k] += shifts / self.pixel_sizes[k]
        return out
