"""Particles stored as CTF-premultiplied 2D stacks, as relion_refine reads them (spec §6.2).

For every particle and every tilt f with ``rlnTomoVisibleFrames[f] > 0`` (tilt-series row
order) the k-th image of its ``.mrcs`` stack is the k-th visible tilt, seen through
``Aproj_f = R_f · A_sub`` (a reference orientation ``A`` then projects through
``Aproj_f · A``), with a per-image CTF: the depth-corrected defocus of the particle
position (offsets applied, fixed at read time, spec §13.10), ``rlnDefocusAngle``,
``rlnCtfScalefactor``, ``rlnPhaseShift`` and the dose envelope of the tilt's
pre-exposure (or the B-factor ``β·D`` with ``rlnCtfBfactorPerElectronDose = β``); the
per-tilt ``rlnCtfBfactor`` is ignored, as in RELION (spec §13.9).  Premultiplied data are
modelled as ``X_f ≈ C_f² · P_f``.
"""

import dataclasses
import logging

import numpy as np

from sta.errors import InputError
from sta.io.mrc import read_stack_images
from sta.io.star import split_image_name
from sta.kernels.ctf import ctf_2d
from sta.kernels.fourier import centred_rfft
from sta.workflows.tilt_data import ParticleGeometry, TiltData

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StackParticle:
    """Per-particle data needed by the refinement (no images)."""

    index: int                 # row in the particle table
    tomo: str
    image_path: str
    aproj: np.ndarray          # (n_img, 3, 3)
    defocus_u: np.ndarray      # (n_img,) Å, depth-corrected
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    scale: np.ndarray
    phase_shift: np.ndarray
    dose: np.ndarray           # (n_img,) e/Å² (pre-exposure)
    bfactor_per_dose: float
    voltage: float
    cs: float
    q0: float
    pixel_size: float          # rlnImagePixelSize (Å)
    box: int                   # rlnImageSize
    premultiplied: bool

    @property
    def n_img(self):
        return len(self.aproj)

    def ctf(self, box=None, xp=np):
        """(n_img, box, box//2+1) CTF ``C_f`` with scale and dose envelope at the image pixel size."""
        box = box or self.box
        if self.bfactor_per_dose > 0:
            return ctf_2d(box, self.pixel_size, self.defocus_u, self.defocus_v, self.defocus_angle, self.voltage,
                          self.cs, self.q0, phase_shift=self.phase_shift, bfactor=self.bfactor_per_dose * self.dose,
                          scale=self.scale, xp=xp)
        return ctf_2d(box, self.pixel_size, self.defocus_u, self.defocus_v, self.defocus_angle, self.voltage, self.cs,
                      self.q0, phase_shift=self.phase_shift, scale=self.scale, dose=self.dose, xp=xp)

    def fctf(self, box=None, xp=np):
        """``Fctf`` of the likelihood model: ``C²`` for premultiplied data, else ``C``."""
        c = self.ctf(box, xp)
        return c * c if self.premultiplied else c

    def read_images(self, project_resolve, dtype=np.float32):
        """(n_img, box, box) images of the stack (float32, or ``dtype``)."""
        data = read_stack_images(project_resolve(self.image_path), dtype=dtype)
        if data.shape[0] != self.n_img or data.shape[1:] != (self.box, self.box):
            raise InputError(f"{self.image_path}: holds {data.shape[0]} images of {data.shape[1:]} pixels, expected "
                             f"{self.n_img} (visible tilts) of {self.box}x{self.box}")
        return data

    def image_spectra(self, project_resolve):
        """(n_img, box, box//2+1) centred spectra (1/sqrt(N)) of the stack images."""
        return centred_rfft(self.read_images(project_resolve).astype(np.float64), ndim=2)


def load_stack_particles(particles, tomograms, indices=None):
    """:class:`StackParticle` for every (or the given) particle of a 2D-stack particle set."""
    if not particles.is_stack2d:
        raise InputError(f"{particles.path}: rlnTomoSubTomosAre2DStacks is not 1: sta_refine needs 2D stacks "
                         "(run sta_subtomo --stack2d first)")
    for label in ("rlnImageName", "rlnTomoVisibleFrames"):
        if label not in particles.df.columns:
            raise InputError(f"{particles.path}: table particles has no column {label}")
    wanted = set(range(particles.n) if indices is None else np.asarray(indices).tolist())
    out = {}
    for name, idx in particles.indices_by_tomogram().items():
        idx = [i for i in idx if i in wanted]
        if not idx:
            continue
        tilt = TiltData(tomograms[name], load_images=False)
        geo = ParticleGeometry(particles, idx, tilt, apply_offsets=True)
        for k, i in enumerate(idx):
            out[i] = _one(particles, tilt, geo, k, i)
    return [out[i] for i in sorted(out)]


def _one(particles, tilt, geo, k, i):
    vis = particles.visible_frames(i)
    if len(vis) != tilt.n_tilts:
        raise InputError(f"{particles.path}: particle {particles.particle_name(i)}: rlnTomoVisibleFrames has "
                         f"{len(vis)} entries but tilt series {tilt.name} has {tilt.n_tilts} tilts")
    fs = np.flatnonzero(np.asarray(vis) > 0)
    optics = particles.optics_row(i)
    for label in ("rlnImagePixelSize", "rlnImageSize"):
        if label not in optics:
            raise InputError(f"{particles.path}: table optics has no column {label}")
    pos = geo.positions[k]
    dz = tilt.proj[fs, 2, :3] @ (pos - tilt.centre)
    delta = tilt.ts.hand * tilt.pixel_size * tilt.ts.defocus_slope * dz
    image, _ = split_image_name(str(particles.df["rlnImageName"].iloc[i]))
    return StackParticle(
        index=int(i), tomo=tilt.name, image_path=image,
        aproj=tilt.proj[fs, :3, :3] @ geo.a_sub[k],
        defocus_u=tilt.defocus_u[fs] + delta, defocus_v=tilt.defocus_v[fs] + delta,
        defocus_angle=tilt.defocus_angle[fs], scale=tilt.ctf_scale[fs], phase_shift=tilt.phase_shift[fs],
        dose=tilt.doses[fs], bfactor_per_dose=float(tilt.ts.bfactor_per_dose),
        voltage=float(optics.get("rlnVoltage", tilt.ts.voltage)),
        cs=float(optics.get("rlnSphericalAberration", tilt.ts.cs)),
        q0=float(optics.get("rlnAmplitudeContrast", tilt.ts.q0)),
        pixel_size=float(optics["rlnImagePixelSize"]), box=int(optics["rlnImageSize"]),
        premultiplied=bool(int(optics.get("rlnCtfDataAreCtfPremultiplied", 0))))
