"""relion_refine on tomography data (auto-refine), as one package.

engine      E-step of one half set on one particle (RefineEngine) and the M-step sums (HalfSums)
state       the explicit state (RefineState: models per half and class, poses, sampling, grid,
            schedule) and one half set's sums per class (HalfSetSums)
loop        the auto-refine iteration loop (AutoRefinement): E-step job, M-step (swappable map
            update), FSC, tau2, sigma2, schedule, final join
schedule    auto-sampling, image sizes and convergence bookkeeping
data        particles as relion_refine reads them (2D stacks, 3D subtomograms)
files       run_itNNN_* / run_* output files
checkpoint  --continue state
Parallel execution (ranks and --j threads: leader + half-set followers, buffer MPI) lives in
sta.parallel.refine behind a narrow interface, the image store (pre-read, scratch copy) in
sta.parallel.image_store.
"""
