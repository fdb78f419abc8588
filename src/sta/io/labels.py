"""Registry of RELION STAR labels and their value types.

The types decide how a column is parsed on read and formatted on write (spec §0):

========================  ===========================================  ==========================
type                      parsed as                                    written as
========================  ===========================================  ==========================
:data:`FLOAT`             ``float64``                                  ``%12.6f`` / ``%12.6e`` ...
:data:`INT`               ``int64``                                    ``%12d``
:data:`BOOL`              ``int64`` holding 0/1                        ``%12d``
:data:`STR`               Python ``str`` objects                       quoted when needed
:data:`INT_VECTOR`        kept as the original text, e.g. ``[1,1,0]``  ``[v0,v1,...]``
:data:`FLOAT_VECTOR`      kept as the original text                    ``[v0,v1,...]``
========================  ===========================================  ==========================

The RELION names and types are those of ``src/metadata_label.h`` in RELION 5 (snapshot
73f0a3c0), listed here as data.  A few labels written by other RELION versions or tools
that are seen in real files are added in :data:`_EXTRA`.  Labels that are not registered
are "unknown": :func:`sta.io.star.read_star` infers their type from the values (int if all
values are integers, else float if all are numbers, else str).
"""

INT = "int"
FLOAT = "float"
BOOL = "bool"
STR = "str"
INT_VECTOR = "int_vector"
FLOAT_VECTOR = "float_vector"

#: every label type, in no particular order
TYPES = (INT, FLOAT, BOOL, STR, INT_VECTOR, FLOAT_VECTOR)
#: types whose columns are numeric arrays after reading
NUMERIC_TYPES = (INT, FLOAT, BOOL)
#: types whose values are ``[a,b,...]`` vectors
VECTOR_TYPES = (INT_VECTOR, FLOAT_VECTOR)

_RELION_FLOAT = """
    rlnAccumMotionEarly rlnAccumMotionLate rlnAccumMotionTotal rlnAccuracyRotations
    rlnAccuracyTranslations rlnAccuracyTranslationsAngst rlnAdaptiveOversampleFraction
    rlnAmplitudeContrast rlnAmplitudeCorrelationMaskedMaps
    rlnAmplitudeCorrelationUnmaskedMaps rlnAnglePsi rlnAnglePsiFlipRatio rlnAnglePsiPrior
    rlnAngleRot rlnAngleRotFlipRatio rlnAngleRotPrior rlnAngleTilt rlnAngleTiltPrior
    rlnAngstromResolution rlnAreTomoTiltAxisScore rlnAreTomoTiltangleOffset
    rlnAutopickFigureOfMerit rlnAvailableMemory rlnAveragePmax rlnAverageValue rlnBeamTiltX
    rlnBeamTiltY rlnBestResolutionThusFar rlnBfactorUsedForSharpening
    rlnBodyRotateDirectionX rlnBodyRotateDirectionY rlnBodyRotateDirectionZ
    rlnBodySigmaAngles rlnBodySigmaOffset rlnBodySigmaOffsetAngst rlnBodySigmaPsi
    rlnBodySigmaRot rlnBodySigmaTilt rlnCenteredCoordinateXAngst rlnCenteredCoordinateYAngst
    rlnCenteredCoordinateZAngst rlnChangesOptimalClasses rlnChangesOptimalOffsets
    rlnChangesOptimalOrientations rlnChromaticAberration rlnCircleMaskedKurt
    rlnCircleMaskedMean rlnCircleMaskedSkew rlnCircleMaskedStddev rlnClassDistribution
    rlnClassPriorOffsetX rlnClassPriorOffsetY rlnClassScore rlnConvergenceCone
    rlnCoordinateX rlnCoordinateY rlnCoordinateZ
    rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps
    rlnCorrelationFitGuinierPlot rlnCtfAstigmatism rlnCtfBfactor
    rlnCtfBfactorPerElectronDose rlnCtfFigureOfMerit rlnCtfIceRingDensity
    rlnCtfMaxResolution rlnCtfScalefactor rlnCtfValidationScore rlnCtfValue
    rlnCurrentResolution rlnDefocusAngle rlnDefocusU rlnDefocusV rlnDetectorPixelSize
    rlnDiff2RandomHalves rlnDifferentialPhaseResidualMaskedMaps
    rlnDifferentialPhaseResidualUnmaskedMaps rlnEdgeSignal rlnEnergyLoss
    rlnEstimatedResolution rlnFftKurt rlnFftMean rlnFftSkew rlnFftStddev rlnFinalResolution
    rlnFittedInterceptGuinierPlot rlnFittedSlopeGuinierPlot rlnFourierCompleteness
    rlnFourierShellCorrelation rlnFourierShellCorrelationCorrected
    rlnFourierShellCorrelationMaskedMaps rlnFourierShellCorrelationParticleMaskFraction
    rlnFourierShellCorrelationParticleMolWeight rlnFourierShellCorrelationUnmaskedMaps
    rlnGoldStandardFsc rlnGradCurrentStepsize rlnGroupScaleCorrection
    rlnHelicalCentralProportion rlnHelicalMaskTubeInnerDiameter
    rlnHelicalMaskTubeOuterDiameter rlnHelicalOffsetStep rlnHelicalRise
    rlnHelicalRiseInitial rlnHelicalRiseInitialStep rlnHelicalRiseMax rlnHelicalRiseMin
    rlnHelicalSigmaDistance rlnHelicalTrackLength rlnHelicalTrackLengthAngst
    rlnHelicalTubePitch rlnHelicalTwist rlnHelicalTwistInitial rlnHelicalTwistInitialStep
    rlnHelicalTwistMax rlnHelicalTwistMin rlnHighresLimitExpectation rlnHighresLimitSGD
    rlnIMODLeaveOutError rlnIMODResidualErrorMean rlnIMODResidualErrorStddev
    rlnImagePixelSize rlnImageWeight rlnInnerCircleKurt rlnInnerCircleMean
    rlnInnerCircleSkew rlnInnerCircleStddev rlnJobOptionSliderMax rlnJobOptionSliderMin
    rlnJobOptionSliderStep rlnJobScore rlnJoinHalvesUntilThisResolution
    rlnKullbackLeiblerDivergence rlnKullbackLeibnerDivergence rlnKurtosisExcessValue
    rlnLensStability rlnLogAmplitudesIntercept rlnLogAmplitudesMTFCorrected
    rlnLogAmplitudesOriginal rlnLogAmplitudesSharpened rlnLogAmplitudesWeighted
    rlnLogLikeliContribution rlnLogLikelihood rlnLongitudinalDisplacement
    rlnLowpassFilteredImageMax rlnLowpassFilteredImageMean rlnLowpassFilteredImageMin
    rlnLowpassFilteredImageStddev rlnLowresLimitExpectation rlnMagMat00 rlnMagMat01
    rlnMagMat10 rlnMagMat11 rlnMagnification rlnMagnificationCorrection
    rlnMagnificationSearchRange rlnMagnificationSearchStep rlnMatrix_1_1 rlnMatrix_1_2
    rlnMatrix_1_3 rlnMatrix_2_1 rlnMatrix_2_2 rlnMatrix_2_3 rlnMatrix_3_1 rlnMatrix_3_2
    rlnMatrix_3_3 rlnMaxValueProbDistribution rlnMaximumValue rlnMicrographBinning
    rlnMicrographDoseRate rlnMicrographIceThickness rlnMicrographOriginalPixelSize
    rlnMicrographPixelSize rlnMicrographPreExposure rlnMicrographShiftX rlnMicrographShiftY
    rlnMicrographTiltAngle rlnMicrographTiltAxisDirection rlnMicrographTiltAxisOutOfPlane
    rlnMinimumValue rlnMolecularWeight rlnMotionModelCoeff rlnMtfValue rlnNormCorrection
    rlnNormCorrectionAverage rlnOffsetRange rlnOffsetRangeOriginal rlnOffsetRangeX
    rlnOffsetRangeY rlnOffsetRangeZ rlnOffsetStep rlnOffsetStepOriginal
    rlnOrientationDistribution rlnOriginX rlnOriginXAngst rlnOriginXPrior
    rlnOriginXPriorAngst rlnOriginY rlnOriginYAngst rlnOriginYPrior rlnOriginYPriorAngst
    rlnOriginZ rlnOriginZAngst rlnOriginZPrior rlnOriginZPriorAngst
    rlnOverallAccuracyRotations rlnOverallAccuracyTranslations
    rlnOverallAccuracyTranslationsAngst rlnOverallFourierCompleteness rlnPaddingFactor
    rlnParticleBoxFractionMolecularWeight rlnParticleBoxFractionSolventMask
    rlnParticleDiameter rlnParticleFigureOfMerit rlnParticleNr rlnParticleSelectZScore
    rlnPerFrameCumulativeWeight rlnPerFrameRelativeWeight rlnPhaseShift rlnPixelSize
    rlnPredictedClassScore rlnProteinCAR rlnProteinEntropy rlnProteinKurt rlnProteinMean
    rlnProteinSkew rlnProteinStddev rlnProteinSum rlnPsiStep rlnPsiStepOriginal
    rlnRandomiseFrom rlnReferenceSigma2 rlnReferenceSpectralPower rlnReferenceTau2
    rlnRelativeResolution rlnRelativeSignalIntensity rlnResolution rlnResolutionInversePixel
    rlnResolutionSquared rlnRingKurt rlnRingMean rlnRingSkew rlnRingStddev
    rlnSamplingPerturbFactor rlnSamplingPerturbInstance rlnSamplingRate rlnSamplingRateX
    rlnSamplingRateY rlnSamplingRateZ rlnScatteredSignal rlnSchemeFloatVariableResetValue
    rlnSchemeFloatVariableValue rlnSgdClassInactivityThreshold rlnSgdFinalIterationsFraction
    rlnSgdFinalResolution rlnSgdInitialIterationsFraction rlnSgdInitialResolution
    rlnSgdMinimumResolution rlnSgdMuFactor rlnSgdSigma2FudgeInitial rlnSgdStepsize
    rlnSigma2Noise rlnSigmaOffsets rlnSigmaOffsetsAngst rlnSigmaPriorPsiAngle
    rlnSigmaPriorRotAngle rlnSigmaPriorTiltAngle rlnSignalToNoiseRatio rlnSkewnessValue
    rlnSmallestChangesOffsets rlnSmallestChangesOrientations rlnSolventEntropy
    rlnSolventKurt rlnSolventMean rlnSolventSkew rlnSolventStddev rlnSolventSum
    rlnSpectralOrientabilityContribution rlnSphericalAberration rlnSsnrMap
    rlnStandardDeviationValue rlnTau2FudgeArg rlnTau2FudgeFactor rlnTiltAngleLimit
    rlnTomoDefocusSlope rlnTomoHand rlnTomoIceNormalX rlnTomoIceNormalY rlnTomoIceNormalZ
    rlnTomoImportFractionalDose rlnTomoImportOffsetX rlnTomoImportOffsetY
    rlnTomoImportOffsetZ rlnTomoNominalDefocus rlnTomoNominalStageTiltAngle
    rlnTomoNominalTiltAxisAngle rlnTomoRelativeIceThickness rlnTomoRelativeLuminance
    rlnTomoSubtomogramBinning rlnTomoSubtomogramPsi rlnTomoSubtomogramRot
    rlnTomoSubtomogramTilt rlnTomoTempPredSquared rlnTomoTempPredTimesObs
    rlnTomoTiltSeriesPixelSize rlnTomoTomogramBinning rlnTomoTomogramThickness
    rlnTomoXShiftAngst rlnTomoXTilt rlnTomoYShiftAngst rlnTomoYTilt rlnTomoZRot
    rlnTotalEntropy rlnTransversalDisplacement rlnVoltage rlnWeightedResolution
"""

_RELION_INT = """
    randomSeed rlnAdaptiveOversampleOrder rlnAreaId rlnAutoLocalSearchesHealpixOrder
    rlnAverageNrOfFrames rlnBeamTiltClass rlnBodyKeepFixed rlnBodyRotateRelativeTo
    rlnClassIndex rlnClassNumber rlnCoarseImageSize rlnCurrentImageSize rlnCurrentIteration
    rlnDataDimensionality rlnDataType rlnEERGrouping rlnEERUpsampling
    rlnFourierSpaceInterpolator rlnGradEmIters rlnGradSubsetOrder
    rlnGradSuspendFinerSamplingIter rlnGradSuspendLocalSamplingIter rlnGroupNrParticles
    rlnGroupNumber rlnHasLargeSizeIncreaseIterationsAgo rlnHealpixOrder
    rlnHealpixOrderOriginal rlnHelicalTubeID rlnImageDimensionality rlnImageId rlnImageSize
    rlnImageSizeX rlnImageSizeY rlnImageSizeZ rlnIncrementImageSize rlnIsSelected rlnJobType
    rlnJoboptionType rlnMaxNumberOfPooledParticles rlnMaximumCoarseImageSize
    rlnMaximumSignificantPoses rlnMicrographEndFrame rlnMicrographFrameNumber
    rlnMicrographId rlnMicrographStartFrame rlnMinRadiusNnInterpolation
    rlnMotionModelCoeffsIdx rlnMotionModelVersion rlnMovieFrameNumber
    rlnMovieFramesRunningAverage rlnNrBodies rlnNrClasses rlnNrGroups rlnNrHelicalAsymUnits
    rlnNrHelicalNStart rlnNrOfFrames rlnNrOfSignificantSamples rlnNrOpticsGroups
    rlnNumberOfIterWithoutChangingAssignments rlnNumberOfIterWithoutResolutionGain
    rlnNumberOfIterations rlnOpticsGroup rlnOpticsGroupNrParticles rlnOpticsGroupNumber
    rlnOrientationalPriorMode rlnOrientationsID rlnOriginalImageSize rlnParticleId
    rlnParticleNumber rlnParticleSelectionType rlnPipeLineJobCounter rlnPipeLineNodeType
    rlnPipeLineNodeTypeLabelDepth rlnPipeLineProcessStatus rlnPipeLineProcessType
    rlnProteinArea rlnRadiusMaskExpImages rlnRadiusMaskMap rlnRandomSeed rlnRandomSubset
    rlnReferenceDimensionality rlnSchemeEdgeNumber rlnSelected rlnSgdFinalSubsetSize
    rlnSgdInitialSubsetSize rlnSgdMaxSubsets rlnSgdSigma2FudgeHalflife rlnSgdSubsetSize
    rlnSgdWriteEverySubset rlnSmallestChangesClasses rlnSolventArea rlnSortedIndex
    rlnSpectralIndex rlnTomoDeformationGridSizeX rlnTomoDeformationGridSizeY
    rlnTomoFrameCount rlnTomoManifoldIndex rlnTomoParticleId rlnTomoSizeX rlnTomoSizeY
    rlnTomoSizeZ rlnTomoTiltMovieFrameCount rlnTomoTiltMovieIndex rlnWidthMaskEdge
"""

_RELION_BOOL = """
    rlnAnglePsiFlip rlnBlushNoSpectralTrailing rlnCtfDataAreCtfCorrected
    rlnCtfDataAreCtfPremultiplied rlnCtfDataArePhaseFlipped rlnDoAutoRefine
    rlnDoAutoSampling rlnDoBlush rlnDoCenterClasses rlnDoCorrectCtf
    rlnDoCorrectMagnification rlnDoCorrectNorm rlnDoCorrectScale rlnDoExternalReconstruct
    rlnDoFastSubsetOptimisation rlnDoGradientRefine rlnDoHelicalRefine
    rlnDoIgnoreCtfUntilFirstPeak rlnDoMapEstimation rlnDoOnlyFlipCtfPhases
    rlnDoRealignMovies rlnDoSkipAlign rlnDoSkipRotate rlnDoSolventFlattening
    rlnDoSolventFscCorrection rlnDoSplitRandomHalves rlnDoStochasticEM
    rlnDoStochasticGradientDescent rlnDoZeroMask rlnEnabled rlnFixSigmaNoiseEstimates
    rlnFixSigmaOffsetEstimates rlnFixTauEstimates rlnGradHasConverged rlnHasConverged
    rlnHasHighFscAtResolLimit rlnHelicalKeepTiltPriorFixed rlnHelicalSymmetryLocalRefinement
    rlnIgnoreHelicalSymmetry rlnIs3DSampling rlnIs3DTranslationalSampling rlnIsFlip
    rlnIsHelix rlnJobIsContinue rlnJobIsTomo rlnRefsAreCtfCorrected
    rlnSchemeBooleanVariableResetValue rlnSchemeBooleanVariableValue rlnSchemeEdgeIsFork
    rlnSchemeJobHasStarted rlnSgdSkipAnneal rlnTomoSubTomosAre2DStacks
    rlnUseTooCoarseSampling
"""

_RELION_STR = """
    rlnAreaName rlnBodyMaskName rlnBodyReferenceName rlnBodyStarFile rlnComment rlnCtfImage
    rlnCtfPowerSpectrum rlnEtomoDirectiveFile rlnExperimentalDataStarFile
    rlnExtReconsDataImag rlnExtReconsDataReal rlnExtReconsResult rlnExtReconsResultStarfile
    rlnExtReconsWeight rlnFourierMask rlnGradMoment1 rlnGradMoment2 rlnGroupName
    rlnImageName rlnImageOriginalName rlnJobOptionDefaultValue rlnJobOptionDirectoryDefault
    rlnJobOptionFilePattern rlnJobOptionGUILabel rlnJobOptionHelpText
    rlnJobOptionMenuOptions rlnJobOptionValue rlnJobOptionVariable rlnJobTypeLabel
    rlnLocalSymmetryFile rlnMaskName rlnMicrographCoordinates rlnMicrographDefectFile
    rlnMicrographGainName rlnMicrographMetadata rlnMicrographMovieName rlnMicrographName
    rlnMicrographNameEven rlnMicrographNameNoDW rlnMicrographNameOdd rlnModelStarFile
    rlnModelStarFile2 rlnMtfFileName rlnOpticsGroupName rlnOpticsStarFile
    rlnOrientSamplingStarFile rlnOriginalParticleName rlnOutputRootName rlnParticleName
    rlnPipeLineEdgeFromNode rlnPipeLineEdgeProcess rlnPipeLineEdgeToNode rlnPipeLineNodeName
    rlnPipeLineNodeTypeLabel rlnPipeLineProcessAlias rlnPipeLineProcessName
    rlnPipeLineProcessStatusLabel rlnPipeLineProcessTypeLabel rlnPostprocessedMap
    rlnPostprocessedMapMasked rlnReconstructImageName rlnReferenceImage
    rlnSchemeBooleanVariableName rlnSchemeCurrentNodeName rlnSchemeEdgeBooleanVariable
    rlnSchemeEdgeInputNodeName rlnSchemeEdgeOutputNodeName rlnSchemeEdgeOutputNodeNameIfTrue
    rlnSchemeEmailAddress rlnSchemeFloatVariableName rlnSchemeJobMode rlnSchemeJobName
    rlnSchemeJobNameOriginal rlnSchemeName rlnSchemeOperatorInput1 rlnSchemeOperatorInput2
    rlnSchemeOperatorName rlnSchemeOperatorOutput rlnSchemeOperatorType
    rlnSchemeOriginalStartNodeName rlnSchemeStringVariableName
    rlnSchemeStringVariableResetValue rlnSchemeStringVariableValue rlnSgdStepsizeScheme
    rlnSolventMask2Name rlnSolventMaskName rlnStarFileMovieParticles rlnSubImageStack
    rlnSubImageStarFile rlnSymmetryGroup rlnTau2FudgeScheme rlnTauSpectrumName
    rlnTomoDeformationType rlnTomoDenoisedTomogram rlnTomoFiducialsStarFile
    rlnTomoImportCtfFindFile rlnTomoImportCtfPlotterFile rlnTomoImportCulledFile
    rlnTomoImportImodDir rlnTomoImportOrderList rlnTomoImportParticleFile
    rlnTomoManifoldType rlnTomoManifoldsFile rlnTomoName rlnTomoParticleName
    rlnTomoParticlesFile rlnTomoReconstructedTomogram rlnTomoReconstructedTomogramHalf1
    rlnTomoReconstructedTomogramHalf2 rlnTomoReferenceFscFile rlnTomoReferenceMap1File
    rlnTomoReferenceMap2File rlnTomoReferenceMaskFile rlnTomoTiltMovieFile
    rlnTomoTiltSeriesName rlnTomoTiltSeriesStarFile rlnTomoTomogramsFile
    rlnTomoTrajectoriesFile rlnTomogramHProjectionalf2 rlnTomogramProjection
    rlnTomogramProjectionHalf1 rlnUnfilteredMapHalf1 rlnUnfilteredMapHalf2
"""

_RELION_INT_VECTOR = """
    rlnTomoVisibleFrames
"""

_RELION_FLOAT_VECTOR = """
    rlnEvenZernike rlnGranulo rlnLBP rlnNormalizedFeatureVector rlnOddZernike
    rlnProteinHaralick rlnProteinLBP rlnSolventHaralick rlnSolventLBP
    rlnTomoDeformationCoefficients rlnTomoManifoldParams rlnTomoProjW rlnTomoProjX
    rlnTomoProjY rlnTomoProjZ rlnZernikeMoments
"""

# Labels outside RELION 5's metadata_label.h that appear in real STAR files.
_EXTRA = {
    # RELION 3.1 optimiser files (starfile/run_it025_optimiser_3D.star)
    "rlnSgdInitialIterations": INT,
    "rlnSgdFinalIterations": INT,
    "rlnSgdInBetweenIterations": INT,
    # RELION 5.0-beta tomograms.star (cets-relion Polish/job070/tomograms.star)
    "rlnTomoReconstructedTomogramDenoised": STR,
}


def _build_registry():
    table = {}
    for kind, names in (
        (FLOAT, _RELION_FLOAT),
        (INT, _RELION_INT),
        (BOOL, _RELION_BOOL),
        (STR, _RELION_STR),
        (INT_VECTOR, _RELION_INT_VECTOR),
        (FLOAT_VECTOR, _RELION_FLOAT_VECTOR),
    ):
        for name in names.split():
            table[name] = kind
    table.update(_EXTRA)
    return table


_REGISTRY = _build_registry()


def label_type(label):
    """Return the registered type of ``label`` or ``None`` when it is unknown.

    Parameters
    ----------
    label : str
        Label name without the leading underscore, e.g. ``"rlnTomoName"``.  A leading
        underscore is tolerated.

    Returns
    -------
    str or None
        One of :data:`TYPES`, or ``None`` for an unknown label.
    """
    if label.startswith("_"):
        label = label[1:]
    return _REGISTRY.get(label)


def is_known(label):
    """Return True when ``label`` is registered."""
    return label_type(label) is not None


def register_label(label, kind):
    """Register (or re-type) ``label`` with type ``kind`` (one of :data:`TYPES`).

    Meant for programs that write labels RELION does not know; registering the type makes
    reading independent of the values found in a particular file.
    """
    if kind not in TYPES:
        raise ValueError(f"label type {kind!r} is not one of {TYPES}")
    _REGISTRY[label.lstrip("_")] = kind


def known_labels():
    """Return a dict ``{label: type}`` of every registered label (a copy)."""
    return dict(_REGISTRY)
