"""Writes relion_refine's output files for an :class:`~sta.workflows.refine.loop.AutoRefinement`
(spec §6.9): per iteration ``<root>_itNNN_*`` and at the end ``<root>_*``."""

import os

import numpy as np
import pandas as pd

from sta.io.atomic import output_set, remove_stale
from sta.io.mrc import write_mrc
from sta.io.optimisation_set import OptimisationSet
from sta.io.particles import ParticleSet
from sta.io.refine_files import shell_table, write_model, write_optimiser, write_sampling


class RefineWriter:
    """Callable handed to the refinement loop; knows the output root and the inputs."""

    def __init__(self, root, particles, tomograms_file, trajectories_file, command_line, ios=None, argv=()):
        self.root = root
        self.argv = list(argv)
        self.particles = particles
        self.tomograms_file = tomograms_file or ""
        self.trajectories_file = trajectories_file or ""
        self.command_line = command_line
        self.ios = ios
        os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
        remove_stale(os.path.dirname(root) or ".")  # temporary files of a killed earlier run

    def prefix(self, run):
        return self.root if run.final else f"{self.root}_it{run.iteration:03d}"

    def __call__(self, run):
        """Write the iteration's (or the final) files as one set: they appear together, the
        optimiser file last, or not at all (:func:`sta.io.atomic.output_set`)."""
        pre = self.prefix(run)
        with output_set(last=[f"{pre}_optimiser.star"]):
            self._write_all(run, pre)

    def _write_all(self, run, pre):
        px = run.px
        st = run.state
        n_classes = st.n_classes
        if st.final:
            for k in range(n_classes):   # the joined map (every half's model holds it)
                write_mrc(f"{pre}_class{k + 1:03d}.mrc", st.models[0][k].volume, px)
            for h in range(2):           # the unregularised maps of class 1 (K = 1)
                write_mrc(f"{pre}_half{h + 1}_class001_unfil.mrc", run.unfil[h], px)
            self._model(run, 0, f"{pre}_model.star", [f"{pre}_class{k + 1:03d}.mrc" for k in range(n_classes)])
        else:
            for h in range(2):
                for k in range(n_classes):
                    write_mrc(f"{pre}_half{h + 1}_class{k + 1:03d}.mrc", st.models[h][k].volume, px)
                if run.solvent_fsc:          # class 1 (K = 1)
                    write_mrc(f"{pre}_half{h + 1}_class001_unfil.mrc", run.iter_unfil[h], px)
                self._model(run, h, f"{pre}_half{h + 1}_model.star",
                            [f"{pre}_half{h + 1}_class{k + 1:03d}.mrc" for k in range(n_classes)])
        self._data(run, f"{pre}_data.star")
        self._sampling(run, f"{pre}_sampling.star")
        self._optimiser(run, pre)
        self._optimisation_set(f"{pre}_optimisation_set.star", f"{pre}_data.star")
        if not st.final:
            from sta.workflows.refine.checkpoint import save

            save(run, f"{pre}_sta_state.npz", self.argv)

    # ------------------------------------------------------------------
    def _data(self, run, path):
        df = self.particles.df.copy()
        st = run.state.poses
        for j, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            df[label] = st.angles[:, j]
        for j, label in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
            df[label] = st.offsets[:, j]
        groups = {g: k + 1 for k, g in enumerate(run.groups)}
        df["rlnGroupNumber"] = [groups.get(t, 0) for t in self.particles.df["rlnTomoName"].astype(str).tolist()]
        df["rlnClassNumber"] = 1
        df["rlnNormCorrection"] = 1.0
        df["rlnLogLikeliContribution"] = st.logl
        df["rlnMaxValueProbDistribution"] = st.pmax
        df["rlnNrOfSignificantSamples"] = st.nsig.astype(int)
        df["rlnRandomSubset"] = st.half + 1
        out = ParticleSet(df, self.particles.optics, self.particles.general, path=path,
                          project_dir=self.particles.project_dir)
        out.write(path)

    def _model(self, run, h, path, map_names):
        """``<pre>_half<h>_model.star`` (or, final, ``<pre>_model.star``): half ``h``'s models, one
        class per map name; the per-particle figures are half ``h``'s (RELION: each half's own
        sums), or all particles' in the final joined model."""
        st = run.state
        models = st.models[h]
        m = models[0]
        ori, px = run.ori, run.px
        norm = float(ori) ** 2  # kernels use 1/sqrt(N) spectra; RELION 1/N
        n_groups = len(run.groups)
        poses = st.poses
        mine = np.ones(len(poses.half), dtype=bool) if st.final else poses.half == h
        samp = st.sampling
        general = {
            "rlnReferenceDimensionality": 3, "rlnDataDimensionality": run.sps[0].DATA_DIMENSIONALITY, "rlnOriginalImageSize": ori,
            "rlnCurrentResolution": 1.0 / max(st.current_resolution, 1e-9),
            "rlnCurrentImageSize": ori if st.final else st.current_size, "rlnPaddingFactor": float(run.p.pad),
            "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
            "rlnPixelSize": px, "rlnNrClasses": len(models), "rlnNrBodies": 1, "rlnNrGroups": n_groups,
            "rlnNrOpticsGroups": len(m.sigma2), "rlnTau2FudgeFactor": run.p.tau2_fudge,
            "rlnNormCorrectionAverage": 1.0, "rlnSigmaOffsetsAngst": float(np.sqrt(max(m.sigma2_offset, 0.0))),
            "rlnOrientationalPriorMode": int(samp.local),
            "rlnSigmaPriorRotAngle": samp.sigma_ang if samp.local else 0.0,
            "rlnSigmaPriorTiltAngle": samp.sigma_ang if samp.local else 0.0,
            "rlnSigmaPriorPsiAngle": samp.sigma_ang if samp.local else 0.0,
            "rlnLogLikelihood": float(np.sum(poses.logl[mine])),
            "rlnAveragePmax": float(np.mean(poses.pmax[mine])) if mine.any() else 0.0,
        }
        classes = pd.DataFrame({"rlnReferenceImage": list(map_names),
                                "rlnClassDistribution": [1.0 / len(models)] * len(models),
                                "rlnAccuracyRotations": [st.auto.acc_rot] * len(models),
                                "rlnAccuracyTranslationsAngst": [st.auto.acc_trans] * len(models),
                                "rlnEstimatedResolution": [1.0 / max(st.current_resolution, 1e-9)] * len(models),
                                "rlnOverallFourierCompleteness": [float(np.mean(c.coverage)) for c in models]})
        n = ori // 2 + 1

        def fit(a):
            out = np.zeros(n)
            a = np.asarray(a, dtype=float)[:n]
            out[:len(a)] = a
            return out

        spectra = [shell_table(ori, px, rlnSsnrMap=fit(c.ssnr), rlnGoldStandardFsc=fit(c.fsc),
                               rlnFourierCompleteness=fit(c.coverage), rlnReferenceSigma2=fit(c.sigma2_rec) / norm,
                               rlnReferenceTau2=fit(c.tau2) / norm) for c in models]
        counts = pd.Series(self.particles.df["rlnTomoName"].astype(str).tolist()).value_counts()
        groups = pd.DataFrame({"rlnGroupNumber": np.arange(1, n_groups + 1), "rlnGroupName": run.groups,
                               "rlnGroupNrParticles": [int(counts.get(g, 0)) for g in run.groups],
                               "rlnGroupScaleCorrection": [m.scales.get(g, 1.0) for g in run.groups]})
        optics = []
        for s2 in m.sigma2:
            tab = shell_table(ori, px, rlnSigma2Noise=fit(s2) / norm)
            optics.append(tab[tab["rlnSigma2Noise"] > 0][["rlnSpectralIndex", "rlnResolution", "rlnSigma2Noise"]])
        n_dirs = st.grid.n_directions
        pdfs = [c.pdf_direction if c.pdf_direction is not None else np.full(n_dirs, 1.0 / n_dirs) for c in models]
        write_model(path, general, classes, spectra, groups, optics, pdfs)

    def _sampling(self, run, path):
        s = run.state.grid
        general = {"rlnIs3DSampling": 1, "rlnIs3DTranslationalSampling": 1, "rlnHealpixOrder": s.healpix_order,
                   "rlnSymmetryGroup": s.group.name, "rlnTiltAngleLimit": s.limit_tilt, "rlnPsiStep": s.psi_step,
                   "rlnOffsetRange": s.offset_range, "rlnOffsetStep": s.offset_step, "rlnHelicalOffsetStep": -1.0,
                   "rlnSamplingPerturbInstance": s.random_perturbation,
                   "rlnSamplingPerturbFactor": s.perturbation_factor,
                   "rlnHealpixOrderOriginal": run.p.healpix_order,
                   "rlnPsiStepOriginal": 360.0 / (6 * 2 ** run.p.healpix_order),
                   "rlnOffsetRangeOriginal": run.p.offset_range_px * run.px,
                   "rlnOffsetStepOriginal": run.p.offset_step_px * run.px}
        write_sampling(path, general, (s.rot, s.tilt))

    def _optimiser(self, run, pre):
        a = run.state.auto
        values = {
            "rlnOutputRootName": self.root,
            "rlnModelStarFile": f"{pre}_model.star" if run.final else f"{pre}_half1_model.star",
            "rlnModelStarFile2": "" if run.final else f"{pre}_half2_model.star",
            "rlnExperimentalDataStarFile": f"{pre}_data.star",
            "rlnTomoTomogramsFile": self.tomograms_file, "rlnTomoTrajectoriesFile": self.trajectories_file,
            "rlnOrientSamplingStarFile": f"{pre}_sampling.star",
            "rlnCurrentIteration": -1 if run.final else run.iteration, "rlnNumberOfIterations": run.p.max_iter,
            "rlnDoSplitRandomHalves": 0 if run.final else 1,
            "rlnJoinHalvesUntilThisResolution": run.p.low_resol_join_halves,
            "rlnAdaptiveOversampleOrder": run.p.oversampling,
            "rlnAdaptiveOversampleFraction": run.p.adaptive_fraction, "rlnRandomSeed": run.p.seed,
            "rlnParticleDiameter": run.p.particle_diameter, "rlnWidthMaskEdge": run.p.maskedge,
            "rlnDoZeroMask": int(run.p.zero_mask), "rlnDoSolventFlattening": int(run.p.flatten_solvent),
            "rlnIncrementImageSize": run.p.incr_size, "rlnAutoLocalSearchesHealpixOrder": run.p.auto_local_order,
            "rlnNumberOfIterWithoutResolutionGain": a.iter_wo_resol_gain,
            "rlnBestResolutionThusFar": a.best_resolution,
            "rlnNumberOfIterWithoutChangingAssignments": a.iter_wo_large_changes,
            "rlnDoSkipAlign": int(run.p.skip_align), "rlnOverallAccuracyRotations": a.acc_rot,
            "rlnOverallAccuracyTranslationsAngst": a.acc_trans, "rlnChangesOptimalOrientations": a.changes_orient,
            "rlnChangesOptimalOffsets": a.changes_offset, "rlnChangesOptimalClasses": 0.0,
            "rlnSmallestChangesOrientations": a.smallest_changes_orient,
            "rlnSmallestChangesOffsets": a.smallest_changes_offset, "rlnSmallestChangesClasses": 0,
            "rlnHasConverged": int(run.final), "rlnDoCorrectScale": int(run.p.do_scale),
            "rlnTau2FudgeArg": run.p.tau2_fudge,
        }
        write_optimiser(f"{pre}_optimiser.star", values, self.command_line)

    def _optimisation_set(self, path, data_file):
        opt = OptimisationSet(particles=data_file, tomograms=self.tomograms_file or None,
                              trajectories=self.trajectories_file or None)
        if self.ios is not None:
            for field in ("ref1", "ref2", "mask", "fsc", "manifolds"):
                if getattr(self.ios, field, None):
                    setattr(opt, field, getattr(self.ios, field))
        opt.write(path, only_tomo_files=False)
