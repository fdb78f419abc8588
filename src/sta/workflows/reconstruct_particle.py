"""Particle reconstruction straight from the tilt series (``relion_tomo_reconstruct_particle``).

Per particle (spec §5.2): extract the particle in every visible tilt (circle pre-crop,
centred FFT, Fourier cropping by ``--bin``, sub-pixel centring), multiply by
``-CTF·dose`` (weights ``(CTF·dose)²``) up to the dose cut-off radius, and insert every
slice into 3D half-grid sums of its half set with RELION's gather back-projection.  The
sums are then symmetrised, gridding-corrected and CTF-corrected (heuristic or Wiener).

The heavy state is :class:`HalfSums` (two complex data and two real weight half grids in
double precision); it is what MPI ranks reduce.  Memory: a particle is processed
:data:`TILT_GROUP` tilts at a time and its slices are added to the sums in bounded batches
(:func:`max_entries`); :func:`finalise_outputs` hands out one output volume at a time and
works in place on the sums, so its memory beyond them is a few s³ volumes
(see :mod:`sta.parallel.memory`).
"""

import dataclasses
import logging

import numpy as np

from sta.errors import InputError
from sta.kernels.backproject import HalfGrid, SliceAccumulator, symmetrise_half
from sta.kernels.extract import extract_fourier
from sta.kernels.grid import fft_freqs
from sta.kernels.reconstruct import (ctf_divide_heuristic, ctf_divide_wiener, gridding_correct_sinc2,
                                     half_to_full_centred, taper, to_fourier)
from sta.geometry.tilt import visible as visible_mask
from sta.workflows.tilt_data import ParticleGeometry

log = logging.getLogger(__name__)

#: tilts extracted, CTF-weighted and gathered together (bounds the per-particle memory)
TILT_GROUP = 4


def max_entries(box):
    """Gathered voxel entries held before they are added to the sums: s²·(s//2+1)/5, so that
    the entries (40 bytes each) cost about as much as one real half grid.  A function of the
    box only, so the sums do not depend on --j_out, --mem or the number of ranks."""
    return max(box * box * (box // 2 + 1) // 5, 4096)


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
    """Insert the particles ``indices`` (all on ``tilt``) into ``sums``; returns the count.

    Tilts are processed :data:`TILT_GROUP` at a time; the gathered slices are added in
    batches of at most :func:`max_entries` voxel entries.
    """
    s, s0, b = params.box, params.box0, params.binning
    grid = grid or HalfGrid(s)
    geo = ParticleGeometry(particles, indices, tilt, apply_offsets=True)
    traj = geo.trajectories(particles, trajectories, tilt)
    halves = half_index(particles, indices)
    dose = tilt.dose_weights(s, b)
    xr = dose_x_ranges(dose, params.cutoff_fract)
    mats = geo.matrices
    n_tilts = tilt.n_tilts
    for k in range(len(indices)):
        q = tilt.project(traj[k])[0]  # (f, 3)
        vis = visible_mask(q[:, :2], tilt.image_size, s / 2.0)
        if not vis.any():
            continue
        ctf = tilt.ctf(s, b, geo.positions[k]) * dose if params.do_ctf else None
        h = halves[k]
        acc = SliceAccumulator(grid, sums.data[h], sums.weight[h], max_entries(s))
        for start in range(0, n_tilts, TILT_GROUP):
            group = slice(start, min(start + TILT_GROUP, n_tilts))
            fs = np.flatnonzero(vis[group])
            if not len(fs):
                continue
            spec = extract_fourier(tilt.images[group], q[group, :2], vis[group], s0, b, params.circle_crop)
            if params.do_ctf:
                c = ctf[group]
                keep = np.arange(s // 2 + 1)[None, None, :] < xr[group][:, :, None]
                spec = np.where(keep, -c * spec, 0)
                weight = np.where(keep, c * c, 0.0)
            else:
                spec = -spec
                weight = np.ones(spec.shape)
            rows = start + fs
            acc.add(spec[fs], weight[fs], tilt.proj[rows, :3, :3] @ mats[k], xr[rows, 0])
            del spec, weight
        acc.flush()
    return len(indices)


def dose_x_ranges(dose, cutoff):
    """RELION ``findDoseXRanges``: per tilt and row y, 1 + the last x (within the circle of
    radius s/2) whose dose weight exceeds ``cutoff`` (0 if none); shape (f, s)."""
    f, s, sh = dose.shape
    yy = fft_freqs(s).astype(float)
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


def finalise_outputs(sums, params, has_halves):
    """Symmetrise, reconstruct and taper both halves and the merged map (spec §5.2 steps 5-7),
    one output volume at a time.

    Yields ``(kind, tag, volume)`` with kind ``"data"`` (gridding-corrected data before the
    CTF division), ``"weight"`` (weights as a centred full volume), ``"full"`` (the
    corrected map before cropping, only with ``params.crop``) and ``"map"``; tags
    ``half1``, ``half2``, ``merged`` (only ``merged`` without halves).  Real-space volumes
    are (z, y, x) float64.  Drop each volume before asking for the next one to keep the
    memory at :func:`sta.parallel.memory.finalise_bytes`.

    ``sums`` is used as work space: afterwards it holds the symmetrised sums, with the
    merged data in half 1 and the merged weights in half 2.
    """
    s = params.box
    shape = sums.shape
    n_halves = 2 if has_halves else 1
    if params.symmetry.upper() != "C1":
        from sta.geometry.symmetry import parse_symmetry

        ops = parse_symmetry(params.symmetry).matrices[1:]
        for h in range(n_halves):
            sums.data[h] = symmetrise_half(sums.data[h].reshape(shape), ops, True).ravel()
            sums.weight[h] = symmetrise_half(sums.weight[h].reshape(shape), ops, False).ravel()
    data = [sums.data[h].reshape(shape) for h in range(2)]
    weight = [sums.weight[h].reshape(shape) for h in range(2)]
    if has_halves:
        jobs = [("half1", 0), ("half2", 1), ("merged", None)]
    else:
        jobs = [("merged", 0)]
    for tag, h in jobs:
        if h is None:  # merged = half 1 + half 2, summed in place; [QUIRK §13.5] it keeps half-1 weights
            data[0] += data[1]
            weight[1] += weight[0]
            d, w, w_out = data[0], weight[1], weight[0]
        else:
            d, w, w_out = data[h], weight[h], weight[h]
        yield "weight", tag, half_to_full_centred(w_out)
        rs = gridding_correct_sinc2(d, s)
        yield "data", tag, rs
        ft = to_fourier(rs)
        del rs
        corr = ctf_divide_wiener(ft, w, 1.0 / params.snr) if params.snr > 0 else ctf_divide_heuristic(ft, w, 0.001)
        del ft
        if 0 < params.crop < s:
            yield "full", tag, corr
            m = (s - params.crop) // 2
            cropped = corr[m:m + params.crop, m:m + params.crop, m:m + params.crop].copy()
            del corr
            yield "map", tag, taper(cropped, params.taper, out=cropped)
        else:
            yield "map", tag, taper(corr, params.taper, out=corr)
            del corr


def finalise(sums, params, has_halves):
    """All outputs of :func:`finalise_outputs` at once, as a :class:`Reconstruction`
    (holds every volume: prefer :func:`finalise_outputs` for large boxes)."""
    out = Reconstruction({}, {}, {}, {})
    where = {"data": out.data, "weight": out.weights, "full": out.full, "map": out.maps}
    for kind, tag, vol in finalise_outputs(sums, params, has_halves):
        where[kind][tag] = vol
    return out


def tilt_series_shape(ts):
    """``(n_tilts, height, width, single_stack)`` of a tilt series from its MRC headers (no
    image data is read); ``single_stack``: all tilts are sections of one file."""
    from sta.io.mrc import read_header

    entries = ts.micrograph_entries()
    shape, _, _ = read_header(entries[0][0])
    single = len({p for p, _ in entries}) == 1 and all(sec is not None for _, sec in entries)
    return ts.n_tilts, shape[1], shape[2], single
