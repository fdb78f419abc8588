"""The Cramér–Rao bound of particle poses in a simulated project: how well any unbiased
estimator could know each particle's orientation and position from its noisy tilt images,
given the true map.

For white noise of standard deviation ``σ`` per tilt-series pixel (the simulator's model), the
Fisher information of the pose parameters ``θ`` of one particle is

    F_ab = Σ_tilts Σ_pixels ∂_a s · ∂_b s / σ²,

where ``s`` is the particle's noise-free image restricted to what the refinement sees: the
refinement box and the frequencies below the Nyquist frequency of its binning. The covariance
of an unbiased estimate is at least ``F⁻¹``. The six parameters are rotations about the
reference's x, y, z axes (degrees) and shifts along the tomogram's x, y, z axes (Å); the
derivatives are central differences of :func:`sta.simulate.project.render_particle`, the very
image model the simulation used.

The median 3D angular error of such an estimate is the median length of a Gaussian rotation
vector with the angular block of ``F⁻¹`` as covariance (shifts estimated jointly).
"""

import json
import os

import numpy as np

from sta.errors import InputError
from sta.kernels.grid import fft_freqs

#: finite-difference steps: degrees of rotation, tilt-series pixels of shift
ROT_STEP = 0.25
SHIFT_STEP = 0.25


def pose_fisher(projector, tomo, params, proj, position, matrix, dz, sigma, window, radius):
    """Fisher information (6, 6) of one particle's pose, units 1/deg² and 1/Å².

    Parameters
    ----------
    projector : FourierProjector
        Of the true map.
    tomo, params, proj : as for :func:`sta.simulate.project.render_particle`
    position : (3,) tomogram pixels;  matrix : (3, 3) rotation ``M``;  dz : (n_tilts,) Å
    sigma : float
        Noise standard deviation per tilt-series pixel.
    window : int
        Side of the square the refinement sees, in tilt-series pixels (box × binning).
    radius : float
        Highest frequency kept, in cycles per window (window / (2 × binning) at Nyquist).
    """
    from sta.simulate.project import _axis_angle, patch_dose_weights, render_particle
    from sta.geometry.tilt import project

    half = params.box
    lo = half - window // 2
    if lo < 0:
        raise InputError(f"window {window} px is larger than the simulation's patch of {2 * params.box} px")
    k = fft_freqs(window)
    keep = (k[:, None] ** 2 + k[None, :] ** 2) <= radius ** 2
    anchor = np.round(project(proj, position)[:, :2]).astype(int)
    dose = patch_dose_weights(tomo, params)

    def image(m, pos):
        img = render_particle(projector, tomo, params, proj, pos, m, dz, anchor, dose)
        return np.fft.fft2(img[:, lo:lo + window, lo:lo + window])[:, keep]

    grads = []
    for a in range(3):
        axis = np.eye(3)[a]
        plus, minus = matrix @ _axis_angle(axis, ROT_STEP), matrix @ _axis_angle(axis, -ROT_STEP)
        grads.append((image(plus, position) - image(minus, position)) / (2 * ROT_STEP))
    for a in range(3):
        d = np.eye(3)[a] * SHIFT_STEP
        grads.append((image(matrix, position + d) - image(matrix, position - d))
                     / (2 * SHIFT_STEP * params.pixel_size))
    g = np.stack([x.ravel() for x in grads])
    # Parseval for NumPy's unnormalised FFT: Σ_pixels x·y = Σ_k X·conj(Y) / N
    return np.real(g @ np.conj(g).T) / (window * window) / sigma ** 2


def median_angle_error(cov, draws=20000, seed=0):
    """Median length (deg) of a zero-mean Gaussian 3-vector of covariance ``cov``."""
    rng = np.random.default_rng(seed)
    return float(np.median(np.linalg.norm(rng.multivariate_normal(np.zeros(3), cov, draws), axis=1)))


def project_bound(project_dir, binning, box, n_particles=12):
    """Cramér–Rao bound for the first ``n_particles`` particles of a ``sta_simulate`` project
    refined at ``binning`` with a box of ``box`` binned pixels.

    Returns a dict: ``angle`` (per particle, median 3D angular error bound, deg), ``angle_sd``
    (n, 3) and ``shift_sd`` (n, 3) (marginal standard deviations, deg and Å), ``noise_sigma``.
    """
    from sta.geometry.tilt import defocus_offsets
    from sta.io.mrc import read_mrc
    from sta.kernels.projector import FourierProjector
    from sta.simulate.project import SimulationParameters, project_geometry, simulation_padding

    path = os.path.join(project_dir, "truth.json")
    try:
        with open(path) as fh:
            truth = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the simulation's truth ({exc})") from None
    fields = SimulationParameters.__dataclass_fields__
    par = {k: (tuple(v) if isinstance(v, list) else v) for k, v in truth["parameters"].items() if k in fields}
    params = SimulationParameters(**par)
    sigma = float(truth["noise_sigma"])
    if sigma <= 0:
        raise InputError(f"{path}: the project has no noise (noise_sigma {sigma}); the bound is zero")
    volume, _ = read_mrc(os.path.join(project_dir, truth["truth_map"]))
    projector = FourierProjector(np.asarray(volume, dtype=float), pad=simulation_padding(params.box))
    window = box * binning
    angle, angle_sd, shift_sd = [], [], []
    for tomo, proj, pos, m_true, _, _ in project_geometry(params, np.random.default_rng(params.seed)):
        dz = defocus_offsets(proj, pos, params.tomo_size, params.pixel_size, params.hand, params.defocus_slope)
        for i in range(len(pos)):
            if len(angle) == n_particles:
                break
            fisher = pose_fisher(projector, tomo, params, proj, pos[i], m_true[i], dz[i], sigma, window,
                                 window / (2.0 * binning))
            cov = np.linalg.inv(fisher)
            angle.append(median_angle_error(cov[:3, :3], seed=len(angle)))
            angle_sd.append(np.sqrt(np.diag(cov)[:3]))
            shift_sd.append(np.sqrt(np.diag(cov)[3:]))
        if len(angle) == n_particles:
            break
    return {"angle": np.array(angle), "angle_sd": np.array(angle_sd), "shift_sd": np.array(shift_sd),
            "noise_sigma": sigma}
