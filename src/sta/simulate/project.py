"""Simulate a complete RELION-5 tomography project with known ground truth.

Image model (per tilt f, per particle i), with every convention of the spec:

    raw_f = Σ_i place( IFFT( -scale_f · CTF_if(k) · w_f(k) · Proj(V, R_f · M_i)(k) ), q_if ) + noise

* ``M_i = A_sub,i · A_part,i`` rotates the reference into the tomogram frame (§2.5);
  ``R_f`` is the rotation of the tilt's projection matrix (§2.2) and ``q_if`` the projected
  particle centre (``P_f · p_i``);
* ``CTF_if`` uses the depth-corrected defocus ``ΔfU + hand·px·slope·dz`` (§3.2);
* ``w_f`` is the Grant–Grigorieff dose weight for the tilt's pre-exposure (§3.3);
* the minus sign makes protein dark in the raw images, as in real data, so RELION's
  default contrast inversion makes it positive again.
"""

import dataclasses
import json
import logging
import os
import time

import numpy as np

from sta import __version__
from sta.errors import InputError
from sta.geometry.euler import matrix_to_euler
from sta.geometry.tilt import (centred_from_positions, defocus_offsets, project, projection_matrices)
from sta.io.mrc import write_mrc
from sta.kernels.ctf import ctf_2d, dose_weights_2d
from sta.kernels.fourier import phase_shift_2d
from sta.kernels.projector import FourierProjector, slices_to_images
from sta.simulate.scheme import pre_exposures, tilt_angles
from sta.simulate.writer import tilt_image_names, write_project

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SimulationParameters:
    """Everything that defines a simulated project (units: Å, degrees, kV, mm, e/Å²)."""

    n_tomograms: int = 2
    particles_per_tomogram: int = 24
    box: int = 48
    pixel_size: float = 4.0
    image_size: tuple = (280, 280)
    tomo_size: tuple = (300, 288, 96)
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float = 3.0
    scheme: str = "dose-symmetric"
    dose_per_tilt: float = 3.0
    tilt_axis: float = 85.0
    zrot_jitter: float = 0.05
    xtilt_jitter: float = 0.2
    ytilt_jitter: float = 0.1
    shift_jitter: float = 20.0
    defocus_min: float = 30000.0
    defocus_max: float = 35000.0
    astigmatism: float = 300.0
    defocus_jitter: float = 500.0   # per-tilt defocus spread around the tomogram's base (Å)
    hand: float = -1.0
    defocus_slope: float = 1.0
    voltage: float = 300.0
    cs: float = 2.7
    q0: float = 0.1
    ctf: bool = True
    ctf_scale: str = "one"          # "one" or "cos" (rlnCtfScalefactor = cos(tilt))
    bfactor_per_dose: float = 0.0   # rlnCtfBfactorPerElectronDose; 0 = Grant-Grigorieff
    snr: float = 0.1                # <= 0: no noise
    model: str = "phantom"          # "phantom" or a PDB/mmCIF path
    truth_resolution: float = 0.0   # Å; 0 = 2 x pixel size (Nyquist)
    truth_symmetry: str = "C1"
    subtomo_fraction: float = 0.0   # fraction of particles with random rlnTomoSubtomogram* angles
    edge_particles: bool = False    # allow particles close to the tomogram border
    min_separation: float = 0.25    # minimum distance of projected particles in every tilt (boxes)
    perturb_angles: float = 0.0     # degrees
    perturb_offsets: float = 0.0    # Å
    float16: bool = False
    seed: int = 1
    name_prefix: str = "TS_"


def _random_rotations(rng, n):
    """Uniformly distributed rotation matrices (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _axis_angle(axis, angle_deg):
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    a = np.deg2rad(angle_deg)
    k = np.zeros(axis.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    a = np.asarray(a)[..., None, None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def make_tomogram(params, rng, index):
    """Per-tilt metadata of one tilt series (dict of per-tilt arrays + scalars)."""
    p = params
    name = f"{p.name_prefix}{index + 1:02d}"
    angles = tilt_angles(p.tilt_min, p.tilt_max, p.tilt_step)
    n = len(angles)
    base = rng.uniform(p.defocus_min, p.defocus_max)
    defocus_mean = base + rng.normal(0, p.defocus_jitter, n)
    return {
        "name": name,
        "angles": angles,
        "xtilt": rng.normal(0, p.xtilt_jitter, n) if p.xtilt_jitter else np.zeros(n),
        "ytilt": angles + (rng.normal(0, p.ytilt_jitter, n) if p.ytilt_jitter else 0),
        "zrot": p.tilt_axis + (rng.normal(0, p.zrot_jitter, n) if p.zrot_jitter else 0),
        "xshift": rng.uniform(-p.shift_jitter, p.shift_jitter, n) if p.shift_jitter else np.zeros(n),
        "yshift": rng.uniform(-p.shift_jitter, p.shift_jitter, n) if p.shift_jitter else np.zeros(n),
        "defocus_u": defocus_mean + p.astigmatism / 2,
        "defocus_v": defocus_mean - p.astigmatism / 2,
        "defocus_angle": rng.uniform(-180, 180, n),
        "pre_exposure": pre_exposures(angles, p.dose_per_tilt, p.scheme),
        "scale": np.cos(np.deg2rad(angles)) if p.ctf_scale == "cos" else np.ones(n),
        "base_defocus": base,
    }


def place_particles(params, rng, n, proj=None):
    """Random particle positions (tomogram frame, tilt-series pixels).

    Particles are at least 0.7 boxes apart in 3D and, when ``proj`` is given, their
    projections are at least ``params.min_separation`` boxes apart in every tilt image, so
    that a box around one particle holds little of its neighbours.
    """
    p = params
    size = np.asarray(p.tomo_size, dtype=float)
    margin = np.array([0.0, 0.0, 0.0]) if p.edge_particles else np.array([0.75, 0.75, 0.5]) * p.box
    margin = np.minimum(margin, size / 2 - 1)
    zmargin = min(max(margin[2], p.box / 2), size[2] / 2 - 1)
    lo = np.array([margin[0], margin[1], zmargin])
    hi = size - lo
    pts, proj_pts = [], []
    tries = 0
    while len(pts) < n:
        tries += 1
        if tries > 20000:
            raise InputError(f"cannot place {n} particles of box {p.box} apart from each other in a tomogram of "
                             f"{tuple(p.tomo_size)} pixels; use fewer particles, a larger --tomo_size or a smaller "
                             f"--min_separation")
        c = rng.uniform(lo, hi)
        if pts and np.min(np.linalg.norm(np.asarray(pts) - c, axis=1)) < 0.7 * p.box:
            continue
        if proj is not None and proj_pts:
            q = project(proj, c)[:, :2]
            d = np.linalg.norm(np.asarray(proj_pts) - q[None], axis=2)  # (n_placed, f)
            if d.min() < p.min_separation * p.box:
                continue
        pts.append(c)
        if proj is not None:
            proj_pts.append(project(proj, c)[:, :2])
    return np.asarray(pts)


def render_tilt_series(projector, tomo, params, positions, matrices, proj):
    """Noise-free tilt images (n_tilts, H, W) of one tomogram."""
    p = params
    w, h = p.image_size
    n_tilts = len(tomo["angles"])
    images = np.zeros((n_tilts, h, w))
    half = p.box  # patches are 2·box wide
    dz_def = defocus_offsets(proj, positions, p.tomo_size, p.pixel_size, p.hand, p.defocus_slope)
    q = project(proj, positions)  # (n, f, 3)
    dose = patch_dose_weights(tomo, p)
    for i in range(len(positions)):
        anchor = np.round(q[i, :, :2]).astype(int)
        patches = render_particle(projector, tomo, p, proj, positions[i], matrices[i], dz_def[i], anchor, dose)
        for f in range(n_tilts):
            _add_patch(images[f], patches[f], anchor[f, 0] - half, anchor[f, 1] - half)
    return images


def patch_dose_weights(tomo, params):
    """Dose weights (n_tilts, 2·box, box+1) of a tomogram's particle patches (None without CTF)."""
    p = params
    return dose_weights_2d(2 * p.box, p.pixel_size, tomo["pre_exposure"], p.bfactor_per_dose) if p.ctf else None


def render_particle(projector, tomo, params, proj, position, matrix, dz, anchor, dose):
    """Noise-free images of one particle, (n_tilts, 2·box, 2·box), each centred on ``anchor[f]``
    (integer image pixel; the 2-box patch leaves room for the CTF's delocalisation).

    ``position`` is the centre in tomogram pixels, ``matrix`` the rotation ``M`` of the
    reference into the tomogram, ``dz`` the particle's depth defocus offset (Å) of each tilt and
    ``dose`` the tomogram's :func:`patch_dose_weights`.
    """
    p = params
    patch = 2 * p.box
    spec = projector.project_slices(proj[:, :3, :3] @ matrix, patch)
    if p.ctf:
        ctf = ctf_2d(patch, p.pixel_size, tomo["defocus_u"] + dz, tomo["defocus_v"] + dz,
                     tomo["defocus_angle"], p.voltage, p.cs, p.q0, scale=tomo["scale"])
        spec = spec * (-ctf * dose)
    else:
        spec = spec * (-tomo["scale"][:, None, None])
    frac = project(proj, position)[:, :2] - anchor
    return slices_to_images(spec * phase_shift_2d(patch, frac), patch)


def _add_patch(image, patch, x0, y0):
    h, w = image.shape
    ph, pw = patch.shape
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + pw, w), min(y0 + ph, h)
    if xa >= xb or ya >= yb:
        return
    image[ya:yb, xa:xb] += patch[ya - y0:yb - y0, xa - x0:xb - x0]


def signal_variance(images, q, box, pre_exposure):
    """Variance of the noise-free signal in a box window around each particle, lowest-dose tilt."""
    f = int(np.argmin(pre_exposure))
    h, w = images.shape[1:]
    vals = []
    for qi in q[:, f, :2]:
        x0, y0 = int(round(qi[0])) - box // 2, int(round(qi[1])) - box // 2
        if x0 >= 0 and y0 >= 0 and x0 + box <= w and y0 + box <= h:
            vals.append(images[f, y0:y0 + box, x0:x0 + box].var())
    return float(np.mean(vals)) if vals else float(images[f].var())


def _ground_truth(params):
    """Truth map (box³, max 1) for ``params.model``."""
    p = params
    res = p.truth_resolution if p.truth_resolution > 0 else 2.0 * p.pixel_size
    group = None
    if p.truth_symmetry and p.truth_symmetry.upper() != "C1":
        from sta.geometry.symmetry import parse_symmetry

        group = parse_symmetry(p.truth_symmetry)
    from sta.simulate.phantom import atomic_model_map, chiral_phantom, symmetrize

    if p.model == "phantom":
        vol = chiral_phantom(p.box, p.pixel_size, res)
        if group is not None:
            vol = symmetrize(vol, group)
            vol /= np.abs(vol).max()
        return vol
    return atomic_model_map(p.model, p.box, p.pixel_size, res, symmetry=group)


def project_geometry(params, rng):
    """Yield, tomogram by tomogram, what the simulation draws before its noise:
    ``(tomo, proj, positions, M, A_sub, halves)``, with ``tomo["proj"]`` set.

    Rendering draws nothing, so the same parameters and a generator in the same state give
    the same geometry whether or not the images are made (:mod:`sta.simulate.bound` uses this).
    """
    p = params
    for t in range(p.n_tomograms):
        tomo = make_tomogram(p, rng, t)
        proj = projection_matrices(tomo["xtilt"], tomo["ytilt"], tomo["zrot"], tomo["xshift"], tomo["yshift"],
                                   p.pixel_size, p.tomo_size, p.image_size)
        tomo["proj"] = proj
        n = p.particles_per_tomogram
        pos = place_particles(p, rng, n, proj)
        m_true = _random_rotations(rng, n)
        a_sub = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        has_sub = rng.random(n) < p.subtomo_fraction
        if has_sub.any():
            a_sub[has_sub] = _random_rotations(rng, int(has_sub.sum()))
        halves = rng.permutation(np.arange(n) % 2 + 1)
        yield tomo, proj, pos, m_true, a_sub, halves


def simulate_project(params, out_dir, volume=None, progress=None):
    """See :func:`_simulate_project`; runs with NumPy's FFT so that a seed gives identical bytes."""
    from sta.backend.fft import use_fft_engine

    with use_fft_engine("numpy"):
        return _simulate_project(params, out_dir, volume, progress)


def _simulate_project(params, out_dir, volume=None, progress=None):
    """Write a RELION-5 project with known truth into ``out_dir``; return the truth dict.

    Parameters
    ----------
    params : SimulationParameters
    out_dir : str
        Project directory; all paths in the STAR files are relative to it.
    volume : (box, box, box) array or None
        Structure to image (default: from ``params.model``).
    progress : callable or None
        ``progress(done, total)`` after each tomogram.
    """
    t0 = time.time()
    p = params
    _validate(p)
    rng = np.random.default_rng(p.seed)
    if volume is None:
        volume = _ground_truth(p)
    volume = np.asarray(volume, dtype=float)
    if volume.shape != (p.box,) * 3:
        raise InputError(f"structure has shape {volume.shape}, expected ({p.box}, {p.box}, {p.box})")
    os.makedirs(out_dir, exist_ok=True)
    projector = FourierProjector(volume, pad=simulation_padding(p.box))
    tomos, particles, images_all = [], [], []
    for t, (tomo, proj, pos, m_true, a_sub, halves) in enumerate(project_geometry(p, rng)):
        n = len(pos)
        a_part = np.swapaxes(a_sub, -1, -2) @ m_true
        images = render_tilt_series(projector, tomo, p, pos, m_true, proj)
        tomos.append(tomo)
        images_all.append(images)
        for i in range(n):
            particles.append({"tomo": tomo["name"], "name": f"{tomo['name']}/{i + 1}", "pos_px": pos[i],
                              "M": m_true[i], "A_sub": a_sub[i], "A_part": a_part[i], "half": int(halves[i]),
                              "q": project(proj, pos[i])})
        if progress:
            progress(t + 1, p.n_tomograms)
    # noise at the requested SNR (one sigma for the whole project)
    var = np.mean([signal_variance(img, np.stack([q["q"] for q in particles if q["tomo"] == tm["name"]]),
                                   p.box, tm["pre_exposure"]) for img, tm in zip(images_all, tomos)])
    sigma = float(np.sqrt(var / p.snr)) if p.snr > 0 else 0.0
    for img, tm in zip(images_all, tomos):
        if sigma > 0:
            img += rng.normal(0.0, sigma, img.shape)
        for f, path in enumerate(tilt_image_names(tm["name"], tm["angles"])):
            write_mrc(os.path.join(out_dir, path), img[f], p.pixel_size, float16=p.float16)
    write_mrc(os.path.join(out_dir, "ground_truth.mrc"), volume, p.pixel_size)
    perturbed = _perturb(p, rng, particles) if (p.perturb_angles > 0 or p.perturb_offsets > 0) else None
    write_project(out_dir, p, tomos, particles, perturbed)
    truth = _truth_dict(p, tomos, particles, perturbed, var, sigma, time.time() - t0)
    with open(os.path.join(out_dir, "truth.json"), "w") as fh:
        json.dump(truth, fh, indent=1)
    return truth


def simulation_padding(box):
    """Fourier padding of the simulator's projector: the ray sums are accurate to < 1% of the
    peak at pad 4 (< 4% at pad 2); larger boxes use less padding to bound memory."""
    return 4 if box <= 64 else (3 if box <= 100 else 2)


def _validate(p):
    if p.box < 8 or p.box % 2:
        raise InputError(f"--box must be an even number >= 8, got {p.box}")
    if p.pixel_size <= 0:
        raise InputError(f"--angpix must be > 0, got {p.pixel_size}")
    if min(p.image_size) < p.box or min(p.tomo_size) < 2:
        raise InputError(f"--image_size {p.image_size} must be at least the box {p.box}")
    if not 0 <= p.q0 < 1:
        raise InputError(f"--Q0 must be in [0, 1), got {p.q0}")
    if p.ctf_scale not in ("one", "cos"):
        raise InputError(f"--ctf_scale must be 'one' or 'cos', got {p.ctf_scale!r}")
    if p.tilt_step <= 0 or p.tilt_max < p.tilt_min:
        raise InputError("tilt range: expected --tilt_min <= --tilt_max and --tilt_step > 0")


def _perturb(p, rng, particles):
    """Poses rotated by exactly ``perturb_angles`` about random axes and shifted by exactly
    ``perturb_offsets`` Å (through rlnOrigin*Angst) in random directions."""
    n = len(particles)
    axes = rng.normal(size=(n, 3))
    drot = _axis_angle(axes, np.full(n, p.perturb_angles))
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    out = []
    for i, part in enumerate(particles):
        # the centre stays at the coordinate: an origin o moves the implied centre by -A_sub o/px,
        # so the refinement has to find o = 0 again.
        out.append({"A_part": part["A_part"] @ drot[i], "origin": dirs[i] * p.perturb_offsets})
    return out


def _truth_dict(p, tomos, particles, perturbed, var, sigma, wall):
    parts = []
    for i, part in enumerate(particles):
        rot, tilt, psi = matrix_to_euler(part["A_part"])
        entry = {"name": part["name"], "tomo": part["tomo"], "pos_px": part["pos_px"].tolist(),
                 "centred_A": centred_from_positions(part["pos_px"], p.pixel_size, p.tomo_size).tolist(),
                 "half": part["half"], "M": part["M"].tolist(), "A_sub": part["A_sub"].tolist(),
                 "angles": [float(rot), float(tilt), float(psi)]}
        if perturbed is not None:
            entry["perturbed_origin_A"] = perturbed[i]["origin"].tolist()
        parts.append(entry)
    return {
        "simulator": f"sta_simulate {__version__}",
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(p).items()},
        "seed": p.seed,
        "pixel_size": p.pixel_size,
        "box": p.box,
        "truth_map": "ground_truth.mrc",
        "signal_variance": var,
        "noise_sigma": sigma,
        "snr_definition": "variance of the noise-free signal in a box x box window around each particle in "
                          "the lowest-dose tilt (mean over particles) / white-noise variance",
        "image_model": "raw = sum_i IFFT(-scale * CTF(depth-corrected defocus) * GG dose weight * "
                       "FFT(ray-sum projection of the map rotated by R_f M_i)) + noise",
        "tomograms": [{"name": t["name"], "size": list(p.tomo_size), "image_size": list(p.image_size),
                       "hand": p.hand, "base_defocus": t["base_defocus"], "n_tilts": len(t["angles"])}
                      for t in tomos],
        "particles": parts,
        "wall_time_s": wall,
    }

