"""The auto-refine iteration loop (spec §6.5): E-step over both half sets, M-step, FSC,
sampling schedule, convergence and the final iteration joining the halves.

State: :class:`~sta.workflows.refine.state.RefineState` (models per half and class, poses,
sampling, grid, schedule).  Per iteration the loop hands an :class:`EStep` to
:func:`sta.parallel.refine.expectation`, which runs it on the ranks and threads and returns,
on the leader, each half's :class:`~sta.workflows.refine.state.HalfSetSums` and every
particle's result row; the leader's M-step (:class:`RegularisedReconstruction`, the part a
gradient optimiser replaces) makes the new models, and
:func:`sta.parallel.refine.publish` gives every follower its half's model and the poses.

Parallel layout (spec §6.8): rank 0 is the leader (metadata, pose bookkeeping, every output
file, no images); followers form two half-set groups (odd ranks half 1, even ranks half 2).
The halves meet only in what gold-standard refinement shares (:class:`SharedStatistics`).
With one rank, that rank does both halves in turn.
"""

import dataclasses
import logging
import time

import numpy as np

from sta.backend import set_fft_threads
from sta.errors import InputError
from sta.geometry.euler import angular_distance, euler_to_matrix
from sta.geometry.healpix import OrientationSampling
from sta.kernels import fourier_insert as fi
from sta.kernels import likelihood as lk
from sta.kernels.filters import lowpass_map
from sta.kernels.fsc import resolution_shell
from sta.parallel import refine as par
from sta.parallel.memory import fft_plans_not_kept
from sta.parallel.progress import Progress
from sta.workflows.refine.engine import HalfModel, HalfSums, RefineEngine, initial_sigma2
from sta.workflows.refine.schedule import AutoRefine, Sampling, coarse_image_size, current_image_size
from sta.workflows.refine.state import HalfSetSums, PoseState, RefineState, result_rows

log = logging.getLogger("sta.refine")

N_ACCURACY = 100    # particles of the accuracy estimate (RELION, tomography: 100)
MINRES_MAP = 5      # RELION --minres_map: the resolution shell never drops below it (spec §6.4)

#: test hook (tests/test_refine_halves.py), never set by a user option: ``f(iteration, SharedStatistics)
#: -> SharedStatistics`` sees, and may replace, what the two half sets share after each M-step
shared_statistics_hook = None

__all__ = ["AutoRefinement", "PoseState", "SharedStatistics", "assign_halves"]


@dataclasses.dataclass
class SharedStatistics:
    """What the half sets share in gold-standard refinement (RELION too): the FSC between them (→ τ²,
    resolution, image size) and the leader's pose-change bookkeeping over all particles."""

    fsc: np.ndarray
    angle_change: float     # mean angular change (deg)
    offset_change: float    # rms offset change (Å)


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


def resolution_shell_floor(fsc):
    """Resolution shell of the gold-standard FSC, never below ``--minres_map`` (RELION
    ``updateCurrentResolution``): a failed half set cannot collapse the image size."""
    return min(max(resolution_shell(fsc), MINRES_MAP), len(fsc) - 1)


def symmetric_angular_distance(a, b, group):
    """Smallest rotation angle (deg) between orientations ``a`` and ``b·R`` over the group's R."""
    best = None
    for r in group.matrices:
        d = angular_distance(a, b @ r)
        best = d if best is None else np.minimum(best, d)
    return best


class _MapOnlyModel(HalfModel):
    """A half model on the leader, which never projects: the map without the padded Fourier
    table (:class:`~sta.kernels.likelihood.SliceSampler`) that only the E-step needs."""

    def set_map(self, volume):
        self.volume = np.asarray(volume, dtype=np.float64)
        self.sampler = None


class EStep:
    """One iteration's E-step as :func:`sta.parallel.refine.expectation` runs it: the particles of
    each half, fresh zeroed sums, and per thread a :class:`HalfWorker`."""

    def __init__(self, run):
        self.run = run
        half = run.state.poses.half
        self.halves = [np.flatnonzero(half == h) for h in range(2)]

    def new_sums(self, h):
        return self.run.new_sums(h)

    def worker(self, h):
        return HalfWorker(self.run, h)


class HalfWorker:
    """E-step of one thread on particles of half ``h``: its own engine (reference slices shared
    by the particles of a batch are cached in it) and its own sums."""

    def __init__(self, run, h):
        self.run = run
        self.h = h
        self.engine = run.engine(h)
        self.sums = run.new_sums(h)

    def expect(self, indices, tick=None):
        """E-step of ``indices`` (particles of this half) into :attr:`sums`; result rows."""
        run, engine, h = self.run, self.engine, self.h
        st = run.state.poses
        sums = self.sums.classes[0]
        model = run.state.models[h][0]
        results = []
        for k, i in enumerate(indices):
            i = int(i)
            sp = run.by_index[i]
            state = {"angles": st.angles[i], "offset": st.offsets[i], "prior_offset": st.prior_offsets[i]}
            if engine.local_sigma is not None and not run.state.sampling.sigma_ang > 0:
                state["prior_angles"] = run.prior_angles[i]   # user --sigma_* stage: rlnAngle*Prior centres
            rng = np.random.default_rng([run.p.seed, run.state.iteration, i])
            res = engine.expect(sp, run.read(sp), state, sums, rng)
            if i in run.accuracy_particles:
                og = run.optics_index[sp.index]
                res.acc_rot, res.acc_trans = engine.accuracy(sp, res, model.sigma2[og],
                                                             np.random.default_rng([run.p.seed, i, 11]))
            results.append(res)
            if tick is not None:
                tick()
        return result_rows(indices, results)


class RegularisedReconstruction:
    """RELION's M-step for the maps: each half's map from its own sums by Fourier division with
    τ² from the gold-standard FSC, and in the final iteration one map from both halves.  This is
    the part a gradient (VDAM-style) optimiser replaces: the same sums in, the same models out."""

    def __init__(self, run):
        self.run = run

    def half_maps(self, data, weight, fsc):
        """``(volume, ssnr arrays)`` of each half (``data``/``weight`` per half of class 1)."""
        run, p = self.run, self.run.p
        out = []
        for h in range(2):
            vol, ssnr = fi.reconstruct(data[h], weight[h], run.ori, p.pad, tau2_fudge=p.tau2_fudge, fsc=fsc)
            if p.flatten_solvent:
                vol = vol * run.solvent_mask
            out.append((vol, ssnr))
        return out

    def joined_map(self, sums, fsc):
        """The final map from both halves' sums (added in place into half 1's: they are not used
        again, and a third full-size copy is not made)."""
        p = self.run.p
        sums[0].data += sums[1].data
        sums[0].weight += sums[1].weight
        return fi.reconstruct(sums[0].data, sums[0].weight, self.run.ori, p.pad, tau2_fudge=p.tau2_fudge, fsc=fsc,
                              join_halves=True)


class AutoRefinement:
    """State and loop of one ``sta_refine --auto_refine`` run (serial or MPI)."""

    def __init__(self, params, particles, stack_particles, references, pixel_size, comm=None, writer=None,
                 check_abort=None, resume=None, images=None, threads=1):
        from sta.parallel.mpi import SerialComm

        self.p = params
        self.particles = particles
        self.sps = stack_particles
        self.by_index = {sp.index: sp for sp in stack_particles}
        self.px = pixel_size
        self.ori = (resume.arrays["h0_volume"] if resume is not None else references[0]).shape[0]
        self.writer = writer
        self.check_abort = check_abort
        self.threads = max(1, int(threads))
        self.comm = comm if comm is not None else SerialComm()
        self.ranks = par.RefineRanks(self.comm)
        if images is None:
            from sta.parallel.image_store import ImageStore

            images = ImageStore(stack_particles, particles.resolve, self.comm)
        self.images = images
        self.rng = np.random.default_rng(params.seed)
        self.groups = sorted(set(sp.tomo for sp in stack_particles))
        self.optics_index = self._optics_index()
        self.n_optics = max(self.optics_index.values()) + 1
        self.mstep = RegularisedReconstruction(self)
        if resume is not None:
            references = [resume.arrays[f"h{h}_volume"] for h in range(2)]
        user = max(params.sigma_rot, params.sigma_tilt, params.sigma_psi) > 0
        sampling = Sampling(params.healpix_order, params.offset_range_px * pixel_size,
                            params.offset_step_px * pixel_size, params.oversampling, params.auto_local_order,
                            local=user, user_sigmas=user)
        sampling.start_local_if_needed()
        grid = OrientationSampling(params.healpix_order, -1.0, params.offset_range_px * pixel_size,
                                   params.offset_step_px * pixel_size, params.perturb, params.symmetry)
        ini = params.ini_high if params.ini_high > 0 else 4.0 * 2.0 * pixel_size
        with fft_plans_not_kept():   # one-off transforms of padded maps: nothing to keep
            models = [[self._model(references[h] if resume is not None else self._initial_reference(references[h]))]
                      if self.ranks.holds(h) else None for h in range(2)]
        self.state = RefineState(
            models=models,
            poses=self._initial_poses(), sampling=sampling, grid=grid, auto=AutoRefine(),
            fsc=np.zeros(self.ori // 2 + 1), current_size=current_image_size(self.ori, self.ori * pixel_size / ini,
                                                                              0.0, 0.0, params.incr_size),
            current_resolution=1.0 / ini)
        self.prior_angles = self._prior_angles()
        self.pick_accuracy_particles()
        self.timings = {"expectation": 0.0, "maximisation": 0.0, "writing": 0.0}
        if resume is not None:
            from sta.workflows.refine.checkpoint import restore

            restore(self, resume)
            self._decide_final()
            return
        self._start(stack_particles)

    def _model(self, volume):
        """A half model: with the E-step's projector where this rank computes, else the map only."""
        cls = _MapOnlyModel if self.ranks.is_leader else HalfModel
        return cls(volume, self.px, self.n_optics)

    # shorthands used by the files and the checkpoint
    @property
    def iteration(self):
        return self.state.iteration

    @property
    def final(self):
        return self.state.final

    def _start(self, stack_particles):
        """Initial noise spectra and greyscale of a new run, from half 1's first particles only
        (RELION: rank 1, the first follower of half 1, estimates σ² and broadcasts it), so that
        half 1 never sees half 2's images."""
        params = self.p
        sig = None
        first_reader = 0 if self.comm.Get_size() == 1 else 1
        if self.comm.Get_rank() == first_reader:
            sig = initial_sigma2(self._half1_first(stack_particles), self.read, 10, self.optics_index,
                                 self.n_optics, self.ori, ctf_noise=params.ctf_noise)
        if self.comm.Get_size() > 1:
            sig = self.comm.bcast(sig, root=first_reader)
        models = self.state.held_models()
        for m in models:
            m.sigma2 = [s.copy() for s in sig]
            m.sigma2_offset = params.offset_prior_sigma ** 2
            m.scales = {g: 1.0 for g in self.groups}
        scale = None
        if self.comm.Get_rank() == first_reader:
            scale = self._reference_scale()
        if self.comm.Get_size() > 1:
            scale = self.comm.bcast(scale, root=first_reader)
        log.info(" Reference greyscale matched to the data: scale factor %.5g", scale)
        with fft_plans_not_kept():
            for m in models:
                m.set_map(m.volume * scale)

    def _half1_first(self, stack_particles):
        """The particles of half 1 in table order, then those of optics groups that have no
        half-1 particle (their σ² is never used by half 1).  RELION reads its sorted order (half 1,
        then half 2) and so uses half 1 only when an optics group has at least 10 half-1 particles."""
        half = self.state.poses.half
        first = [sp for sp in stack_particles if half[sp.index] == 0]
        have = {self.optics_index[sp.index] for sp in first}
        return first + [sp for sp in stack_particles if half[sp.index] != 0 and self.optics_index[sp.index] not in have]

    # ------------------------------------------------------------------ set-up
    def pick_accuracy_particles(self):
        """RELION estimates the accuracy from the first 100 particles of its sorted order (half 1
        first) on rank 1 with half 1's model: the first 100 of half 1."""
        self.accuracy_particles = set(np.flatnonzero(self.state.poses.half == 0)[:N_ACCURACY].tolist())

    def _optics_index(self):
        df = self.particles.df
        groups = df["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in df.columns else np.ones(self.particles.n)
        uniq = {g: k for k, g in enumerate(sorted(set(groups.tolist())))}
        return {i: uniq[groups[i]] for i in range(self.particles.n)}

    def _initial_reference(self, ref):
        if self.p.ini_high > 0:
            return lowpass_map(np.asarray(ref, dtype=np.float64), self.p.ini_high, self.px)
        return np.asarray(ref, dtype=np.float64)

    def _initial_poses(self):
        n = self.particles.n
        df = self.particles.df
        prior = np.zeros((n, 3))
        labels = ("rlnOriginXPriorAngst", "rlnOriginYPriorAngst", "rlnOriginZPriorAngst")
        for j, label in enumerate(labels):
            if label in df.columns:
                prior[:, j] = df[label].to_numpy(dtype=float)
        half = assign_halves(self.particles, self.p.seed)
        for h in range(2):
            if not np.any(half == h):
                raise InputError(f"{self.particles.path}: table particles: half set {h + 1} has no particles "
                                 "(column rlnRandomSubset, or too few particles): gold-standard refinement needs both")
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
        the box) of up to ``n_max`` particles of half 1 (sta's own step; half 2 must not reach
        half 1's model)."""
        from sta.kernels.fourier import centred_rfft
        from sta.kernels.grid import freq_radius

        res = self.p.ini_high if self.p.ini_high > 0 else 4.0 * 2.0 * self.px
        rmax = max(self.ori * self.px / res, 2.0)
        num = den = 0.0
        poses = self.state.poses
        half1 = [sp for sp in self.sps if poses.half[sp.index] == 0] or self.sps
        for sp in half1[:n_max]:
            ndim = 3 if sp.volume else 2
            x = centred_rfft(self.read(sp).astype(np.float64), ndim=ndim)
            a = euler_to_matrix(*poses.angles[sp.index]).reshape(1, 3, 3)
            fctf = sp.fctf() if self.p.do_ctf else 1.0
            kz = lk.plane_frequencies(self.ori) if sp.volume else None
            r = freq_radius((self.ori,) * ndim)
            h = int(poses.half[sp.index])
            pred = fctf * self.state.models[h][0].sampler.project(a, sp.aproj, self.ori, kz=kz)[0]
            band = np.broadcast_to((r >= 1) & (r <= rmax), pred.shape)
            num += float(np.real(np.vdot(pred[band], x[band])))
            den += float(np.vdot(pred[band], pred[band]).real)
        if not den > 0 or not num > 0:
            raise InputError("the reference does not correlate with the particles at their input poses "
                             "(empty reference or wrong hand/convention?)")
        return num / den

    def read(self, sp):
        return self.images.read(sp)

    # ------------------------------------------------------------------ loop
    def run(self):
        t0 = time.time()
        st = self.state
        leader = self.ranks.is_leader or self.ranks.serial
        while True:
            st.iteration += 1
            if self.check_abort and leader:
                self.check_abort()
            if leader:
                self._log_iteration_header()
            old = st.poses.copy()
            sums, rows = self._expectation()
            last = st.final
            if self.check_abort and leader:   # a flag raised during the E-step: this iteration is not written
                self.check_abort()
            if leader:
                st.poses.apply_rows(rows)
                self._maximisation(sums, old)
                if not last:
                    self._decide_final()
            del sums
            if last:   # nothing follows the final iteration: no model to send
                break
            par.publish(self.ranks, self.model_message, self.receive_model, self.pose_arrays())
        self.ranks.free()
        self.timings["total"] = time.time() - t0
        return self

    def _decide_final(self):
        """After an M-step (or on --continue): is the next iteration the last one?"""
        st = self.state
        if st.final:
            return
        if st.iteration >= self.p.max_iter:
            log.info(" Auto-refine: reached --iter %d; the next iteration is the last", self.p.max_iter)
            st.final = True
        elif st.auto.check_convergence():
            log.info(" Auto-refine: Refinement has converged, entering last iteration where two halves "
                     "will be combined...")
            log.info(" Auto-refine: The last iteration will use data to Nyquist frequency, which may "
                     "take more CPU and RAM.")
            st.final = True

    def _log_iteration_header(self):
        st = self.state
        log.info(" Auto-refine: Iteration= %d", st.iteration)
        log.info(" Auto-refine: Resolution= %g (no gain for %d iter) ", 1.0 / max(st.current_resolution, 1e-9),
                 st.auto.iter_wo_resol_gain)
        log.info(" Auto-refine: Angular step= %g degrees; local searches= %s", st.sampling.step(),
                 "true" if st.sampling.local else "false")
        log.info(" Auto-refine: Offset search range= %g Angstroms; offset step= %g Angstroms",
                 st.grid.offset_range, st.grid.offset_step / 2 ** self.p.oversampling)

    # ------------------------------------------------------------------ model exchange (sta.parallel.refine)
    def pose_arrays(self):
        """The pose arrays the leader broadcasts after the M-step (updated in place on followers)."""
        st = self.state.poses
        return [getattr(st, name) for name in PoseState.UPDATED]

    def model_message(self, h):
        """Leader: ``(meta, arrays)`` of half ``h``'s models and the schedule, for its followers."""
        st = self.state
        arrays, meta = [], {"classes": []}
        for m in st.models[h]:
            arrays += [m.volume, np.stack(m.sigma2), m.ssnr]
            if m.pdf_direction is not None:
                arrays.append(m.pdf_direction)
            meta["classes"].append({"sigma2_offset": m.sigma2_offset, "scales": m.scales,
                                    "pdf": m.pdf_direction is not None})
        arrays.append(st.fsc)
        meta.update(current_size=st.current_size, current_resolution=st.current_resolution, sampling=st.sampling,
                    auto=st.auto, final=st.final)
        return meta, arrays

    def receive_model(self, h, meta, arrays):
        """Follower of half ``h``: take the leader's :meth:`model_message`."""
        st = self.state
        arrays = list(arrays)
        for m, c in zip(st.models[h], meta["classes"]):
            with fft_plans_not_kept():   # the padded transform of the map: built once per iteration
                m.set_map(arrays.pop(0))
            m.sigma2 = list(arrays.pop(0))
            m.ssnr = arrays.pop(0)
            m.pdf_direction = arrays.pop(0) if c["pdf"] else None
            m.sigma2_offset = c["sigma2_offset"]
            m.scales = c["scales"]
        st.fsc = arrays.pop(0)
        st.current_size = meta["current_size"]
        st.current_resolution = meta["current_resolution"]
        st.sampling = meta["sampling"]
        st.auto = meta["auto"]
        st.final = meta["final"]

    # ------------------------------------------------------------------ E-step
    def engine(self, h):
        """A :class:`RefineEngine` of half ``h`` at this iteration's sampling and image sizes."""
        st = self.state
        cs = self.ori if st.final else st.current_size
        coarse = coarse_image_size(self.ori, self.px, st.sampling.step(False), self.p.particle_diameter, cs)
        coarse = max(coarse + coarse % 2, 8)
        return RefineEngine(self.p, st.models[h][0], st.grid, cs, min(coarse, cs), self.groups,
                            self.optics_index, st.iteration, local_sigma=self.local_sigmas())

    def new_sums(self, h):
        """Zeroed sums of half ``h`` for this iteration (one per class)."""
        st = self.state
        cs = self.ori if st.final else st.current_size
        return HalfSetSums([HalfSums(self.ori, self.p.pad, cs, self.n_optics, st.grid.n_directions, self.groups)
                            for _ in range(st.n_classes)])

    def _expectation(self):
        t0 = time.time()
        st = self.state
        st.grid.set_orientations(st.sampling.healpix_order)
        st.grid.set_translations(st.sampling.offset_range, st.sampling.offset_step)
        st.grid.perturb(self.rng)
        set_fft_threads(1)    # one FFT thread per E-step thread
        try:
            sums, rows = par.expectation(self.ranks, EStep(self), self.threads, self.check_abort, self.progress)
        finally:
            set_fft_threads(self.threads)   # the leader's M-step FFTs use the rank's --j threads
        self.timings["expectation"] += time.time() - t0
        return sums, rows

    def local_sigmas(self):
        """(σ_rot, σ_tilt, σ_psi) of the local search, or None for a global search.

        User sigmas (``--sigma_ang/rot/tilt/psi``) are used until auto-sampling switches to
        local searches, which then use 2× the oversampled angular step on all three.
        """
        s = self.state.sampling
        if not s.local:
            return None
        if s.user_sigmas and s.sigma_ang <= 0:
            return (self.p.sigma_rot, self.p.sigma_tilt, self.p.sigma_psi)
        return (s.sigma_ang, s.sigma_ang, s.sigma_ang)

    # ------------------------------------------------------------------ M-step (leader)
    def _maximisation(self, sums, old):
        """``sums``: each half's :class:`HalfSetSums` (class 1 used: K = 1).  pyFFTW keeps no plan
        (nor the arrays it holds) of the M-step's one-off transforms of padded grids."""
        with fft_plans_not_kept():
            self._maximise(sums, old)

    def _maximise(self, sums, old):
        t0 = time.time()
        p, st = self.p, self.state
        sums = [s.classes[0] for s in sums]
        group = st.grid.group
        for s in sums:
            s.data, s.weight = fi.symmetrise(s.data, s.weight, group)
        if st.final:
            self._final_maps(sums)
        else:
            d = [s.data for s in sums]
            w = [s.weight for s in sums]
            if p.low_resol_join_halves > 0:
                r = int(np.ceil(self.ori * self.px / max(p.low_resol_join_halves, 1.0 / st.current_resolution)))
                d[0], w[0], d[1], w[1] = fi.join_low_resolution(d[0], w[0], d[1], w[1], r, p.pad)
            self.iter_unfil = ([fi.reconstruct(d[h], w[h], self.ori, p.pad)[0] for h in range(2)]
                               if self.solvent_fsc else None)
            fsc = self._gold_standard_fsc(d, w, self.iter_unfil, st.current_size)
            shared = self._shared_statistics(fsc, old)
            st.fsc = shared.fsc
            for h, (vol, ssnr) in enumerate(self.mstep.half_maps(d, w, st.fsc)):
                m = st.models[h][0]
                m.set_map(vol)
                m.ssnr, m.sigma2_rec, m.tau2, m.coverage = (ssnr.ssnr, ssnr.sigma2, ssnr.tau2,
                                                           ssnr.fourier_coverage)
                m.fsc = st.fsc
        for h, s in enumerate(sums):
            self._update_noise(st.models[h][0], s)
        if not st.final:
            self._update_schedule(shared)
        self.timings["maximisation"] += time.time() - t0
        if self.writer is not None:
            t1 = time.time()
            self.writer(self)
            self.timings["writing"] += time.time() - t1

    def _shared_statistics(self, fsc, old):
        """The between-halves statistics of this iteration (through the test hook, if set)."""
        st = self.state
        poses = st.poses
        moved = poses.half >= 0
        a_old = euler_to_matrix(*old.angles[moved].T).reshape(-1, 3, 3)
        a_new = euler_to_matrix(*poses.angles[moved].T).reshape(-1, 3, 3)
        dang = float(np.mean(symmetric_angular_distance(a_old, a_new, st.grid.group))) if len(a_old) else 0.0
        doff = float(np.sqrt(np.sum((old.offsets[moved] - poses.offsets[moved]) ** 2)
                             / max(2 * moved.sum(), 1)))
        shared = SharedStatistics(fsc=fsc, angle_change=dang, offset_change=doff)
        if shared_statistics_hook is not None:
            shared = shared_statistics_hook(st.iteration, shared)
        return shared

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
        rng = np.random.default_rng([self.p.seed, self.state.iteration, 7])
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
        p, st = self.p, self.state
        self.unfil = []
        for s in sums:
            vol, _ = fi.reconstruct(s.data, s.weight, self.ori, p.pad)
            self.unfil.append(vol)
        st.fsc = self._gold_standard_fsc([s.data for s in sums], [s.weight for s in sums], self.unfil, self.ori)
        vol, ssnr = self.mstep.joined_map(sums, st.fsc)
        for m in st.held_models():
            m.set_map(vol)
            m.ssnr, m.sigma2_rec, m.tau2, m.coverage = ssnr.ssnr, ssnr.sigma2, ssnr.tau2, ssnr.fourier_coverage
            m.fsc = st.fsc
        self.final_map = vol
        shell = resolution_shell_floor(st.fsc)
        st.current_resolution = shell / (self.ori * self.px)
        log.info(" Auto-refine: + Final reconstruction from all particles is saved as: %s", "run_class001.mrc")
        log.info(" Auto-refine: + Final model parameters are stored in: %s", "run_model.star")
        log.info(" Auto-refine: + Final data parameters are stored in: %s", "run_data.star")
        masking = "already with masking" if self.solvent_fsc else "without masking"
        log.info(" Auto-refine: + Final resolution (%s) is: %g", masking, 1.0 / max(st.current_resolution, 1e-9))

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

    def _update_schedule(self, shared):
        """Resolution, auto-sampling and image size after a (non-final) M-step.  Besides the shared
        statistics, only half 1 enters (RELION: rank 1's accuracy estimate and ave_Pmax)."""
        st = self.state
        shell = resolution_shell_floor(st.fsc)
        res = shell / (self.ori * self.px)
        st.current_resolution = res
        st.auto.update_resolution(res)
        st.auto.update_changes(shared.angle_change, shared.offset_change, st.sampling)
        poses = st.poses
        half1 = poses.half == 0
        ok = half1 & np.isfinite(poses.acc_rot)
        if ok.any():
            st.auto.acc_rot = float(np.mean(poses.acc_rot[ok]))
            st.auto.acc_trans = float(np.mean(poses.acc_trans[ok]))
        log.info(" Auto-refine: Changes in angles= %g degrees; and in offsets= %g Angstroms (no gain for %d iter) ",
                 shared.angle_change, shared.offset_change, st.auto.iter_wo_large_changes)
        log.info(" Auto-refine: Estimated accuracy angles= %g degrees; offsets= %g Angstroms",
                 st.auto.acc_rot, st.auto.acc_trans)
        if st.iteration > 1 or self.p.firstiter_cc:
            if st.auto.update_sampling(st.sampling):
                st.grid.set_orientations(st.sampling.healpix_order)
                for m in st.held_models():  # the direction prior restarts uniform at the new order (RELION)
                    m.pdf_direction = None
        ave_pmax = float(np.mean(poses.pmax[half1])) if half1.any() else 0.0
        fsc_at_limit = float(st.fsc[min(shell, len(st.fsc) - 1)])
        s05 = resolution_shell(st.fsc, 0.5)
        st.current_size = current_image_size(self.ori, shell, ave_pmax, fsc_at_limit, self.p.incr_size, shell, s05)

    def progress(self, total, label):
        return Progress(total, label, "particles", enabled=self.comm.Get_rank() == 0)
