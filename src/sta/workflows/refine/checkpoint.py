"""Exact state of an auto-refinement after an iteration, for ``sta_refine --continue``.

RELION continues from ``run_itNNN_optimiser.star`` and the files it names; their STAR and MRC
precision (float32 maps, printed spectra) would make a continued run drift from the
uninterrupted one.  sta writes beside every ``run_itNNN_optimiser.star`` a
``run_itNNN_sta_state.npz`` holding the same state at full precision (maps, noise spectra,
poses, sampling, convergence counters, the random generator and the original command line),
so a continued run reproduces the uninterrupted one exactly.
"""

import dataclasses
import json
import os
import zipfile

import numpy as np

from sta.errors import InputError
from sta.io.atomic import atomic_path

_POSE_FIELDS = ("angles", "offsets", "prior_offsets", "half", "pmax", "nsig", "logl", "spread", "acc_rot",
                "acc_trans")
_MODEL_ARRAYS = ("volume", "fsc", "ssnr", "tau2", "sigma2_rec", "coverage")
VERSION = 1


@dataclasses.dataclass
class Checkpoint:
    meta: dict
    arrays: dict

    @property
    def argv(self):
        return list(self.meta["argv"])

    @property
    def iteration(self):
        return int(self.meta["iteration"])


def state_path(optimiser_star):
    """``run_itNNN_sta_state.npz`` beside ``run_itNNN_optimiser.star``."""
    if not optimiser_star.endswith("_optimiser.star"):
        raise InputError(f"--continue {optimiser_star}: expected a run_itNNN_optimiser.star file")
    return optimiser_star[: -len("_optimiser.star")] + "_sta_state.npz"


def save(run, path, argv):
    """Write the state of ``run`` (leader, after the M-step) to ``path`` (temporary name, then rename
    with the rest of the iteration's files)."""
    arrays = {f"pose_{k}": getattr(run.state, k) for k in _POSE_FIELDS}
    arrays["fsc"] = run.fsc
    meta = {"version": VERSION, "argv": list(argv), "iteration": run.iteration, "final": run.final,
            "current_size": run.current_size, "current_resolution": run.current_resolution, "seed": run.p.seed,
            "samp": dataclasses.asdict(run.samp), "auto": dataclasses.asdict(run.auto),
            "rng": run.rng.bit_generator.state, "perturbation": run.sampling.random_perturbation,
            "groups": list(run.groups), "n_particles": int(run.particles.n), "ori": run.ori, "halves": []}
    for h, m in enumerate(run.models):
        for k in _MODEL_ARRAYS:
            arrays[f"h{h}_{k}"] = np.asarray(getattr(m, k))
        arrays[f"h{h}_sigma2"] = np.stack(m.sigma2)
        if m.pdf_direction is not None:
            arrays[f"h{h}_pdf"] = np.asarray(m.pdf_direction)
        meta["halves"].append({"sigma2_offset": m.sigma2_offset, "scales": m.scales})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load(optimiser_star):
    """Read the checkpoint beside ``optimiser_star`` (one-line errors when absent or foreign)."""
    if not os.path.exists(optimiser_star):
        raise InputError(f"{optimiser_star}: file not found (--continue)")
    path = state_path(optimiser_star)
    if not os.path.exists(path):
        raise InputError(f"--continue {optimiser_star}: {os.path.basename(path)} is missing beside it; sta_refine "
                         "continues only its own runs (it writes that file every iteration)")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: unreadable sta_refine state ({exc})") from None
    if meta.get("version") != VERSION:
        raise InputError(f"{path}: state version {meta.get('version')} is not {VERSION}")
    return Checkpoint(meta, arrays)


def restore(run, ck):
    """Put ``run`` (freshly built from the original arguments) into the checkpointed state."""
    from sta.workflows.refine.schedule import AutoRefine, Sampling

    meta, arrays = ck.meta, ck.arrays
    if meta["n_particles"] != run.particles.n or meta["ori"] != run.ori or meta["groups"] != list(run.groups):
        raise InputError("--continue: the particles of the original run (count, box or tomograms) differ from "
                         "the current input files")
    for k in _POSE_FIELDS:
        setattr(run.state, k, arrays[f"pose_{k}"].copy())
    run.fsc = arrays["fsc"].copy()
    run.iteration = int(meta["iteration"])
    run.final = bool(meta["final"])
    run.current_size = int(meta["current_size"])
    run.current_resolution = float(meta["current_resolution"])
    run.samp = Sampling(**meta["samp"])
    run.auto = AutoRefine(**meta["auto"])
    run.rng.bit_generator.state = meta["rng"]
    run.sampling.random_perturbation = float(meta["perturbation"])
    run.sampling.set_orientations(run.samp.healpix_order)
    for h, m in enumerate(run.models):
        m.set_map(arrays[f"h{h}_volume"])
        for k in _MODEL_ARRAYS[1:]:
            setattr(m, k, arrays[f"h{h}_{k}"].copy())
        m.sigma2 = [row.copy() for row in arrays[f"h{h}_sigma2"]]
        pdf = arrays.get(f"h{h}_pdf")
        m.pdf_direction = pdf.copy() if pdf is not None and len(pdf) == run.sampling.n_directions else None
        m.sigma2_offset = float(meta["halves"][h]["sigma2_offset"])
        m.scales = dict(meta["halves"][h]["scales"])
    run.pick_accuracy_particles()
