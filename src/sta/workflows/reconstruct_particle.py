"""Particle reconstruction straight from the tilt series (``relion_tomo_reconstruct_particle``).

Per particle (spec §5.2): extract the particle in every visible tilt (circle pre-crop,
centred FFT, Fourier cropping by ``--bin``, sub-pixel centring), multiply by
``-CTF·dose`` (weights ``(CTF·dose)²``) up to the dose cut-off radius, and insert every
slice into 3D half-grid sums of its half set with RELION's gather back-projection.  The
sums are then symmetrised, gridding-corrected and CTF-corrected (heuristic or Wiener).

The heavy state is :class:`HalfSums` (two complex data and two real weight half grids in
double precision); it is what MPI ranks reduce.
"""

import dataclasses
import logging

import numpy as np

from sta.errors import InputError
from sta.kernels.backproject import HalfGrid, backproject_slices_gather, symmetrise_half
from sta.kernels.extract import extract_fourier
from sta.kernels.reconstruct import (ctf_correct_heuristic, ctf_correct_wiener, gridding_correct_sinc2,
                                     half_to_full_centred, taper)
from sta.geometry.tilt import visible as visible_mask
from sta.workflows.tilt_data import ParticleGeometry

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ReconstructParams:
    """Options of spec §5.1 that change the result."""

    box: int
    crop: int = -1
    binning: float = 1.0
    symmetry: str = "C1"
    snr: float = -1.0            # <= 0: heuristic CTF correction
    taper: float = 10.0
    do_ctf: bool = True
    circle_crop: bool = True
    cutoff_fract: float = 0.01

    @property
    def box0(self):
        """Extraction box in unbinned tilt-series pixels: int(bin·box + 0.5)."""
        return int(self.binning * self.box + 0.5)


class HalfSums:
    """Back-projected data and weights of both half sets on an (s, s, s//2+1) grid."""

    def __init__(self, box):
        self.box = box
        n = box * box * (box // 2 + 1)
        self.data = np.zeros((2, n), dtype=np.complex128)
        self.weight = np.zeros((2, n), dtype=np.float64)

    @property
    def shape(self):
        return (self.box, self.box, self.box // 2 + 1)

    def add(self, other):
        self.data += other.data
        self.weight += other.weight

    @staticmethod
    def nbytes(box):
        """Memory of one accumulator pair (both halves), bytes."""
        return 2 * box * box * (box // 2 + 1) * (16 + 8)


def half_index(particles, indices):
    """0/1 half of each particle from ``rlnRandomSubset`` (all 0 when the column is absent)."""
    if "rlnRandomSubset" not in particles.df.columns:
        return np.zeros(len(indices), dtype=int)
    sub = particles.df["rlnRandomSubset"].to_numpy()[np.asarray(indices)].astype(int)
    bad = (sub < 1) | (sub > 2)
    if bad.any():
        raise InputError(f"{particles.path}: rlnRandomSubset must be 1 or 2, found {int(sub[bad][0])}")
    return sub - 1


def backproject_particles(tilt, particles, indices, params, sums, trajectories=None, grid=None):
    """Insert the particles ``indices`` (all on ``tilt``) into ``sums``; returns the count."""
    s, s0, b = params.box, params.box0, params.binning
    grid = grid or HalfGrid(s)
    geo = ParticleGeometry(particles, indices, tilt, apply_offsets=True)
    traj = geo.trajectories(particles, trajectories, tilt)
    halves = half_index(particles, indices)
    dose = tilt.dose_weights(s, b)
    xr = dose_x_ranges(dose, params.cutoff_fract)
    mats = geo.matrices
    for k in range(len(indices)):
        q = tilt.project(traj[k])[0]  # (f, 3)
        vis = visible_mask(q[:, :2], tilt.image_size, s / 2.0)
        if not vis.any():
            continue
        spec = extract_fourier(tilt.images, q[:, :2], vis, s0, b, params.circle_crop)
        if params.do_ctf:
            c = tilt.ctf(s, b, geo.positions[k]) * dose
            keep = np.arange(s // 2 + 1)[None, None, :] < xr[:, :, None]
            spec = np.where(keep, -c * spec, 0)
            weight = np.where(keep, c * c, 0.0)
        else:
            spec = -spec
            weight = np.ones(spec.shape)
        h = halves[k]
        fs = np.flatnonzero(vis)
        backproject_slices_gather(grid, spec[fs], weight[fs], tilt.proj[fs, :3, :3] @ mats[k], xr[fs, 0],
                                  sums.data[h], sums.weight[h])
    return len(indices)


def dose_x_ranges(dose, cutoff):
    """RELION ``findDoseXRanges``: per tilt and row y, 1 + the last x (within the circle of
    radius s/2) whose dose weight exceeds ``cutoff`` (0 if none); shape (f, s)."""
    f, s, sh = dose.shape
    y = np.arange(s)
    yy = np.where(y < s // 2, y, y - s).astype(float)
    xmax = np.sqrt(np.maximum((s * s) // 4 - yy * yy, -1.0))
    x = np.arange(sh)[None, :]
    inside = (x <= xmax[:, None]) & ((s * s) // 4 - yy * yy >= 0)[:, None]
    above = (dose > cutoff) & inside[None]
    last = np.where(above, x[None], -1).max(axis=2)
    return last + 1


@dataclasses.dataclass
class Reconstruction:
    """Outputs of :func:`finalise` (real-space volumes, (z, y, x))."""

    maps: dict          # tag -> corrected, tapered (and cropped) map
    full: dict          # tag -> corrected map before cropping (only with crop)
    data: dict          # tag -> gridding-corrected data before CTF division
    weights: dict       # tag -> weights as a centred full volume


def finalise(sums, params, has_halves):
    """Symmetrise, reconstruct and taper both halves and the merged map (spec §5.2 steps 5-7)."""
    s = params.box
    shape = sums.shape
    data = [sums.data[h].reshape(shape) for h in range(2)]
    weight = [sums.weight[h].reshape(shape) for h in range(2)]
    if params.symmetry.upper() != "C1":
        from sta.geometry.symmetry import parse_symmetry

        ops = parse_symmetry(params.symmetry).matrices[1:]
        for h in range(2 if has_halves else 1):
            data[h] = symmetrise_half(data[h], ops, True)
            weight[h] = symmetrise_half(weight[h], ops, False)
    out = Reconstruction({}, {}, {}, {})
    jobs = []
    if has_halves:
        jobs += [("half1", data[0], weight[0], weight[0]), ("half2", data[1], weight[1], weight[1])]
        jobs.append(("merged", data[0] + data[1], weight[0] + weight[1], weight[0]))
    else:
        jobs.append(("merged", data[0], weight[0], weight[0]))
    for tag, d, w, w_out in jobs:
        rs = gridding_correct_sinc2(d, s)
        if params.snr > 0:
            corr = ctf_correct_wiener(rs, w, 1.0 / params.snr)
        else:
            corr = ctf_correct_heuristic(rs, w, 0.001)
        out.data[tag] = rs
        out.weights[tag] = half_to_full_centred(w_out)  # [QUIRK §13.5] merged holds half-1 weights
        if 0 < params.crop < s:
            out.full[tag] = corr
            m = (s - params.crop) // 2
            cropped = corr[m:m + params.crop, m:m + params.crop, m:m + params.crop]
            out.maps[tag] = taper(cropped, params.taper)
        else:
            out.maps[tag] = taper(corr, params.taper)
    return out
