"""Particles as relion_refine reads them: CTF-premultiplied 2D stacks (spec §6.2) or 3D
pseudo-subtomograms (spec §4.3, §6.1).

2D stacks:

For every particle and every tilt f with ``rlnTomoVisibleFrames[f] > 0`` (tilt-series row
order) the k-th image of its ``.mrcs`` stack is the k-th visible tilt, seen through
``Aproj_f = R_f · A_sub`` (a reference orientation ``A`` then projects through
``Aproj_f · A``), with a per-image CTF: the depth-corrected defocus of the particle
position (offsets applied, fixed at read time, spec §13.10), ``rlnDefocusAngle``,
``rlnCtfScalefactor``, ``rlnPhaseShift`` and the dose envelope of the tilt's
pre-exposure (or the B-factor ``β·D`` with ``rlnCtfBfactorPerElectronDose = β``); the
per-tilt ``rlnCtfBfactor`` is ignored, as in RELION (spec §13.9).  Premultiplied data are
modelled as ``X_f ≈ C_f² · P_f``.

3D pseudo-subtomograms (``rlnImageDimensionality = 3``, no tomogram set needed): the
``rlnImageName`` volume (``…_data.mrc``) in the subtomogram frame and its ``rlnCtfImage``
weights (``…_weights.mrc``: CTF² sums and multiplicity as (2c, c, c//2+1) FFTW half grids,
the CTF² half alone as (c, c, c//2+1), or a centred c³ CTF volume); modelled as
``X ≈ |CTF²| · P`` (premultiplied) with RELION's multiplicity noise model
(:func:`sta.kernels.likelihood.prepare_particle`).
"""

import dataclasses
import logging
from typing import ClassVar

import numpy as np

from sta.errors import InputError
from sta.io.image_name import image_file
from sta.io.mrc import read_stack_images
from sta.io.star import split_image_name
from sta.kernels.ctf import ctf_2d
from sta.kernels.fourier import centred_rfft
from sta.kernels.grid import fft_freqs
from sta.workflows.tilt_data import ParticleGeometry, TiltData

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StackParticle:
    """Per-particle data needed by the refinement (no images)."""

    DATA_DIMENSIONALITY: ClassVar[int] = 2  # rlnDataDimensionality of the model file
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
    volume = False              # 2D stack (SubtomoParticle: 3D pseudo-subtomogram)

    @property
    def n_img(self):
        return len(self.aproj)

    def multiplicity(self):
        """None: 2D stacks have no multiplicity volume."""
        return None

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
        raise InputError(f"{particles.path}: neither 2D stacks (data_general rlnTomoSubTomosAre2DStacks 1) nor 3D "
                         "pseudo-subtomograms (optics rlnImageDimensionality 3)")
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
    image, _ = split_image_name(str(particles.df["rlnImageName"].iloc[i]),
                                f"{particles.path}: table particles row {i + 1} rlnImageName")
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


@dataclasses.dataclass
class SubtomoParticle:
    """One 3D pseudo-subtomogram (no images held): the volume file, its weights file and
    optics.  ``n_img`` is the number of z-sections (rows of the image store)."""

    DATA_DIMENSIONALITY: ClassVar[int] = 3
    index: int
    tomo: str
    image_path: str
    ctf_path: str              # rlnCtfImage as written
    ctf_file: str              # resolved path ("" without rlnCtfImage)
    pixel_size: float
    box: int
    premultiplied: bool
    volume = True

    @property
    def n_img(self):
        return self.box

    @property
    def aproj(self):
        """Identity for every plane ``kz`` of the full-size 3D spectrum (the subtomogram frame)."""
        return np.broadcast_to(np.eye(3), (self.box, 3, 3))

    def read_images(self, project_resolve, dtype=np.float32):
        """(box, box, box) volume."""
        data = read_stack_images(project_resolve(self.image_path), dtype=dtype)
        if data.shape != (self.box,) * 3:
            raise InputError(f"{self.image_path}: volume of {data.shape[::-1]} voxels, expected "
                             f"{self.box}x{self.box}x{self.box} (rlnImageSize)")
        return data

    def _weights(self):
        c = self.box
        if not self.ctf_file:
            return None, None
        w = read_stack_images(self.ctf_file, dtype=np.float64)
        h = c // 2 + 1
        if w.shape == (2 * c, c, h):
            if not self.premultiplied:
                raise InputError(f"{self.ctf_path}: a multiplicity volume needs CTF-premultiplied subtomograms "
                                 "(rlnCtfDataAreCtfPremultiplied = 1), as in RELION")
            return w[:c], w[c:]
        if w.shape == (c, c, h):
            return w, None
        if w.shape == (c, c, c):          # centred cubic CTF volume (origin at c//2)
            kk = fft_freqs(c, nyquist_positive=True)
            return w[np.ix_(c // 2 - kk, c // 2 - kk, c // 2 - np.arange(h))], None
        raise InputError(f"{self.ctf_path}: weights volume of {w.shape[::-1]} voxels; expected "
                         f"{h}x{c}x{2 * c} (CTF² and multiplicity), {h}x{c}x{c} or {c}x{c}x{c} (rlnCtfImage)")

    def weights(self):
        """(``Fctf``, multiplicity) from one read of the weights file.  ``Fctf`` (c, c, c//2+1):
        ``|CTF²|`` sums of premultiplied data (RELION's default ``ctf3d_squared``), else the CTF
        volume; ones without a weights file.  Multiplicity: None when the file has none."""
        ctf, mult = self._weights()
        if mult is not None and mult.min() < 0:
            raise InputError(f"{self.ctf_path}: the multiplicity volume has negative values")
        if ctf is None:
            return np.ones((self.box, self.box, self.box // 2 + 1)), mult
        return (np.abs(ctf) if self.premultiplied else ctf), mult

    def fctf(self, box=None, xp=np):
        """``Fctf`` of :meth:`weights`."""
        return xp.asarray(self.weights()[0])

    def multiplicity(self):
        """Multiplicity of :meth:`weights` (None when the weights file has none)."""
        return self.weights()[1]


def load_subtomo_particles(particles, indices=None):
    """:class:`SubtomoParticle` for every (or the given) particle of a 3D pseudo-subtomogram set."""
    if "rlnImageName" not in particles.df.columns:
        raise InputError(f"{particles.path}: table particles has no column rlnImageName")
    has_ctf = "rlnCtfImage" in particles.df.columns
    df = particles.df
    wanted = range(particles.n) if indices is None else sorted(int(i) for i in indices)
    groups = (df["rlnTomoName"] if "rlnTomoName" in df.columns else
              df["rlnGroupName"] if "rlnGroupName" in df.columns else None)
    out = []
    for i in wanted:
        optics = particles.optics_row(i)
        for label in ("rlnImagePixelSize", "rlnImageSize"):
            if label not in optics:
                raise InputError(f"{particles.path}: table optics has no column {label}")
        premult = bool(int(optics.get("rlnCtfDataAreCtfPremultiplied", 0)))
        ctf = str(df["rlnCtfImage"].iloc[i]) if has_ctf else ""
        where = f"{particles.path}: table particles row {i + 1}"
        out.append(SubtomoParticle(
            index=int(i), tomo=str(groups.iloc[i]) if groups is not None else "group1",
            image_path=split_image_name(str(df["rlnImageName"].iloc[i]), f"{where} rlnImageName")[0],
            ctf_path=ctf,
            ctf_file=particles.resolve(image_file(ctf, f"{where} rlnCtfImage")) if ctf else "",
            pixel_size=float(optics["rlnImagePixelSize"]), box=int(optics["rlnImageSize"]), premultiplied=premult))
    return out


def is_volume_set(particles):
    """True for 3D pseudo-subtomograms (``rlnImageDimensionality = 3`` and not 2D stacks)."""
    if particles.is_stack2d or particles.optics is None:
        return False
    dims = particles.optics.get("rlnImageDimensionality")
    return dims is not None and bool((dims.astype(int) == 3).all())
