"""relion_refine output STAR files (spec §6.9): model, optimiser, sampling, data and
optimisation set, with RELION's table names and labels.

The writers take plain Python values (dicts, arrays); the refinement workflow owns the
state.  Every file is written atomically.
"""

import numpy as np
import pandas as pd

from sta import __version__
from sta.io.star import list_table, loop_table, write_star

# optimiser_general labels in RELION's order (spec §6.9); values not tracked by sta are
# written with RELION's defaults for an auto-refine run.
OPTIMISER_DEFAULTS = [
    ("rlnOutputRootName", ""), ("rlnModelStarFile", ""), ("rlnModelStarFile2", ""),
    ("rlnExperimentalDataStarFile", ""), ("rlnTomoTomogramsFile", ""), ("rlnTomoTrajectoriesFile", ""),
    ("rlnOrientSamplingStarFile", ""), ("rlnCurrentIteration", 0), ("rlnNumberOfIterations", 999),
    ("rlnDoSplitRandomHalves", 1), ("rlnJoinHalvesUntilThisResolution", -1.0), ("rlnAdaptiveOversampleOrder", 1),
    ("rlnAdaptiveOversampleFraction", 0.999), ("rlnRandomSeed", 0), ("rlnParticleDiameter", -1.0),
    ("rlnWidthMaskEdge", 5), ("rlnDoZeroMask", 0), ("rlnDoSolventFlattening", 0), ("rlnDoSolventFscCorrection", 0),
    ("rlnSolventMaskName", "None"), ("rlnSolventMask2Name", "None"), ("rlnBodyStarFile", "None"),
    ("rlnTauSpectrumName", "None"), ("rlnMaximumCoarseImageSize", -1), ("rlnHighresLimitExpectation", -1.0),
    ("rlnLowresLimitExpectation", -1.0), ("rlnIncrementImageSize", 10), ("rlnDoMapEstimation", 1),
    ("rlnDoFastSubsetOptimisation", 0), ("rlnDoExternalReconstruct", 0), ("rlnDoBlush", 0),
    ("rlnBlushNoSpectralTrailing", 0), ("rlnDoGradientRefine", 0), ("rlnDoStochasticGradientDescent", 0),
    ("rlnGradEmIters", 0), ("rlnGradHasConverged", 0), ("rlnGradCurrentStepsize", 0.0), ("rlnGradSubsetOrder", 0),
    ("rlnGradSuspendFinerSamplingIter", -1), ("rlnGradSuspendLocalSamplingIter", -1),
    ("rlnSgdInitialIterationsFraction", 0.3), ("rlnSgdFinalIterationsFraction", 0.2),
    ("rlnSgdMinimumResolution", 20.0), ("rlnSgdInitialResolution", -1.0), ("rlnSgdFinalResolution", -1.0),
    ("rlnSgdInitialSubsetSize", -1), ("rlnSgdFinalSubsetSize", -1), ("rlnSgdMuFactor", 0.0), ("rlnSgdSkipAnneal", 0),
    ("rlnSgdClassInactivityThreshold", 0.0), ("rlnSgdSubsetSize", -1), ("rlnSgdWriteEverySubset", 10),
    ("rlnSgdStepsize", -1.0), ("rlnSgdStepsizeScheme", ""), ("rlnTau2FudgeScheme", ""), ("rlnTau2FudgeArg", -1.0),
    ("rlnMaximumSignificantPoses", -1), ("rlnDoAutoRefine", 1), ("rlnDoAutoSampling", 1),
    ("rlnAutoLocalSearchesHealpixOrder", 4), ("rlnNumberOfIterWithoutResolutionGain", 0),
    ("rlnBestResolutionThusFar", 0.0), ("rlnNumberOfIterWithoutChangingAssignments", 0), ("rlnDoSkipAlign", 0),
    ("rlnDoSkipRotate", 0), ("rlnOverallAccuracyRotations", 999.0), ("rlnOverallAccuracyTranslationsAngst", 999.0),
    ("rlnChangesOptimalOrientations", 999.0), ("rlnChangesOptimalOffsets", 999.0), ("rlnChangesOptimalClasses", 999.0),
    ("rlnSmallestChangesOrientations", 999.0), ("rlnSmallestChangesOffsets", 999.0),
    ("rlnSmallestChangesClasses", 999999), ("rlnLocalSymmetryFile", "None"), ("rlnDoHelicalRefine", 0),
    ("rlnIgnoreHelicalSymmetry", 0), ("rlnFourierMask", "None"), ("rlnHelicalTwistInitial", 0.0),
    ("rlnHelicalRiseInitial", 0.0), ("rlnHelicalCentralProportion", 0.3), ("rlnNrHelicalNStart", 1),
    ("rlnHelicalMaskTubeInnerDiameter", -1.0), ("rlnHelicalMaskTubeOuterDiameter", -1.0),
    ("rlnHelicalSymmetryLocalRefinement", 0), ("rlnHelicalSigmaDistance", -1.0), ("rlnHelicalKeepTiltPriorFixed", 0),
    ("rlnHasConverged", 0), ("rlnHasHighFscAtResolLimit", 0), ("rlnHasLargeSizeIncreaseIterationsAgo", 0),
    ("rlnDoCorrectNorm", 0), ("rlnDoCorrectScale", 1), ("rlnDoCorrectCtf", 1), ("rlnDoCenterClasses", 0),
    ("rlnDoIgnoreCtfUntilFirstPeak", 0), ("rlnCtfDataArePhaseFlipped", 0), ("rlnDoOnlyFlipCtfPhases", 0),
    ("rlnRefsAreCtfCorrected", 1), ("rlnFixSigmaNoiseEstimates", 0), ("rlnFixSigmaOffsetEstimates", 0),
    ("rlnMaxNumberOfPooledParticles", 1), ("rlnOffsetRangeX", -1.0), ("rlnOffsetRangeY", -1.0),
    ("rlnOffsetRangeZ", -1.0),
]


def write_optimiser(path, values, command_line):
    """``_optimiser.star``: two comment lines then ``optimiser_general`` in RELION's label order."""
    known = dict(OPTIMISER_DEFAULTS)
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown optimiser labels {sorted(unknown)}")
    row = {label: values.get(label, default) for label, default in OPTIMISER_DEFAULTS}
    if not row["rlnModelStarFile2"]:
        del row["rlnModelStarFile2"]
    write_star(path, [list_table("optimiser_general", row)],
               comments=[f"# RELION optimiser; version 5.0-compatible (sta {__version__})", f"# {command_line}"])


def write_sampling(path, general, directions):
    """``_sampling.star``: ``sampling_general`` and ``sampling_directions`` (rot, tilt)."""
    rot, tilt = directions
    write_star(path, [list_table("sampling_general", general),
                      loop_table("sampling_directions", pd.DataFrame({"rlnAngleRot": np.asarray(rot, float),
                                                                      "rlnAngleTilt": np.asarray(tilt, float)}))])


def write_model(path, general, classes, spectra, groups, optics_sigma2, pdf_orient):
    """``_model.star`` with RELION's six tables.

    Parameters
    ----------
    general : dict
        ``model_general`` values (RELION's labels).
    classes : pandas.DataFrame
        ``model_classes`` rows.
    spectra : list of pandas.DataFrame
        ``model_class_<k>`` per class (per-shell rows).
    groups : pandas.DataFrame
        ``model_groups``.
    optics_sigma2 : list of pandas.DataFrame
        ``model_optics_group_<g>`` per optics group (only shells with σ² > 0).
    pdf_orient : list of array
        ``model_pdf_orient_class_<k>`` (rlnOrientationDistribution per direction).
    """
    tables = [list_table("model_general", general), loop_table("model_classes", classes)]
    tables += [loop_table(f"model_class_{k + 1}", df) for k, df in enumerate(spectra)]
    tables.append(loop_table("model_groups", groups))
    tables += [loop_table(f"model_optics_group_{g + 1}", df) for g, df in enumerate(optics_sigma2)]
    tables += [loop_table(f"model_pdf_orient_class_{k + 1}",
                          pd.DataFrame({"rlnOrientationDistribution": np.asarray(p, float)}))
               for k, p in enumerate(pdf_orient)]
    write_star(path, tables)


def shell_table(box, pixel_size, **columns):
    """Per-shell table with ``rlnSpectralIndex``, ``rlnResolution`` (1/Å) and
    ``rlnAngstromResolution`` (999 for shell 0) followed by ``columns``."""
    n = box // 2 + 1
    idx = np.arange(n)
    res = idx / (box * pixel_size)
    ang = np.where(idx > 0, box * pixel_size / np.maximum(idx, 1), 999.0)
    df = pd.DataFrame({"rlnSpectralIndex": idx, "rlnResolution": res, "rlnAngstromResolution": ang})
    for label, values in columns.items():
        df[label] = np.asarray(values)[:n]
    return df
