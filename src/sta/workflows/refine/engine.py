"""The regularised-likelihood refinement of relion_refine on 2D-stack tomography data.

:class:`RefineEngine` holds the model of one half set (reference, noise spectra, offset
and orientation priors) and does, for a list of particles, the expectation (two-pass
adaptive oversampling over HEALPix orientations × 3D translations) and accumulates the
weighted sums of the maximisation; :func:`maximise` turns the sums of a half into its new
model.  No file or MPI code lives here (spec §6.3-6.5).

Speed: in a global search every particle meets the same coarse orientations, so the reference
slices of each tilt image are made once per iteration and half set and shared by all particles,
engines and threads of the process (:data:`SLICE_CACHE`); the fine pass's slices are reused by
the M-step sums.  :meth:`RefineEngine.expect` may run in several threads at once (on different
particles, each with its own sums): an engine changes nothing after construction except its
lazily made, lock-protected global orientations.
"""

import collections
import dataclasses
import hashlib
import logging
import threading
import weakref

import numpy as np

from sta.geometry.euler import angular_distance, euler_to_matrix
from sta.kernels import fourier_insert as fi
from sta.kernels import likelihood as lk
from sta.kernels.fourier import centred_irfft, centred_rfft, radius_grid_2d, radius_grid_3d
from sta.kernels.grid import cosine_edge, distance_grid
from sta.kernels.projector import FourierProjector

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RefineParams:
    """Options of relion_refine that change the result (units: Å, degrees, pixels as noted)."""

    particle_diameter: float
    symmetry: str = "C1"
    healpix_order: int = 2
    auto_local_order: int = 4
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    oversampling: int = 1
    sigma_rot: float = -1.0
    sigma_tilt: float = -1.0
    sigma_psi: float = -1.0
    do_ctf: bool = True
    ini_high: float = -1.0
    tau2_fudge: float = 1.0
    pad: int = 2
    zero_mask: bool = False
    flatten_solvent: bool = False
    low_resol_join_halves: float = -1.0
    firstiter_cc: bool = False
    solvent_correct_fsc: bool = False
    skip_align: bool = False
    adaptive_fraction: float = 0.999
    incr_size: int = 10
    maskedge: int = 5
    do_scale: bool = True
    min_sigma2_offset: float = 2.0
    offset_prior_sigma: float = 10.0     # --offset: initial σ_offset (Å)
    max_iter: int = 999
    seed: int = 0
    max_bytes: int = 256 * 2 ** 20
    perturb: float = 0.5
    ctf_noise: bool = False   # --ctf_noise: per-pixel noise Fctf·σ² of premultiplied stacks (False: RELION's shell σ²)
    subtomo_multi_thr: float = 0.01   # 3D subtomograms: voxels with a lower multiplicity are left out


class HalfModel:
    """Model of one half set."""

    def __init__(self, volume, pixel_size, n_optics):
        self.set_map(volume)
        self.pixel_size = pixel_size
        self.ori = volume.shape[0]
        n_shells = self.ori // 2 + 1
        self.sigma2 = [np.zeros(n_shells) for _ in range(n_optics)]
        self.sigma2_offset = 0.0
        self.pdf_direction = None
        self.fsc = np.zeros(n_shells)
        self.ssnr = np.zeros(n_shells)
        self.tau2 = np.zeros(n_shells)
        self.sigma2_rec = np.zeros(n_shells)
        self.coverage = np.zeros(n_shells)
        self.scales = {}

    def set_map(self, volume):
        old = getattr(self, "sampler", None)
        if old is not None:
            SLICE_CACHE.forget(old)     # the old map's shared slices go now, not at the next E-step
        self.volume = np.asarray(volume, dtype=np.float64)
        self.sampler = lk.SliceSampler(FourierProjector(self.volume, pad=2), dtype=np.complex64)


class SliceCache:
    """Reference slices of global coarse passes, per tilt image, shared by every particle,
    engine and thread of a process (:meth:`RefineEngine._shared_projections`).

    An entry is the ``(n_o, n_pix)`` slices of one image (its ``Aproj_f``, and ``kz_f`` for
    the planes of a 3D subtomogram) for one reference (:class:`~sta.kernels.likelihood.SliceSampler`),
    orientation set, image size and pixel set.  The least recently used entries are dropped
    beyond ``max_bytes``, and all of a reference's entries when it is freed (a new map each
    iteration).  Thread-safe: a missing entry is made by the first thread that asks for it,
    the others make the next missing ones meanwhile and wait for it instead of making it again.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()    # key -> _Slot
        self._bytes = 0
        self._tokens = {}                            # id(sampler) -> token, while the sampler lives
        self._next = 0
        self._dead = []                              # tokens of freed samplers (appended by finalizers)

    class _Slot:
        __slots__ = ("ready", "value", "counted")

        def __init__(self):
            self.ready = threading.Event()
            self.value = None
            self.counted = False     # its bytes are in the total (set under the lock)

    def _token(self, sampler):
        t = self._tokens.get(id(sampler))
        if t is None:
            t = self._next
            self._next += 1
            self._tokens[id(sampler)] = t
            weakref.finalize(sampler, self._release, id(sampler), t)
        return t

    def _release(self, sid, token):
        self._dead.append((sid, token))      # list.append is atomic; purged under the lock

    def _purge(self):
        while self._dead:
            sid, token = self._dead.pop()
            if self._tokens.get(sid) == token:
                del self._tokens[sid]
            for key in [k for k in self._entries if k[0] == token]:
                self._drop(key)

    def forget(self, sampler):
        """Drop the entries of ``sampler`` (a reference being replaced)."""
        with self._lock:
            token = self._tokens.pop(id(sampler), None)
            if token is not None:
                for key in [k for k in self._entries if k[0] == token]:
                    self._drop(key)

    def _drop(self, key):
        slot = self._entries.pop(key)
        if slot.counted:
            self._bytes -= slot.value.nbytes
            slot.counted = False

    def get(self, sampler, group, keys, make, max_bytes):
        """The slices of every image key (a list of arrays); ``make(i)`` makes those of ``keys[i]``.

        Keys are claimed one at a time, so threads that need the same images share the work;
        a key another thread is making is waited for at the end."""
        out = [None] * len(keys)
        waiting = []
        with self._lock:
            self._purge()
            token = self._token(sampler)
        for i, k in enumerate(keys):
            key = (token, group, k)
            with self._lock:
                slot = self._entries.get(key)
                mine = slot is None
                if mine:
                    slot = self._entries[key] = self._Slot()
                else:
                    self._entries.move_to_end(key)
            if not mine:
                if slot.ready.is_set() and slot.value is not None:
                    out[i] = slot.value
                else:
                    waiting.append((i, slot))
                continue
            try:
                value = make(i)
            except BaseException:
                with self._lock:             # release the claim without a value
                    if self._entries.get(key) is slot:
                        self._drop(key)
                slot.ready.set()
                raise
            with self._lock:
                slot.value = out[i] = value
                if self._entries.get(key) is slot:
                    self._bytes += value.nbytes
                    slot.counted = True
                    self._evict(max_bytes, keep=key)
            slot.ready.set()
        for i, slot in waiting:
            slot.ready.wait()
            out[i] = slot.value if slot.value is not None else make(i)
        return out

    def _evict(self, max_bytes, keep):
        for key in list(self._entries):
            if self._bytes <= max_bytes:
                break
            if key != keep and self._entries[key].counted:
                self._drop(key)

    def clear(self):
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    @property
    def nbytes(self):
        return self._bytes


SLICE_CACHE = SliceCache()


@dataclasses.dataclass
class ParticleResult:
    angles: np.ndarray      # (3,) rot, tilt, psi (deg)
    offset: np.ndarray      # (3,) Å, subtomogram frame
    pmax: float
    n_significant: int
    log_likelihood: float
    acc_spread: float       # posterior angular spread (deg)
    acc_rot: float = float("nan")     # RELION-style accuracy estimate (deg), for a few particles
    acc_trans: float = float("nan")   # (Å)


class HalfSums:
    """Weighted sums of one half set (one iteration)."""

    def __init__(self, ori, pad, current_size, n_optics, n_dirs, groups):
        self.data, self.weight = fi.new_accumulator(ori, pad, current_size)
        n_shells = ori // 2 + 1
        self.wsum_sigma2 = np.zeros((n_optics, n_shells))
        self.sumw = np.zeros(n_optics)
        self.count = np.zeros((n_optics, n_shells))   # σ² denominators (NoiseSums.count)
        self.wsum_ctf2 = np.zeros(n_shells)
        self.offset_sum = 0.0
        self.offset_w = 0.0
        self.pdf = np.zeros(n_dirs)
        self.scale_xa = {g: 0.0 for g in groups}
        self.scale_aa = {g: 0.0 for g in groups}
        self.n_particles = 0

    def arrays(self):
        """The sums as a list of numpy arrays (for MPI reductions), in a fixed order."""
        groups = sorted(self.scale_xa)
        return [self.data, self.weight, self.wsum_sigma2, self.sumw, self.count, self.wsum_ctf2,
                np.array([self.offset_sum, self.offset_w, float(self.n_particles)]), self.pdf,
                np.array([self.scale_xa[g] for g in groups]), np.array([self.scale_aa[g] for g in groups])]

    def set_arrays(self, arrays):
        groups = sorted(self.scale_xa)
        (self.data, self.weight, self.wsum_sigma2, self.sumw, self.count, self.wsum_ctf2, misc, self.pdf, xa,
         aa) = arrays
        self.offset_sum, self.offset_w, n_particles = misc
        self.n_particles = int(round(n_particles))
        self.scale_xa = dict(zip(groups, xa))
        self.scale_aa = dict(zip(groups, aa))

    def add(self, other):
        self.set_arrays([a + b for a, b in zip(self.arrays(), other.arrays())])


def _particle_mask(shape, radius, edge):
    """Raised-cosine disc (2D images) or ball (3D subtomograms): RELION's particle mask.  An
    ``edge`` of 0 keeps the pixels at exactly ``radius`` (a hard edge just outside it)."""
    return cosine_edge(distance_grid(shape), radius, radius + max(edge, 1e-9))


def mask_volume(vol, radius_px, edge_px, zero_mask, sigma2, rng):
    """:func:`mask_images` of one 3D subtomogram (soft sphere; ``sigma2`` per 3D shell)."""
    box = vol.shape[0]
    m = _particle_mask((box,) * 3, radius_px, edge_px)
    if zero_mask:
        out_w = 1.0 - m
        bg = (vol * out_w).sum() / max(out_w.sum(), 1e-12)
        return vol * m + bg * (1.0 - m)
    r = np.round(radius_grid_3d(box)).astype(int)
    amp = np.sqrt(np.maximum(sigma2[np.minimum(r, len(sigma2) - 1)], 0.0))
    noise = centred_irfft((rng.normal(size=amp.shape) + 1j * rng.normal(size=amp.shape)) * amp, (box,) * 3)
    return vol * m + noise * (1.0 - m)


def mask_images(images, radius_px, edge_px, zero_mask, sigma2, rng):
    """Alignment copies of the images: outside a soft disc the pixels are replaced by the
    edge-weighted background mean (``--zero_mask``) or by noise with the σ² spectrum."""
    n, box, _ = images.shape
    m = _particle_mask((box, box), radius_px, edge_px)
    if zero_mask:
        out_w = 1.0 - m
        bg = (images * out_w).sum(axis=(1, 2)) / max(out_w.sum(), 1e-12)
        return images * m + bg[:, None, None] * (1.0 - m)
    r = np.round(radius_grid_2d(box)).astype(int)
    amp = np.sqrt(np.maximum(sigma2[np.minimum(r, len(sigma2) - 1)], 0.0))
    noise_ft = (rng.normal(size=(n,) + amp.shape) + 1j * rng.normal(size=(n,) + amp.shape)) * amp
    noise = centred_irfft(noise_ft, (box, box))
    return images * m + noise * (1.0 - m)


class RefineEngine:
    """Expectation and accumulation for one half set at the current sampling."""

    def __init__(self, params, model, sampling, current_size, coarse_size, groups, optics_index, iteration,
                 local_sigma=None):
        self.p = params
        self.model = model
        self.sampling = sampling
        self.cs = current_size
        self.coarse = coarse_size
        self.groups = groups
        self.optics_index = optics_index
        self.iteration = iteration
        self.local_sigma = local_sigma
        self.group = sampling.group
        self._lock = threading.Lock()
        self._global = None   # the global search's coarse orientations (made once, then read-only)
        coarse = sampling.orientations()
        self.coarse_angles = coarse
        self.n_psi = sampling.n_psi
        self.trans_coarse_A = sampling.translations

    def new_sums(self):
        return HalfSums(self.model.ori, self.p.pad, self.cs, len(self.model.sigma2), self.sampling.n_directions,
                        self.groups)

    # ------------------------------------------------------------------ one particle
    def accuracy(self, sp, result, sigma2, rng):
        """RELION's expected accuracy of one particle at its pose (``result``): the rotation
        (deg) and shift (Å) at which the reference changes by a likelihood ratio of 0.01
        (:mod:`sta.kernels.accuracy`; reference only, no data)."""
        from sta.kernels import accuracy as acc

        cs = self.cs
        ctf = self._ctf(sp)
        size = sp.box
        shape = (size,) * 3 if sp.volume else (sp.n_img, size, size)
        empty = np.zeros(shape[:-1] + (size // 2 + 1,), dtype=complex)
        prep = self._prepare(sp, empty, empty, ctf, cs, sigma2)   # resolution mask and noise weights only
        pix = prep.pix
        n_img = prep.n_img
        ctf2 = prep.ctf2.reshape(n_img, -1)[:, pix]
        inv = prep.inv_sigma2
        inv_pix = inv.reshape(-1, inv.shape[-2] * inv.shape[-1])[:, pix]
        if inv_pix.shape[0] == 1:
            inv_pix = inv_pix[0]
        aproj = np.asarray(prep.aproj, dtype=float)
        sampler = self.model.sampler

        def project(eul):
            rots = euler_to_matrix(eul[..., 0], eul[..., 1], eul[..., 2]).reshape(eul.shape[:2] + (3, 3))
            return sampler.project_matrices(np.matmul(aproj[None], rots), cs, pix, kz=prep.kz)

        # one random axis per image; a 3D subtomogram is one image, so all its planes share it
        draws = 1 if sp.volume else n_img
        choice_rot = np.resize(rng.integers(0, 3, draws), n_img)
        choice_tr = np.resize(rng.integers(0, 3, draws), n_img)
        ang = acc.expected_angular_error(project, result.angles, ctf2, inv_pix, choice_rot)
        ref = project(np.asarray(result.angles, float)[None, None].repeat(n_img, axis=1))[0]
        shift = acc.expected_shift_error(
            ref, lambda t: lk.translation_phases(t, aproj, sp.box, cs, pix=pix, kz=prep.kz), ctf2, inv_pix,
            choice_tr)
        return ang, shift * sp.pixel_size

    def expect(self, sp, images, state, sums, rng):
        """E-step of one particle; accumulates into ``sums``; returns :class:`ParticleResult`.

        ``images`` (n_img, box, box) real premultiplied stack, or the (box, box, box) volume of a
        3D subtomogram; ``state`` dict with the current ``angles`` (deg), ``offset`` (Å) and
        ``prior_offset`` (Å) of the particle, and optionally ``prior_angles`` (deg, NaN = none):
        the centres of a local search with user sigmas (RELION: ``rlnAngle*Prior`` before the
        auto-refine local-search stage, else the current angles).
        """
        p, m = self.p, self.model
        og = self.optics_index[sp.index]
        sigma2 = m.sigma2[og]
        px = sp.pixel_size
        radius = p.particle_diameter / (2.0 * px)
        ctf = self._ctf(sp)
        fill = sigma2 if p.zero_mask else _fill_sigma2(sigma2, ctf)   # the fill noise only without --zero_mask
        if sp.volume:
            masked = mask_volume(images, radius, p.maskedge, p.zero_mask, fill, rng)
            ndim = 3
        else:
            masked = mask_images(images, radius, p.maskedge, p.zero_mask, fill, rng)
            ndim = 2
        x_mask = centred_rfft(masked.astype(np.float64), ndim=ndim)
        x_full = centred_rfft(images.astype(np.float64), ndim=ndim)
        scale = m.scales.get(sp.tomo, 1.0) if p.do_scale else 1.0
        cur = np.asarray(state["angles"], float)
        cur_off_px = np.asarray(state["offset"], float) / px
        prior_px = np.asarray(state["prior_offset"], float) / px
        if p.skip_align:
            angles_f = cur[None]
            trans_f = cur_off_px[None]
            diff2, prep_f, ph_f, proj_f = self._fine_diff2(x_mask, x_full, ctf, sp, angles_f, trans_f, sigma2, scale)
            post = lk.weights_from_diff2(diff2, adaptive_fraction=1.0)
            dir_idx = self._direction_index(angles_f)
        else:
            centre = cur
            if "prior_angles" in state:
                prior = np.asarray(state["prior_angles"], float)
                centre = np.where(np.isfinite(prior), prior, cur)
            idx_c, angles_c, log_po_c, dir_c, rots_c = self._coarse_orientations(centre)
            trial_c = self.sampling.perturb_translations(self.trans_coarse_A)
            trans_c = cur_off_px[None] + trial_c / px
            log_pt_c = lk.offset_log_prior(trans_c, prior_px, max(m.sigma2_offset, 0.0), px)
            if p.firstiter_cc and self.iteration == 1:
                angles_f, trans_f, dir_idx = angles_c, trans_c, dir_c
                prep_f = self._prepare(sp, x_mask, x_full, ctf, self.cs, sigma2)
                ph_f = lk.translation_phases(trans_f, prep_f.aproj, sp.box, self.cs, kz=prep_f.kz)
                proj = self._projector(rots_c, prep_f, self.cs)
                scores = lk.cross_correlation_scores(proj, prep_f, ph_f, max_bytes=p.max_bytes, scale=scale,
                                                     n_orientations=len(angles_f))
                post = lk.weights_from_cc(scores, prep_f.n_measured)
                proj_f = None
            else:
                diff2_c = self._coarse_diff2(x_mask, x_full, ctf, sp, angles_c, rots_c, trans_c, sigma2, scale)
                post_c = lk.weights_from_diff2(diff2_c, log_po_c, log_pt_c, p.adaptive_fraction)
                angles_f, log_po, dir_idx, trans_f, allowed = self._oversample(idx_c, angles_c, log_po_c, dir_c,
                                                                               trial_c, cur_off_px, px, post_c)
                log_pt = lk.offset_log_prior(trans_f, prior_px, max(m.sigma2_offset, 0.0), px)
                diff2, prep_f, ph_f, proj_f = self._fine_diff2(x_mask, x_full, ctf, sp, angles_f, trans_f, sigma2,
                                                               scale, allowed=allowed)
                post = lk.weights_from_diff2(diff2, log_po, log_pt, p.adaptive_fraction)
        return self._accumulate(sp, og, post, angles_f, trans_f, dir_idx, prep_f, ph_f, scale, prior_px, sums,
                                proj_f)

    def _ctf(self, sp):
        """(``Fctf``, --ctf_noise weight or None, multiplicity or None) of a particle: ``Fctf`` of
        its images (ones without ``--ctf``), the per-pixel noise weight of ``--ctf_noise`` (2D
        stacks) and the multiplicity volume of a 3D subtomogram."""
        if sp.volume:
            fctf, mult = sp.weights()
            return (np.asarray(fctf, dtype=float) if self.p.do_ctf else np.ones(fctf.shape)), None, mult
        if not self.p.do_ctf:
            return np.ones((sp.n_img, sp.box, sp.box // 2 + 1)), None, None
        fctf = np.asarray(sp.fctf(), dtype=float)
        return fctf, (lk.ctf_noise_weight(fctf) if self.p.ctf_noise else None), None

    def _prepare(self, sp, x_mask, x_full, ctf, size, sigma2):
        """:func:`~sta.kernels.likelihood.prepare_particle` of a 2D stack or a 3D subtomogram."""
        fctf, nw, mult = ctf
        if sp.volume:
            inv, bp = lk.noise_maps(sigma2, size, kz=lk.plane_frequencies(size))
            return lk.prepare_particle(x_mask, fctf, None, inv, size, x_full, bp, volume=True, multiplicity=mult,
                                       multi_thr=self.p.subtomo_multi_thr)
        inv, bp = lk.noise_maps(sigma2, size)
        return lk.prepare_particle(x_mask, fctf, sp.aproj, inv, size, x_full, bp, noise_weight=nw)

    def _projector(self, rots, prep, size, pix=None):
        sampler = self.model.sampler
        aproj, kz = prep.aproj, prep.kz
        return lambda a, b: sampler.project(rots[a:b], aproj, size, pix, kz=kz)

    def _coarse_diff2(self, x_mask, x_full, ctf, sp, angles, rots, trans_px, sigma2, scale):
        """diff2 of the coarse pass (image size ``self.coarse``): every orientation × translation."""
        size = self.coarse
        prep = self._prepare(sp, x_mask, x_full, ctf, size, sigma2)
        ph_pix = lk.translation_phases(trans_px, prep.aproj, sp.box, size, pix=prep.pix, kz=prep.kz)
        proj = self._shared_projections(angles, rots, prep, size)
        if proj is None:
            proj = self._projector(rots, prep, size, prep.pix)
        d = lk.squared_differences(proj, prep, ph_pix, max_bytes=self.p.max_bytes, scale=scale,
                                   n_orientations=len(angles), dtype=np.float32)
        return d + prep.diff2_constant

    def _fine_diff2(self, x_mask, x_full, ctf, sp, angles, trans_px, sigma2, scale, allowed=None):
        """diff2 of the fine pass (image size ``self.cs``) on the ``allowed`` (orientation,
        translation) pairs (all when None); also returns the prepared particle, the phases of
        the whole window and the reference slices of the evaluated orientations (whole window,
        ``(rows, slices)``: the evaluated orientations and their ``(n_rows, n_img, cs, cs//2+1)``
        slices), which the M-step sums reuse; None when they do not fit (:meth:`_fine_slices_fit`)."""
        size = self.cs
        prep = self._prepare(sp, x_mask, x_full, ctf, size, sigma2)
        ph = lk.translation_phases(trans_px, prep.aproj, sp.box, size, kz=prep.kz)
        ph_pix = np.ascontiguousarray(ph.reshape(ph.shape[:2] + (-1,))[..., prep.pix])
        rows = np.arange(len(angles)) if allowed is None else np.flatnonzero(allowed.any(axis=1))
        rots = euler_to_matrix(angles[rows, 0], angles[rows, 1], angles[rows, 2]).reshape(-1, 3, 3)
        whole = None
        if self._fine_slices_fit(len(rows), len(prep.aproj), size):
            proj = self.model.sampler.project(rots, prep.aproj, size, kz=prep.kz)   # (n_rows, F, cs, csh)
            whole = (rows, proj)
        else:
            proj = self._projector(rots, prep, size, prep.pix)
        d = np.full((len(angles), len(trans_px)), np.inf)
        d[rows] = lk.squared_differences(proj, prep, ph_pix, max_bytes=self.p.max_bytes, scale=scale,
                                         n_orientations=len(rows), dtype=np.float32)
        if allowed is not None:
            d[~allowed] = np.inf
        return d + prep.diff2_constant, prep, ph, whole

    def _fine_slices_fit(self, n_rows, n_img, size):
        """Whether the fine pass keeps its whole-window slices for the M-step (``max_bytes / 16``,
        16 MiB by default: a small addition to the E-step's memory)."""
        item = np.dtype(self.model.sampler.table.dtype).itemsize
        return n_rows * n_img * size * (size // 2 + 1) * item <= self.p.max_bytes // 16

    def _shared_projections(self, angles, rots, prep, size):
        """Reference slices of a global coarse pass from the cache shared by the particles.

        In a global search every particle is compared with the same orientations, and the
        images of particles of one tomogram without a subtomogram orientation have the same
        tilt geometry (``Aproj_f``; every 3D subtomogram the same planes), so their slices are
        identical: each tilt image's slices are made once and kept in :data:`SLICE_CACHE`
        (per reference, within ``max_bytes``) for every particle, thread and batch that has
        that image.  Returns the list of each image's ``(n_o, n_pix)`` slices (the per-image
        form of :func:`~sta.kernels.likelihood.squared_differences`), or None when not applicable.
        """
        aproj, pix, kz = prep.aproj, prep.pix, prep.kz
        if self.local_sigma is not None or len(angles) < 64:
            return None
        sampler = self.model.sampler
        itemsize = np.dtype(sampler.table.dtype).itemsize
        if len(angles) * len(aproj) * len(pix) * itemsize > self.p.max_bytes:
            return None
        group = hashlib.sha1(b"%d|" % size + np.ascontiguousarray(pix).tobytes() + b"|"
                             + np.ascontiguousarray(angles).tobytes()).digest()
        keys = []
        for f in range(len(aproj)):
            k = np.ascontiguousarray(aproj[f], dtype=float).tobytes()
            keys.append(k if kz is None else k + np.float64(kz[f]).tobytes())

        def make(f):
            one = sampler.project(rots, aproj[f:f + 1], size, pix, kz=None if kz is None else kz[f:f + 1])
            return one.reshape(len(rots), len(pix))

        return SLICE_CACHE.get(sampler, group, keys, make, self.p.max_bytes)

    def _coarse_orientations(self, cur):
        """Coarse orientation indices (into ``sampling.orientations()``), perturbed angles,
        log priors, direction indices and rotation matrices."""
        s = self.sampling
        if self.local_sigma is not None:
            sr, st_, sp_ = self.local_sigma
            sel = s.local_orientations(cur[0], cur[1], cur[2], sr, st_, sp_, self.group)
            idx = sel.orientation_indices
            w = sel.weights
            log_po = np.log(w / w.mean())
            angles = s.perturb_orientations(self.coarse_angles[idx])
            rots = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).reshape(-1, 3, 3)
            return idx, angles, log_po, idx // self.n_psi, rots
        return self._global_orientations()

    def _global_orientations(self):
        """:meth:`_coarse_orientations` of a global search: the same for every particle of the
        iteration, made once per engine (read-only afterwards, so threads may share it)."""
        with self._lock:
            if self._global is None:
                s = self.sampling
                idx = np.arange(len(self.coarse_angles))
                pdf = self.model.pdf_direction
                if pdf is not None and len(pdf) * self.n_psi != len(idx):
                    raise RuntimeError(f"direction prior has {len(pdf)} directions, the sampling "
                                       f"{len(idx) // self.n_psi}")
                log_po = (np.repeat(lk.orientation_log_prior(pdf), self.n_psi) if pdf is not None
                          else np.zeros(len(idx)))
                angles = s.perturb_orientations(self.coarse_angles[idx])
                rots = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).reshape(-1, 3, 3)
                for arr in (idx, angles, log_po, rots):
                    arr.flags.writeable = False
                self._global = (idx, angles, log_po, idx // self.n_psi, rots)
            return self._global

    def _oversample(self, idx_c, angles_c, log_po_c, dir_c, trial_c, cur_off_px, px, post_c):
        """Children of the significant coarse points (RELION's pass 2) as a rectangle with
        a mask of allowed (orientation, translation) pairs."""
        os_ = self.p.oversampling
        sig = post_c.significant
        o_idx = np.flatnonzero(sig.any(axis=1))
        t_idx = np.flatnonzero(sig.any(axis=0))
        if os_ == 0:
            return (angles_c[o_idx], log_po_c[o_idx], dir_c[o_idx], cur_off_px + trial_c[t_idx] / px,
                    sig[np.ix_(o_idx, t_idx)])
        s = self.sampling
        fine_a, parent_o = [], []
        for k, o in enumerate(o_idx):
            kids = s.oversampled_orientations(int(idx_c[o] // self.n_psi), int(idx_c[o] % self.n_psi), os_)
            fine_a.append(kids)
            parent_o.append(np.full(len(kids), k))
        fine_t, parent_t = [], []
        for k, t in enumerate(t_idx):
            kids = s.oversampled_translations(int(t), os_)
            fine_t.append(kids)
            parent_t.append(np.full(len(kids), k))
        parent_o = np.concatenate(parent_o)
        parent_t = np.concatenate(parent_t)
        allowed = sig[np.ix_(o_idx, t_idx)][parent_o][:, parent_t]
        return (np.concatenate(fine_a), log_po_c[o_idx][parent_o], dir_c[o_idx][parent_o],
                cur_off_px + np.concatenate(fine_t) / px, allowed)

    def _direction_index(self, angles):
        s = self.sampling
        v = np.stack([np.cos(np.deg2rad(s.rot)) * np.sin(np.deg2rad(s.tilt)),
                      np.sin(np.deg2rad(s.rot)) * np.sin(np.deg2rad(s.tilt)), np.cos(np.deg2rad(s.tilt))], -1)
        a = angles[:, :2]
        u = np.stack([np.cos(np.deg2rad(a[:, 0])) * np.sin(np.deg2rad(a[:, 1])),
                      np.sin(np.deg2rad(a[:, 0])) * np.sin(np.deg2rad(a[:, 1])), np.cos(np.deg2rad(a[:, 1]))], -1)
        return np.argmax(u @ v.T, axis=1)

    def _accumulate(self, sp, og, post, angles, trans_px, dir_idx, prep, ph, scale, prior_px, sums, proj=None):
        w = post.mstep_weights()
        keep = np.flatnonzero(w.sum(axis=1) > 0)
        wk = w[keep]
        rots = euler_to_matrix(angles[keep, 0], angles[keep, 1], angles[keep, 2]).reshape(-1, 3, 3)
        wimg, wsum = lk.weighted_images(wk, prep.images_nomask, ph)
        data, weight = lk.backprojection_slices(wimg, wsum, prep, scale)
        mats = lk.slice_matrices(rots, prep.aproj)
        cs = prep.current_size
        kz = None if prep.kz is None else np.tile(prep.kz, len(rots))
        fi.insert_slices(sums.data, sums.weight, data.reshape(-1, cs, cs // 2 + 1),
                         weight.reshape(-1, cs, cs // 2 + 1), mats.reshape(-1, 3, 3), self.p.pad, kz=kz)
        if proj is None:
            proj = self.model.sampler.project(rots, prep.aproj, cs, kz=prep.kz)
        else:     # the fine pass's slices of these orientations (the same values)
            rows, slices = proj
            proj = slices[np.searchsorted(rows, keep)]
        ns = lk.noise_sums(wk, proj, prep, ph, scale=scale, ssnr=self.model.ssnr)
        sums.wsum_sigma2[og] += ns.wsum_sigma2
        sums.sumw[og] += ns.sumw
        sums.count[og] += ns.count
        sums.wsum_ctf2 += ns.wsum_ctf2
        if sp.tomo in sums.scale_xa:
            sums.scale_xa[sp.tomo] += ns.scale_xa / max(scale, 1e-12)
            sums.scale_aa[sp.tomo] += ns.scale_aa / max(scale * scale, 1e-12)
        osum, ow = lk.offset_sums(w, trans_px, prior_px, sp.pixel_size, prep.n_measured)
        sums.offset_sum += osum
        sums.offset_w += ow
        np.add.at(sums.pdf, dir_idx[keep], wk.sum(axis=1))
        sums.n_particles += 1
        bo, bt = post.best
        spread = _angular_spread(rots, angles[bo], wk.sum(axis=1))
        return ParticleResult(angles=angles[bo].copy(), offset=trans_px[bt] * sp.pixel_size, pmax=post.pmax,
                              n_significant=post.n_significant, log_likelihood=post.log_likelihood,
                              acc_spread=spread)


def _fill_sigma2(sigma2, ctf):
    """σ² spectrum of the noise that fills the masked-out area.  With the CTF-weighted noise
    model σ² is per unit CTF², so scale it by the shell mean of ``Fctf`` of this stack; a 3D
    subtomogram's noise is σ² times its multiplicity: scale by the shell mean of that."""
    fctf, noise_weight, mult = ctf
    if mult is not None:
        return sigma2 * _shell_mean(mult[None], radius_grid_3d(mult.shape[0]), len(sigma2))
    if noise_weight is None:
        return sigma2
    return sigma2 * _shell_mean(fctf, radius_grid_2d(fctf.shape[-2]), len(sigma2))


def _shell_mean(values, radius, n_shells):
    """Mean of ``values`` (n, *grid) per rounded radius shell of the grid."""
    r = np.round(radius).astype(int)
    ok = r < n_shells
    return np.bincount(r[ok], values.sum(axis=0)[ok], n_shells) / np.maximum(
        np.bincount(r[ok], minlength=n_shells) * values.shape[0], 1)


def _angular_spread(rots, best_angles, weights):
    """Posterior-weighted RMS angle (deg) between the kept orientations and the best one."""
    ang = angular_distance(rots, euler_to_matrix(*best_angles))
    w = weights / max(weights.sum(), 1e-300)
    return float(np.sqrt((w * ang * ang).sum()))


def initial_sigma2(stack_particles, read_images, n_per_group, optics_index, n_optics, ori, ctf_noise=False):
    """σ² of the first iteration: half the mean power per shell of the images of the first
    ``n_per_group`` particles of each optics group (E|X|² = 2σ² for complex noise); with
    ``ctf_noise`` of the images weighted by :func:`~sta.kernels.likelihood.ctf_noise_weight`;
    for 3D subtomograms the power per 3D shell over the summed multiplicity (RELION's
    ``wsum_stMulti`` normalisation)."""
    n_shells = ori // 2 + 1
    sums = np.zeros((n_optics, n_shells))
    den = np.zeros((n_optics, n_shells))
    taken = np.zeros(n_optics, dtype=int)
    radius = {}   # rounded radius grid per dimensionality, made once
    for sp in stack_particles:
        og = optics_index[sp.index]
        if taken[og] >= n_per_group:
            continue
        ndim = 3 if sp.volume else 2
        if ndim not in radius:
            radius[ndim] = np.round(radius_grid_3d(ori) if sp.volume else radius_grid_2d(ori)).astype(int)
        r = radius[ndim]
        x = centred_rfft(read_images(sp).astype(np.float64), ndim=ndim)
        p = x.real ** 2 + x.imag ** 2
        if sp.volume:
            mult = sp.multiplicity()
            count = np.ones(p.shape) if mult is None else mult
        else:
            p = (p * lk.ctf_noise_weight(sp.fctf()) if ctf_noise else p).sum(axis=0)
            count = np.full(p.shape, float(sp.n_img))
        ok = r < n_shells
        sums[og] += np.bincount(r[ok], p[ok], minlength=n_shells)[:n_shells]
        den[og] += np.bincount(r[ok], count[ok], minlength=n_shells)[:n_shells]
        taken[og] += 1
    out = []
    for og in range(n_optics):
        s = sums[og] / np.maximum(den[og], 1e-30) / 2.0
        out.append(np.where(s > 0, s, s[s > 0].min() if (s > 0).any() else 1.0))
    return out
