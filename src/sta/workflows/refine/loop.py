"""The auto-refine iteration loop (spec §6.5): E-step over both half sets, M-step, FSC,
sampling schedule, convergence and the final iteration joining the halves.

Parallel layout (spec §6.8): rank 0 is the leader (metadata, pose bookkeeping, every output
file, no images); followers form two half-set groups (odd ranks half 1, even ranks half 2)
that take particle batches of their own half through a shared counter and reduce their sums
inside the half; the two halves meet only to compute the FSC.  With one rank, that rank does
both halves in turn.
"""

import dataclasses
import logging
import time

import numpy as np

from sta.errors import InputError
from sta.geometry.euler import angular_distance, euler_to_matrix
from sta.geometry.healpix import OrientationSampling
from sta.kernels import fourier_insert as fi
from sta.kernels import likelihood as lk
from sta.kernels.filters import lowpass_map
from sta.kernels.fsc import resolution_shell
from sta.parallel.progress import Progress
from sta.workflows.refine.engine import HalfModel, RefineEngine, initial_sigma2
from sta.workflows.refine.schedule import AutoRefine, Sampling, coarse_image_size, current_image_size

log = logging.getLogger("sta.refine")


@dataclasses.dataclass
class PoseState:
    """Per-particle hidden variables carried between iterations (table row order)."""

    angles: np.ndarray          # (n, 3) deg
    offsets: np.ndarray         # (n, 3) Å
    prior_offsets: np.ndarray   # (n, 3) Å
    half: np.ndarray            # (n,) 0/1
    pmax: np.ndarray
    nsig: np.ndarray
    logl: np.ndarray
    spread: np.ndarray
    acc_rot: np.ndarray
    acc_trans: np.ndarray

    def copy(self):
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})


def assign_halves(particles, seed):
    """0/1 half of every particle: ``rlnRandomSubset`` when all are 1/2, else a seeded draw."""
    df = particles.df
    if "rlnRandomSubset" in df.columns:
        sub = df["rlnRandomSubset"].to_numpy().astype(int)
        if np.all((sub == 1) | (sub == 2)):
            return sub - 1
        if np.any((sub == 1) | (sub == 2)):
            raise InputError(f"{particles.path}: rlnRandomSubset mixes 1/2 with other values")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, particles.n)


def symmetric_angular_distance(a, b, group):
    """Smallest rotation angle (deg) between orientations ``a`` and ``b·R`` over the group's R."""
    best = None
    for r in group.matrices:
        d = angular_distance(a, b @ r)
        best = d if best is None else np.minimum(best, d)
    return best


class AutoRefinement:
    """State and loop of one ``sta_refine --auto_refine`` run (serial or MPI)."""

    def __init__(self, params, particles, stack_particles, references, pixel_size, comm=None, writer=None,
                 check_abort=None, resume=None, images=None):
        self.p = params
        self.particles = particles
        self.sps = stack_particles
        self.by_index = {sp.index: sp for sp in stack_particles}
        self.px = pixel_size
        self.ori = (resume.arrays["h0_volume"] if resume is not None else references[0]).shape[0]
        self.writer = writer
        self.check_abort = check_abort
        from sta.parallel.mpi import SerialComm

        self.comm = comm if comm is not None else SerialComm()
        if images is None:
            from sta.parallel.image_store import ImageStore

            images = ImageStore(stack_particles, particles.resolve, self.comm)
        self.images = images
        self.rng = np.random.default_rng(params.seed)
        groups = sorted(set(sp.tomo for sp in stack_particles))
        self.groups = groups
        self.optics_index = self._optics_index()
        n_optics = max(self.optics_index.values()) + 1
        if resume is not None:
            references = [resume.arrays[f"h{h}_volume"] for h in range(2)]
            self.models = [HalfModel(r, pixel_size, n_optics) for r in references]
        else:
            self.models = [HalfModel(self._initial_reference(r), pixel_size, n_optics) for r in references]
        self.state = self._initial_state()
        self.prior_angles = self._prior_angles()
        self.pick_accuracy_particles()
        self.sampling = OrientationSampling(params.healpix_order, -1.0, params.offset_range_px * pixel_size,
                                            params.offset_step_px * pixel_size, params.perturb, params.symmetry)
        user = max(params.sigma_rot, params.sigma_tilt, params.sigma_psi) > 0
        self.samp = Sampling(params.healpix_order, params.offset_range_px * pixel_size,
                             params.offset_step_px * pixel_size, params.oversampling, params.auto_local_order,
                             local=user, user_sigmas=user)
        self.samp.start_local_if_needed()
        self.auto = AutoRefine()
        ini = params.ini_high if params.ini_high > 0 else 4.0 * 2.0 * pixel_size
        self.current_resolution = 1.0 / ini
        self.current_size = current_image_size(self.ori, self.ori * pixel_size / ini, 0.0, 0.0, params.incr_size)
        self.fsc = np.zeros(self.ori // 2 + 1)
        self.iteration = 0
        self.final = False
        self.timings = {"expectation": 0.0, "maximisation": 0.0, "writing": 0.0}
        if resume is not None:
            from sta.workflows.refine.checkpoint import restore

            restore(self, resume)
            self._decide_final()
            return
        self._start(stack_particles, groups, n_optics)

    def _start(self, stack_particles, groups, n_optics):
        """Initial noise spectra and greyscale of a new run (reads the first particles)."""
        params = self.p
        sig = None
        first_reader = 0 if self.comm.Get_size() == 1 else 1
        if self.comm.Get_rank() == first_reader:
            sig = initial_sigma2(stack_particles, self._read, 10, self.optics_index, n_optics, self.ori,
                                 ctf_noise=params.ctf_noise)
        if self.comm.Get_size() > 1:
            sig = self.comm.bcast(sig, root=first_reader)
        for m in self.models:
            m.sigma2 = [s.copy() for s in sig]
            m.sigma2_offset = params.offset_prior_sigma ** 2
            m.scales = {g: 1.0 for g in groups}
        scale = None
        if self.comm.Get_rank() == first_reader:
            scale = self._reference_scale()
        if self.comm.Get_size() > 1:
            scale = self.comm.bcast(scale, root=first_reader)
        log.info(" Reference greyscale matched to the data: scale factor %.5g", scale)
        for m in self.models:
            m.set_map(m.volume * scale)

    # ------------------------------------------------------------------ set-up
    def pick_accuracy_particles(self):
        """RELION estimates the accuracy from 100 particles; take up to 50 of each half."""
        self.accuracy_particles = set()
        for h in range(2):
            self.accuracy_particles.update(np.flatnonzero(self.state.half == h)[:50].tolist())

    def _optics_index(self):
        df = self.particles.df
        groups = df["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in df.columns else np.ones(self.particles.n)
        uniq = {g: k for k, g in enumerate(sorted(set(groups.tolist())))}
        return {i: uniq[groups[i]] for i in range(self.particles.n)}

    def _initial_reference(self, ref):
        if self.p.ini_high > 0:
            return lowpass_map(np.asarray(ref, dtype=np.float64), self.p.ini_high, self.px)
        return np.asarray(ref, dtype=np.float64)

    def _initial_state(self):
        n = self.particles.n
        df = self.particles.df
        prior = np.zeros((n, 3))
        labels = ("rlnOriginXPriorAngst", "rlnOriginYPriorAngst", "rlnOriginZPriorAngst")
        for j, label in enumerate(labels):
            if label in df.columns:
                prior[:, j] = df[label].to_numpy(dtype=float)
        half = assign_halves(self.particles, self.p.seed)
        z = np.zeros(n)
        return PoseState(angles=self.particles.angles().copy(), offsets=self.particles.origins_angst().copy(),
                         prior_offsets=prior, half=half, pmax=z.copy(), nsig=z.copy(), logl=z.copy(),
                         spread=z.copy(), acc_rot=np.full(n, np.nan), acc_trans=np.full(n, np.nan))

    def _prior_angles(self):
        """(n, 3) ``rlnAngleRot/Tilt/PsiPrior`` (deg), NaN where absent or 999 (RELION: no prior)."""
        df = self.particles.df
        out = np.full((self.particles.n, 3), np.nan)
        for j, label in enumerate(("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")):
            if label in df.columns:
                v = df[label].to_numpy(dtype=float)
                out[:, j] = np.where(np.abs(v - 999.0) < 0.01, np.nan, v)
        return out

    def _reference_scale(self, n_max=50):
        """Least-squares factor putting the reference on the data's scale: ``Σ Re(X·conj(F·P)) /
        Σ |F·P|²`` at the input poses, over the shells below ``--ini_high`` (or a quarter of
        the box) of up to ``n_max`` particles."""
        from sta.kernels.fourier import centred_rfft, radius_grid_2d, radius_grid_3d

        res = self.p.ini_high if self.p.ini_high > 0 else 4.0 * 2.0 * self.px
        rmax = max(self.ori * self.px / res, 2.0)
        num = den = 0.0
        for sp in self.sps[:n_max]:
            ndim = 3 if sp.volume else 2
            x = centred_rfft(self._read(sp).astype(np.float64), ndim=ndim)
            a = euler_to_matrix(*self.state.angles[sp.index]).reshape(1, 3, 3)
            fctf = sp.fctf() if self.p.do_ctf else 1.0
            kz = lk.plane_frequencies(self.ori) if sp.volume else None
            r = radius_grid_3d(self.ori) if sp.volume else radius_grid_2d(self.ori)
            h = int(self.state.half[sp.index])
            pred = fctf * self.models[h].sampler.project(a, sp.aproj, self.ori, kz=kz)[0]
            band = np.broadcast_to((r >= 1) & (r <= rmax), pred.shape)
            num += float(np.real(np.vdot(pred[band], x[band])))
            den += float(np.vdot(pred[band], pred[band]).real)
        if not den > 0 or not num > 0:
            raise InputError("the reference does not correlate with the particles at their input poses "
                             "(empty reference or wrong hand/convention?)")
        return num / den

    def _read(self, sp):
        return self.images.read(sp)

    # ------------------------------------------------------------------ loop
    def run(self):
        from sta.parallel.refine import broadcast_model

        t0 = time.time()
        leader = self.comm.Get_rank() == 0
        while True:
            self.iteration += 1
            if self.check_abort and leader:
                self.check_abort()
            if leader:
                self._log_iteration_header()
            old = self.state.copy()
            sums = self._expectation()
            last = self.final
            if leader:
                self._maximisation(sums, old)
                if not last:
                    self._decide_final()
            broadcast_model(self)
            if last:
                break
        self.timings["total"] = time.time() - t0
        return self

    def _decide_final(self):
        """After an M-step (or on --continue): is the next iteration the last one?"""
        if self.final:
            return
        if self.iteration >= self.p.max_iter:
            log.info(" Auto-refine: reached --iter %d; the next iteration is the last", self.p.max_iter)
            self.final = True
        elif self.auto.check_convergence():
            log.info(" Auto-refine: Refinement has converged, entering last iteration where two halves "
                     "will be combined...")
            log.info(" Auto-refine: The last iteration will use data to Nyquist frequency, which may "
                     "take more CPU and RAM.")
            self.final = True

    def _log_iteration_header(self):
        log.info(" Auto-refine: Iteration= %d", self.iteration)
        log.info(" Auto-refine: Resolution= %g (no gain for %d iter) ", 1.0 / max(self.current_resolution, 1e-9),
                 self.auto.iter_wo_resol_gain)
        log.info(" Auto-refine: Angular step= %g degrees; local searches= %s", self.samp.step(),
                 "true" if self.samp.local else "false")
        log.info(" Auto-refine: Offset search range= %g Angstroms; offset step= %g Angstroms",
                 self.sampling.offset_range, self.sampling.offset_step / 2 ** self.p.oversampling)

    # ------------------------------------------------------------------ E-step
    def _engine(self, h):
        cs = self.ori if self.final else self.current_size
        coarse = coarse_image_size(self.ori, self.px, self.samp.step(False), self.p.particle_diameter, cs)
        coarse = max(coarse + coarse % 2, 8)
        local = self.local_sigmas()
        return RefineEngine(self.p, self.models[h], self.sampling, cs, min(coarse, cs), self.groups,
                            self.optics_index, self.iteration, local_sigma=local)

    def _expectation(self):
        t0 = time.time()
        self.sampling.set_orientations(self.samp.healpix_order)
        self.sampling.set_translations(self.samp.offset_range, self.samp.offset_step)
        self.sampling.perturb(self.rng)
        from sta.parallel.refine import expectation_all

        sums = expectation_all(self)
        self.timings["expectation"] += time.time() - t0
        return sums

    def expect_particles(self, h, indices, sums, progress=None):
        """E-step of the particles ``indices`` of half ``h`` into ``sums``; returns results by index."""
        engine = self._engine(h)
        out = {}
        for k, i in enumerate(indices):
            sp = self.by_index[int(i)]
            st = {"angles": self.state.angles[i], "offset": self.state.offsets[i],
                  "prior_offset": self.state.prior_offsets[i]}
            if engine.local_sigma is not None and not self.samp.sigma_ang > 0:
                st["prior_angles"] = self.prior_angles[i]     # user --sigma_* stage: rlnAngle*Prior centres
            rng = np.random.default_rng([self.p.seed, self.iteration, int(i)])
            images = self._read(sp)
            res = engine.expect(sp, images, st, sums, rng)
            if int(i) in self.accuracy_particles:
                og = self.optics_index[sp.index]
                res.acc_rot, res.acc_trans = engine.accuracy(sp, res, self.models[h].sigma2[og],
                                                             np.random.default_rng([self.p.seed, int(i), 11]))
            out[int(i)] = res
            if progress is not None:
                progress(k + 1)
        return out

    def local_sigmas(self):
        """(σ_rot, σ_tilt, σ_psi) of the local search, or None for a global search.

        User sigmas (``--sigma_ang/rot/tilt/psi``) are used until auto-sampling switches to
        local searches, which then use 2× the oversampled angular step on all three.
        """
        if not self.samp.local:
            return None
        if self.samp.user_sigmas and self.samp.sigma_ang <= 0:
            return (self.p.sigma_rot, self.p.sigma_tilt, self.p.sigma_psi)
        s = self.samp.sigma_ang
        return (s, s, s)

    def new_sums(self, h):
        return self._engine(h).new_sums()

    def apply_results(self, results):
        for i, r in results.items():
            self.state.angles[i] = r.angles
            self.state.offsets[i] = r.offset
            self.state.pmax[i] = r.pmax
            self.state.nsig[i] = r.n_significant
            self.state.logl[i] = r.log_likelihood
            self.state.spread[i] = r.acc_spread
            self.state.acc_rot[i] = r.acc_rot
            self.state.acc_trans[i] = r.acc_trans

    # ------------------------------------------------------------------ M-step
    def _maximisation(self, sums, old):
        t0 = time.time()
        p = self.p
        group = self.sampling.group
        for s in sums:
            s.data, s.weight = fi.symmetrise(s.data, s.weight, group)
        if self.final:
            self._final_maps(sums)
        else:
            d = [s.data for s in sums]
            w = [s.weight for s in sums]
            if p.low_resol_join_halves > 0:
                r = int(np.ceil(self.ori * self.px / max(p.low_resol_join_halves, 1.0 / self.current_resolution)))
                d[0], w[0], d[1], w[1] = fi.join_low_resolution(d[0], w[0], d[1], w[1], r, p.pad)
            self.iter_unfil = ([fi.reconstruct(d[h], w[h], self.ori, p.pad)[0] for h in range(2)]
                               if self.solvent_fsc else None)
            self.fsc = self._gold_standard_fsc(d, w, self.iter_unfil, self.current_size)
            for h in range(2):
                vol, ssnr = fi.reconstruct(d[h], w[h], self.ori, p.pad, tau2_fudge=p.tau2_fudge, fsc=self.fsc)
                if p.flatten_solvent:
                    vol = vol * self.solvent_mask
                m = self.models[h]
                m.set_map(vol)
                m.ssnr, m.sigma2_rec, m.tau2, m.coverage = (ssnr.ssnr, ssnr.sigma2, ssnr.tau2,
                                                           ssnr.fourier_coverage)
                m.fsc = self.fsc
        for h, s in enumerate(sums):
            self._update_noise(self.models[h], s)
        self._update_schedule(old)
        self.timings["maximisation"] += time.time() - t0
        if self.writer is not None:
            t1 = time.time()
            self.writer(self)
            self.timings["writing"] += time.time() - t1

    @property
    def solvent_mask(self):
        if getattr(self, "_solvent_mask", None) is None:
            from sta.kernels.filters import raised_cosine_sphere

            r = self.p.particle_diameter / (2.0 * self.px)
            self._solvent_mask = raised_cosine_sphere((self.ori,) * 3, r, r + self.p.maskedge)
        return self._solvent_mask

    def set_solvent_mask(self, mask):
        self._solvent_mask = np.asarray(mask, dtype=np.float64)
        self._user_mask = True

    @property
    def solvent_fsc(self):
        """``--solvent_correct_fsc`` with a ``--solvent_mask`` (RELION ignores it without one)."""
        return self.p.solvent_correct_fsc and getattr(self, "_user_mask", False)

    def _solvent_corrected_fsc(self, unfil, current_size):
        """Masked, phase-randomisation corrected FSC of the unregularised half maps (zero beyond
        the current image size, as RELION)."""
        from sta.kernels.fsc import solvent_corrected_fsc

        log.info(" Calculating solvent-corrected gold-standard FSC ...")
        rng = np.random.default_rng([self.p.seed, self.iteration, 7])
        curve, _, shell = solvent_corrected_fsc(unfil[0], unfil[1], self.solvent_mask, rng)
        if shell < 0:
            log.warning(" WARNING: FSC curve between unmasked maps never drops below 0.8. Using unmasked FSC "
                        "as FSC_true...")
        else:
            log.info("  + randomize phases beyond: %g Angstroms", self.ori * self.px / shell)
        out = self._shell_curve(curve)
        out[current_size // 2 + 1:] = 0.0
        return out

    def _gold_standard_fsc(self, data, weight, unfil, current_size):
        """FSC between the half sets: of their downsampled averages, or with
        ``--solvent_correct_fsc`` masked and corrected from the unregularised maps ``unfil``."""
        if self.solvent_fsc:
            return self._solvent_corrected_fsc(unfil, current_size)
        avg = [fi.downsampled_average(d, w, self.p.pad) for d, w in zip(data, weight)]
        return self._shell_curve(fi.downsampled_fsc(avg[0], avg[1], self.ori))

    def _shell_curve(self, curve):
        """``curve`` on shells 0..ori/2 (cut or padded with zeros)."""
        out = np.zeros(self.ori // 2 + 1)
        out[:len(curve)] = curve[:self.ori // 2 + 1]
        return out

    def _final_maps(self, sums):
        p = self.p
        self.unfil = []
        for s in sums:
            vol, _ = fi.reconstruct(s.data, s.weight, self.ori, p.pad)
            self.unfil.append(vol)
        data = sums[0].data + sums[1].data
        weight = sums[0].weight + sums[1].weight
        self.fsc = self._gold_standard_fsc([s.data for s in sums], [s.weight for s in sums], self.unfil, self.ori)
        vol, ssnr = fi.reconstruct(data, weight, self.ori, p.pad, tau2_fudge=p.tau2_fudge, fsc=self.fsc,
                                   join_halves=True)
        for m in self.models:
            m.set_map(vol)
            m.ssnr, m.sigma2_rec, m.tau2, m.coverage = ssnr.ssnr, ssnr.sigma2, ssnr.tau2, ssnr.fourier_coverage
            m.fsc = self.fsc
        self.final_map = vol
        shell = resolution_shell(self.fsc)
        self.current_resolution = shell / (self.ori * self.px)
        log.info(" Auto-refine: + Final reconstruction from all particles is saved as: %s", "run_class001.mrc")
        log.info(" Auto-refine: + Final model parameters are stored in: %s", "run_model.star")
        log.info(" Auto-refine: + Final data parameters are stored in: %s", "run_data.star")
        masking = "already with masking" if self.solvent_fsc else "without masking"
        log.info(" Auto-refine: + Final resolution (%s) is: %g", masking, 1.0 / max(self.current_resolution, 1e-9))

    def _update_noise(self, m, s):
        p = self.p
        for og in range(len(m.sigma2)):
            if s.sumw[og] > 0:
                new = s.wsum_sigma2[og] / (2.0 * np.maximum(s.count[og], 1e-30))
                m.sigma2[og] = np.where(new > 0, np.maximum(new, 1e-15), m.sigma2[og])
        if s.offset_w > 0:
            m.sigma2_offset = max(s.offset_sum / (3.0 * s.offset_w), p.min_sigma2_offset)
        if s.pdf.sum() > 0:
            m.pdf_direction = np.maximum(s.pdf / s.pdf.sum(), 1e-12 / max(len(s.pdf), 1))
        if p.do_scale:
            ratios = {g: s.scale_xa[g] / s.scale_aa[g] for g in s.scale_xa if s.scale_aa[g] > 0}
            if ratios:
                med = float(np.median(list(ratios.values())))
                ratios = {g: float(np.clip(v, med / 5, 5 * med)) for g, v in ratios.items()}
                mean = np.mean(list(ratios.values()))
                m.scales.update({g: v / mean for g, v in ratios.items()})

    def _update_schedule(self, old):
        shell = resolution_shell(self.fsc)
        res = shell / (self.ori * self.px)
        if not self.final:
            self.current_resolution = res
            self.auto.update_resolution(res)
            moved = self.state.half >= 0
            a_old = euler_to_matrix(*old.angles[moved].T).reshape(-1, 3, 3)
            a_new = euler_to_matrix(*self.state.angles[moved].T).reshape(-1, 3, 3)
            dang = float(np.mean(symmetric_angular_distance(a_old, a_new, self.sampling.group))) if len(a_old) else 0.0
            doff = float(np.sqrt(np.sum((old.offsets[moved] - self.state.offsets[moved]) ** 2)
                                 / max(2 * moved.sum(), 1)))
            self.auto.update_changes(dang, doff, self.samp)
            ok = np.isfinite(self.state.acc_rot)
            if ok.any():
                self.auto.acc_rot = float(np.mean(self.state.acc_rot[ok]))
                self.auto.acc_trans = float(np.mean(self.state.acc_trans[ok]))
            log.info(" Auto-refine: Changes in angles= %g degrees; and in offsets= %g Angstroms (no gain for %d iter) ",
                     dang, doff, self.auto.iter_wo_large_changes)
            log.info(" Auto-refine: Estimated accuracy angles= %g degrees; offsets= %g Angstroms",
                     self.auto.acc_rot, self.auto.acc_trans)
            if self.iteration > 1 or self.p.firstiter_cc:
                if self.auto.update_sampling(self.samp):
                    self.sampling.set_orientations(self.samp.healpix_order)
                    for m in self.models:  # the direction prior restarts uniform at the new order (RELION)
                        m.pdf_direction = None
            ave_pmax = float(np.mean(self.state.pmax)) if len(self.state.pmax) else 0.0
            fsc_at_limit = float(self.fsc[min(shell, len(self.fsc) - 1)])
            s05 = resolution_shell(self.fsc, 0.5)
            self.current_size = current_image_size(self.ori, shell, ave_pmax, fsc_at_limit, self.p.incr_size,
                                                   shell, s05)

    def progress(self, total, label):
        return Progress(total, label, "particles", enabled=self.comm.Get_rank() == 0)
