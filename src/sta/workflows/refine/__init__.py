"""relion_refine on tomography data (auto-refine), as one package.

engine      E-step of one half set on one particle (RefineEngine) and the M-step sums (HalfSums)
loop        the auto-refine iteration loop (AutoRefinement): FSC, tau2, sigma2, schedule, final join
schedule    auto-sampling, image sizes and convergence bookkeeping
data        particles as relion_refine reads them (2D stacks, 3D subtomograms)
files       run_itNNN_* / run_* output files
checkpoint  --continue state
Parallel execution (leader + half-set followers) lives in sta.parallel.refine, the image
store (pre-read, scratch copy) in sta.parallel.image_store.
"""
