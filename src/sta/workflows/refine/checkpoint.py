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


def _key(h, k, name):
    """Array name of half ``h``, class ``k`` (class 1 keeps version 1's names)."""
    return f"h{h}_{name}" if k == 0 else f"h{h}c{k + 1}_{name}"


def save(run, path, argv):
    """Write the state of ``run`` (leader, after the M-step) to ``path`` (temporary name, then rename
    with the rest of the iteration's files)."""
    st = run.state
    arrays = {f"pose_{k}": getattr(st.poses, k) for k in _POSE_FIELDS}
    arrays["fsc"] = st.fsc
    meta = {"version": VERSION, "argv": list(argv), "iteration": st.iteration, "final": st.final,
            "current_size": st.current_size, "current_resolution": st.current_resolution, "seed": run.p.seed,
            "samp": dataclasses.asdict(st.sampling), "auto": dataclasses.asdict(st.auto),
            "rng": run.rng.bit_generator.state, "perturbation": st.grid.random_perturbation,
            "groups": list(run.groups), "n_particles": int(run.particles.n), "ori": run.ori, "halves": [],
            "n_classes": st.n_classes}
    for h, models in enumerate(st.models):
        for k, m in enumerate(models):
            for name in _MODEL_ARRAYS:
                arrays[_key(h, k, name)] = np.asarray(getattr(m, name))
            arrays[_key(h, k, "sigma2")] = np.stack(m.sigma2)
            if m.pdf_direction is not None:
                arrays[_key(h, k, "pdf")] = np.asarray(m.pdf_direction)
        meta["halves"].append({"sigma2_offset": models[0].sigma2_offset, "scales": models[0].scales,
                               "classes": [{"sigma2_offset": m.sigma2_offset, "scales": m.scales} for m in models]})
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
    """Put ``run`` (freshly built from the original arguments) into the checkpointed state; a rank
    restores the models of the halves it holds."""
    from sta.workflows.refine.schedule import AutoRefine, Sampling

    meta, arrays = ck.meta, ck.arrays
    st = run.state
    if meta["n_particles"] != run.particles.n or meta["ori"] != run.ori or meta["groups"] != list(run.groups):
        raise InputError("--continue: the particles of the original run (count, box or tomograms) differ from "
                         "the current input files")
    if int(meta.get("n_classes", 1)) != st.n_classes:
        raise InputError(f"--continue: the original run has {meta.get('n_classes', 1)} classes, this one "
                         f"{st.n_classes}")
    for k in _POSE_FIELDS:
        setattr(st.poses, k, arrays[f"pose_{k}"].copy())
    st.fsc = arrays["fsc"].copy()
    st.iteration = int(meta["iteration"])
    st.final = bool(meta["final"])
    st.current_size = int(meta["current_size"])
    st.current_resolution = float(meta["current_resolution"])
    st.sampling = Sampling(**meta["samp"])
    st.auto = AutoRefine(**meta["auto"])
    run.rng.bit_generator.state = meta["rng"]
    st.grid.random_perturbation = float(meta["perturbation"])
    st.grid.set_orientations(st.sampling.healpix_order)
    for h, models in enumerate(st.models):
        if models is None:
            continue
        half = meta["halves"][h]
        for k, m in enumerate(models):
            m.set_map(arrays[_key(h, k, "volume")])
            for name in _MODEL_ARRAYS[1:]:
                setattr(m, name, arrays[_key(h, k, name)].copy())
            m.sigma2 = [row.copy() for row in arrays[_key(h, k, "sigma2")]]
            pdf = arrays.get(_key(h, k, "pdf"))
            m.pdf_direction = pdf.copy() if pdf is not None and len(pdf) == st.grid.n_directions else None
            c = half.get("classes", [half])[k]
            m.sigma2_offset = float(c["sigma2_offset"])
            m.scales = dict(c["scales"])
    run.pick_accuracy_particles()
