"""Pseudo-subtomogram extraction (``relion_tomo_subtomo``, spec §4).

Per particle (spec §4.2): visibility with margin ``bin·crop/2`` and ``--max_dose``;
extraction of an ``s0 = int(bin·s + 0.5)`` square per visible tilt (no circle pre-crop),
centred FFT, Fourier crop to ``s`` (÷ bin), sub-pixel centring (all shared with
reconstruct_particle: :func:`sta.kernels.extract.extract_fourier`); multiplication by
``σ·CTF·dose`` (σ = −1 unless ``--no_ic``); then

* 2D stacks (``--stack2d``): ÷ bin again [QUIRK §13.4], inverse FFT, soft circular crop of
  radius ``s/2 − (s−c)/2`` with outer-mean subtraction, central ``c×c`` crop, visible tilts
  in tilt-series row order;
* 3D pseudo-subtomograms: optional circle crop in real space, forward insertion with
  multiplicity into a ``c³`` half grid (:mod:`sta.kernels.insert`), centring, scale
  ``s/(c·sqrt(bin))``, inverse FFT; weights = CTF² and multiplicity half grids stacked
  along z (``(2c, c, c//2+1)``), optional double-cone weighting.

The particle-table changes of spec §4.5 are made by :func:`output_particle_set`.
"""

import dataclasses
import logging

import numpy as np

from sta.backend import get_fft
from sta.errors import InputError
from sta.geometry.euler import matrix_to_euler_simple
from sta.geometry.tilt import centred_from_positions, visible as visible_mask
from sta.io.particles import LEGACY_LABELS, CENTRED_LABELS, ParticleSet
from sta.io.star import format_vector
from sta.io.trajectories import TrajectorySet
from sta.kernels.extract import EDGE_FALLOFF, crop_circle, extract_fourier
from sta.kernels.fourier import centred_rfft
from sta.kernels.grid import checkerboard
from sta.kernels.insert import centre_modulate_3d, cone_weight, insert_slices_forward
from sta.workflows.reconstruct_particle import dose_x_ranges
from sta.workflows.tilt_data import ParticleGeometry

log = logging.getLogger(__name__)

ORIGIN_LABELS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
SUBTOMO_ANGLE_LABELS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
ANGLE_LABELS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


@dataclasses.dataclass
class SubtomoParams:
    """Options of spec §4.1 that change the result (sizes in binned pixels)."""

    box: int
    crop: int = -1
    binning: float = 1.0
    stack2d: bool = False
    do_ctf: bool = True
    invert_contrast: bool = True
    circle_crop: bool = True
    apply_offsets: bool = True
    apply_orientations: bool = False
    max_dose: float = -1.0
    min_frames: int = 1
    cone_weight: bool = False
    cone_angle: float = 10.0        # full opening angle, degrees
    cone_sig0: float = 2.0
    cutoff_fract: float = 0.01
    write_weights: bool = True      # False: --no_comb

    def __post_init__(self):
        if self.apply_orientations:  # RELION: --apply_orientations also applies the offsets
            self.apply_offsets = True

    @property
    def crop_size(self):
        """Output box ``c`` (``--crop``, or ``--b`` when negative)."""
        return self.crop if self.crop > 0 else self.box

    @property
    def box0(self):
        """Extraction box in unbinned tilt-series pixels: ``int(bin·box + 0.5)``."""
        return int(self.binning * self.box + 0.5)

    @property
    def boundary(self):
        """``(s − c) // 2``: pixels removed on each side and the circle-crop inset."""
        return (self.box - self.crop_size) // 2

    @property
    def margin(self):
        """Visibility margin in tilt-series pixels: ``bin·crop/2`` (spec §2.8)."""
        return self.binning * self.crop_size / 2.0

    @property
    def sign(self):
        return -1.0 if self.invert_contrast else 1.0


# ----------------------------------------------------------------- planning (metadata only)

@dataclasses.dataclass
class Plan:
    """Which particles are written, where, with which tilts (output order).

    Attributes
    ----------
    order : list of int
        Particle rows kept, tomogram by tomogram in tomogram-set order, then file order.
    tomo : dict int -> str
        Tomogram of each kept particle.
    visible : dict int -> (f,) bool
        Tilts used for each kept particle.
    roots : dict int -> str
        Output file root ``<o>Subtomograms/...`` (without suffix) of each kept particle.
    removed : int
        Particles dropped because fewer than ``--min_frames`` tilts are visible.
    """

    order: list
    tomo: dict
    visible: dict
    roots: dict
    removed: int

    def by_tomogram(self):
        """``{tomo name: int64 array of kept rows}`` in output order."""
        out = {}
        for i in self.order:
            out.setdefault(self.tomo[i], []).append(i)
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def visible_tilts(tilt, particles, indices, trajectories, params):
    """Tilts in which each particle is used, shape (n, f) bool.

    Projected (motion-shifted) centre strictly inside the image by ``bin·crop/2`` pixels,
    and pre-exposure ≤ ``--max_dose`` when that is positive.
    """
    geo = ParticleGeometry(particles, indices, tilt, apply_offsets=params.apply_offsets)
    q = tilt.project(geo.trajectories(particles, trajectories, tilt))
    vis = visible_mask(q[..., :2], tilt.image_size, params.margin)
    if params.max_dose > 0:
        vis &= (tilt.doses <= params.max_dose)[None, :]
    return vis


def make_plan(particles, tomograms, tilts, trajectories, params, out_dir):
    """Visibility, output names and order of every particle (spec §4.5).

    ``tilts`` maps tomogram names to :class:`~sta.workflows.tilt_data.TiltData` (images
    not needed).  ``out_dir`` ends with ``/`` and is used verbatim in the file names.
    """
    groups = particles.indices_by_tomogram()
    names = [t for t in tomograms.names() if t in groups and len(groups[t])]
    if not names:
        raise InputError(f"{particles.path}: no particle belongs to a tomogram of {tomograms.path}")
    first = particles.particle_name(int(groups[names[0]][0]))
    per_tomo_dirs = "/" not in first
    plan = Plan([], {}, {}, {}, 0)
    for name in names:
        idx = groups[name]
        vis = visible_tilts(tilts[name], particles, idx, trajectories, params)
        for k, i in enumerate(idx.tolist()):
            if vis[k].sum() < params.min_frames:
                plan.removed += 1
                continue
            pname = particles.particle_name(i)
            plan.order.append(i)
            plan.tomo[i] = name
            plan.visible[i] = vis[k]
            plan.roots[i] = out_dir + "Subtomograms/" + (f"{name}/{pname}" if per_tomo_dirs else pname)
    return plan


def output_names(root, params):
    """``(data file, weights file or None)`` for a particle's file root."""
    if params.stack2d:
        return root + "_stack2d.mrcs", None
    return root + "_data.mrc", root + "_weights.mrc"


# ----------------------------------------------------------------- per-particle numerics

def particle_spectra(tilt, centres, visible, position, params, dose):
    """CTF-multiplied spectra of one particle (spec §4.2 steps 2-6).

    Parameters
    ----------
    tilt : TiltData with images
    centres : (f, 2) projected particle centre per tilt (image pixels)
    visible : (f,) bool
    position : (3,) particle position for the CTF (tomogram px, no motion)
    dose : (f, s, s//2+1) dose weights at the binned pixel size

    Returns
    -------
    spec : (v, s, s//2+1) complex and weight : (v, s, s//2+1) float for the v visible
    tilts (weight = ``(CTF·dose)²``, ones with ``--no_ctf``); frames : (v,) indices.
    """
    s, b = params.box, params.binning
    frames = np.flatnonzero(visible)
    spec = extract_fourier(tilt.images, centres, visible, params.box0, b, circle_crop=False)[frames]
    if params.do_ctf:
        c = tilt.ctf(s, b, position)[frames] * dose[frames]
        spec = spec * (params.sign * c)
        weight = c * c
    else:
        spec = spec * params.sign
        weight = np.ones(spec.shape)
    return spec, weight, frames


def _irfft2_decentred(spec, s):
    """RELION ``inverseFourierTransformStack``: decentre by (−1)^(x+y), 1/sqrt(N) scaling.

    Equal to :func:`sta.kernels.fourier.centred_irfft` for even ``s``; kept separate because
    RELION's modulation is not an ``fftshift`` for odd boxes.
    """
    return get_fft().irfftn(spec * checkerboard(spec.shape[-2:]), s=(s, s), axes=(-2, -1)) * float(s)


def stack2d(spec, params):
    """Real-space 2D stack (v, c', c') from CTF-multiplied spectra (spec §4.2 steps 8-11).

    ``c' = s − 2·((s − c)//2)`` (= c for an even ``s − c``).
    """
    s, bnd = params.box, params.boundary
    rs = _irfft2_decentred(spec / params.binning, s)  # [QUIRK] second division by --bin
    if params.circle_crop:
        rs = crop_circle(rs, float(bnd), EDGE_FALLOFF)
    return rs[:, bnd:s - bnd, bnd:s - bnd].astype(np.float32)


def subtomogram3d(spec, weight, frames, tilt, matrix, x_ranges, params, cone_matrix=None):
    """3D pseudo-subtomogram of one particle (spec §4.3).

    Parameters
    ----------
    spec, weight, frames : from :func:`particle_spectra`
    matrix : (3, 3) ``A_sub`` (or ``A_sub·A_part`` with ``--apply_orientations``)
    x_ranges : (f, s) per-tilt dose cut-off columns (:func:`dose_x_ranges`)
    cone_matrix : (3, 3) ``A_sub·A_part`` for ``--cone_weight`` (None: no cone weight)

    Returns
    -------
    data : (c, c, c) float32 real-space volume (origin at voxel c//2)
    weights : (2c, c, c//2+1) float32: CTF² sums (z < c) and multiplicity (z ≥ c), raw
        FFTW half-grid layout
    """
    s, c, b = params.box, params.crop_size, params.binning
    if params.circle_crop:
        rs = _irfft2_decentred(spec, s)
        rs = crop_circle(rs, float(params.boundary), EDGE_FALLOFF)
        spec = centred_rfft(rs.astype(np.float32), ndim=2)
    ch = c // 2 + 1
    data = np.zeros((c, c, ch), np.complex128)
    ctf2 = np.zeros((c, c, ch))
    mult = np.zeros((c, c, ch))
    a = (c / s) * (tilt.proj[frames, :3, :3] @ matrix)  # (v, 3, 3)
    insert_slices_forward(spec, weight, x_ranges[frames], a[:, 0], a[:, 1], data, ctf2, mult)
    data = centre_modulate_3d(data)
    norm = float(np.float32(s) / (np.float32(c) * np.sqrt(np.float32(b))))
    if abs(norm - 1.0) > 1e-4:
        data *= norm
    fft = get_fft()
    vol = fft.irfftn(data, s=(c, c, c)) * np.sqrt(float(c) ** 3)
    if cone_matrix is not None:
        m = cone_weight(c, cone_matrix, np.sin(np.deg2rad(0.5 * params.cone_angle)), params.cone_sig0)
        vol = fft.irfftn(fft.rfftn(vol) * m, s=(c, c, c))
        ctf2 *= m
        mult *= m
    weights = np.concatenate([ctf2, mult], axis=0)
    return vol.astype(np.float32), weights.astype(np.float32)


def extract_particles(tilt, particles, indices, plan, params, trajectories=None, on_result=None):
    """Extract the particles ``indices`` (all on ``tilt``, all in ``plan``).

    ``on_result(index, data, weights)`` receives each particle's 2D stack (v, c, c) or 3D
    volume and weights (None for stacks); returns the number of particles processed.
    """
    s, b = params.box, params.binning
    geo = ParticleGeometry(particles, indices, tilt, apply_offsets=params.apply_offsets)
    traj = geo.trajectories(particles, trajectories, tilt)
    dose = tilt.dose_weights(s, b)
    xr = None if params.stack2d else dose_x_ranges(dose, params.cutoff_fract)
    for k, i in enumerate(np.asarray(indices).tolist()):
        vis = plan.visible[i]
        q = tilt.project(traj[k])[0]
        spec, weight, frames = particle_spectra(tilt, q[:, :2], vis, geo.positions[k], params, dose)
        if params.stack2d:
            on_result(i, stack2d(spec, params), None)
            continue
        full = geo.a_sub[k] @ geo.a_part[k]
        matrix = full if params.apply_orientations else geo.a_sub[k]
        vol, weights = subtomogram3d(spec, weight, frames, tilt, matrix, xr, params,
                                     full if params.cone_weight else None)
        on_result(i, vol, weights)
    return len(indices)


# ----------------------------------------------------------------- output metadata

def output_particle_set(particles, tomograms, plan, params):
    """The particle set written to ``<o>particles.star`` (spec §4.5).

    Rows: the kept particles in plan order.  Columns keep the input order; labels RELION
    adds are appended in RELION's order (``rlnTomoVisibleFrames``, ``rlnImageName``,
    ``rlnCtfImage``, ``rlnOrigin*Angst``, ``rlnCenteredCoordinate*Angst``, subtomogram and
    particle angles).
    """
    rows = np.asarray(plan.order, dtype=np.int64)
    df = particles.df.iloc[rows].reset_index(drop=True).copy()
    if params.stack2d:
        df["rlnTomoVisibleFrames"] = [format_vector(plan.visible[i].astype(np.int64)) for i in plan.order]
    data_names = [output_names(plan.roots[i], params) for i in plan.order]
    df["rlnImageName"] = [d for d, _ in data_names]
    if not params.stack2d:
        df["rlnCtfImage"] = [w for _, w in data_names]
    if params.apply_offsets and len(rows):
        centred = _offset_corrected_centres(particles, tomograms, plan)
        for label in ORIGIN_LABELS:
            df[label] = 0.0
        for j, label in enumerate(CENTRED_LABELS):
            df[label] = centred[:, j]
    if params.apply_orientations and len(rows):
        geo_mats = _full_matrices(particles, tomograms, plan)
        rot, tilt, psi = matrix_to_euler_simple(geo_mats)
        for label, values in zip(SUBTOMO_ANGLE_LABELS, (rot, tilt, psi)):
            df[label] = values
        for label in ANGLE_LABELS:
            df[label] = 0.0
    drop = [c for c in LEGACY_LABELS if c in df.columns and all(x in df.columns for x in CENTRED_LABELS)]
    if params.stack2d and "rlnCtfImage" in df.columns:
        drop.append("rlnCtfImage")
    df = df.drop(columns=drop)
    optics = _output_optics(particles, params)
    general = dict(particles.general)
    general["rlnTomoSubTomosAre2DStacks"] = int(params.stack2d)
    return ParticleSet(df, optics, general, tomograms=tomograms, project_dir=particles.project_dir)


def _offset_corrected_centres(particles, tomograms, plan):
    out = np.empty((len(plan.order), 3))
    pos = {i: k for k, i in enumerate(plan.order)}
    for name, idx in plan.by_tomogram().items():
        ts = tomograms[name]
        geo = ParticleGeometry(particles, idx, _Size(ts.size), apply_offsets=True)
        cen = centred_from_positions(geo.positions, geo.pixel_sizes, ts.size)
        for k, i in enumerate(idx.tolist()):
            out[pos[i]] = cen[k]
    return out


def _full_matrices(particles, tomograms, plan):
    out = np.empty((len(plan.order), 3, 3))
    pos = {i: k for k, i in enumerate(plan.order)}
    for name, idx in plan.by_tomogram().items():
        geo = ParticleGeometry(particles, idx, _Size(tomograms[name].size), apply_offsets=True)
        for k, i in enumerate(idx.tolist()):
            out[pos[i]] = geo.a_sub[k] @ geo.a_part[k]
    return out


class _Size:
    """Minimal stand-in for TiltData where only the tomogram size is needed."""

    def __init__(self, size):
        self.size = tuple(size)


def _output_optics(particles, params):
    optics = particles.optics.copy()
    if "rlnTomoTiltSeriesPixelSize" not in optics.columns:
        raise InputError(f"{particles.path}: table optics has no column rlnTomoTiltSeriesPixelSize")
    optics["rlnCtfDataAreCtfPremultiplied"] = np.int64(int(params.do_ctf) if params.stack2d else 1)
    optics["rlnImageDimensionality"] = np.int64(2 if params.stack2d else 3)
    optics["rlnTomoSubtomogramBinning"] = float(params.binning)
    optics["rlnImagePixelSize"] = params.binning * optics["rlnTomoTiltSeriesPixelSize"].astype(float)
    optics["rlnImageSize"] = np.int64(params.crop_size)
    return optics


def output_trajectories(particles, trajectories, plan):
    """Trajectories of the kept particles, in output order (for ``<o>motion.star``)."""
    return TrajectorySet.from_shifts({particles.particle_name(i): trajectories.shifts(particles.particle_name(i))
                                      for i in plan.order})
