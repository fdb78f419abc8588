"""Issue 22 check: Scipion's RELION-tomography plugin runs sta unmodified.

Runs the same small simulated project through Scipion's own protocols, headless via the
pyworkflow project API, with sta's RELION aliases (``sta_relion_aliases``) installed as
Scipion's RELION 5 (``RELIONTOMO_HOME=<out>/relion-5.0``):

  1. tomo    import tilt-series          one MRC stack + .tlt (angle, accumulated dose, order) per TS
  2. imod    import transformation matrix  one IMOD .xf per TS (the simulated in-plane rotation and shifts)
  3. tomo    import tomo CTFs (CTFFIND)  one CTFFIND-4 text file per TS (the simulated defocus)
  4. tomo    import tomograms            empty volumes of the simulated tomogram size (coordinates need them)
  5. reliontomo import 3D coordinates from a star file  (rlnCoordinateX/Y/Z + perturbed rlnAngle*)
  6. reliontomo extract subtomos         relion_tomo_subtomo_mpi (2D stacks, bin 2)
  7. reliontomo reconstruct particle     relion_tomo_reconstruct_particle_mpi (reference)
  8. pwem    import mask                 soft sphere for post-processing
  9. reliontomo 3D auto-refine           relion_refine_mpi (3 MPI ranks)
 10. reliontomo post-processing          relion_postprocess

and prints, per protocol, whether it finished; then how Scipion's tilt-series STAR files
compare with the simulator's, and the correlation (and FSC) of the refined map with the
simulator's ground truth.  A bench: prints numbers from one run, asserts nothing; not a test.

The script runs itself twice: the driver (this interpreter: sta, numpy, mrcfile) simulates
the project, writes the files Scipion imports and evaluates the result; the Scipion part
runs in the interpreter of a separate virtual environment (``--venv``) that holds Scipion:

    python -m venv /tmp/scipion/venv
    /tmp/scipion/venv/bin/pip install --only-binary=:all: --no-binary=pyperclip \\
        scipion-pyworkflow scipion-em scipion-em-tomo scipion-em-imod scipion-em-reliontomo scipion-app
    /tmp/scipion/venv/bin/pip install --no-deps scipion-em-cistem
    python bench/scipion_check.py --venv /tmp/scipion/venv --out /tmp/scipion/check

See bench/scipion_check.md for the manual steps and what was observed.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"

PROTOCOLS = ("import tilt-series", "import transformation matrix", "import tomo CTFs", "import tomograms",
             "import 3D coordinates", "extract subtomos", "reconstruct particle", "import mask",
             "3D auto-refine", "post-processing")


# ----------------------------------------------------------------------------------------------
# Driver (main interpreter, with sta)
# ----------------------------------------------------------------------------------------------

def _run(cmd, **kw):
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    res = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if res.returncode != 0:
        sys.stdout.write(res.stdout[-3000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(str(c) for c in cmd)}")
    return res.stdout


def simulate(args, sim):
    """The simulated project: no per-tilt angle jitter (Scipion writes rlnTomoXTilt = 0 and
    rlnTomoYTilt = the .tlt angle) and rlnCtfScalefactor = cos(tilt) (what Scipion writes)."""
    _run(["sta_simulate", "--o", sim, "--model", args.model, "--truth_sym", args.sym,
          "--n_tomograms", args.tomograms, "--particles", args.particles, "--snr", args.snr,
          "--seed", args.seed, "--angle_jitter", "0", "--ctf_scale", "cos",
          "--perturb-angles", "10", "--perturb-offsets", "5"])


def write_import_files(sim, imp, args):
    """Files in the formats Scipion's import protocols read, from the simulated project."""
    import mrcfile
    import numpy as np
    from sta.io.star import read_star

    tomos = read_star(sim / "tomograms.star")["global"].df
    params = json.loads((sim / "truth.json").read_text())["parameters"]
    dose = float(params["dose_per_tilt"])
    for sub in ("ts", "xf", "ctf", "tomo", "coords"):
        (imp / sub).mkdir(parents=True, exist_ok=True)
    for _, t in tomos.iterrows():
        name = t.rlnTomoName
        px = float(t.rlnTomoTiltSeriesPixelSize)
        ts = read_star(sim / t.rlnTomoTiltSeriesStarFile)[name].df
        ts = ts.sort_values("rlnTomoNominalStageTiltAngle").reset_index(drop=True)
        # Stack, sections in increasing tilt angle (Scipion sorts tilt images by angle and the
        # .xf / CTFFIND rows follow the same order).
        stack = np.stack([mrcfile.read(sim / f).astype(np.float32) for f in ts.rlnMicrographName])
        with mrcfile.new(imp / "ts" / f"{name}.mrc", overwrite=True) as m:
            m.set_data(stack)
            m.set_image_stack()
            m.voxel_size = px
        # .tlt: angle, accumulated dose after the tilt, acquisition order (single spaces: Scipion
        # splits on " "); Scipion's pre-exposure is accumulated dose - dose per tilt.
        order = ts.rlnMicrographPreExposure.rank(method="first").astype(int)
        with open(imp / "ts" / f"{name}.tlt", "w") as fh:
            for a, pre, o in zip(ts.rlnTomoNominalStageTiltAngle, ts.rlnMicrographPreExposure, order):
                fh.write(f"{a:.2f} {pre + dose:.2f} {o}\n")
        # IMOD .xf "A11 A12 A21 A22 DX DY".  Scipion (reliontomo convert50_tomo.ts2Star) writes
        # rlnTomoZRot = atan2(A12, A11) and rlnTomoX/YShiftAngst = (M^-1)[0:2, 2] * px with
        # M = [[A11, A12, DX], [A21, A22, DY], [0, 0, 1]]; these rows make it write exactly the
        # simulated rlnTomoZRot and shifts.
        with open(imp / "xf" / f"{name}.xf", "w") as fh:
            for z, sx, sy in zip(ts.rlnTomoZRot, ts.rlnTomoXShiftAngst, ts.rlnTomoYShiftAngst):
                c, s = np.cos(np.deg2rad(z)), np.sin(np.deg2rad(z))
                a = np.array([[c, s], [-s, c]])
                d = -a @ (np.array([sx, sy]) / px)
                fh.write(f"{a[0, 0]:12.7f} {a[0, 1]:12.7f} {a[1, 0]:12.7f} {a[1, 1]:12.7f} "
                         f"{d[0]:12.5f} {d[1]:12.5f}\n")
        # CTFFIND 4 output (one row per tilt image): number, defocus 1, defocus 2 (Å),
        # astigmatism azimuth (deg), phase shift (rad), cross correlation, fit resolution (Å).
        with open(imp / "ctf" / f"{name}.txt", "w") as fh:
            fh.write("# Output from CTFFind version 4.1.14 (written by bench/scipion_check.py from the "
                     "simulator's defocus)\n")
            fh.write(f"# Pixel size: {px:.3f} Angstroms ; acceleration voltage: {t.rlnVoltage:.1f} keV ; "
                     f"spherical aberration: {t.rlnSphericalAberration:.2f} mm ; "
                     f"amplitude contrast: {t.rlnAmplitudeContrast:.2f}\n")
            fh.write("# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
                     "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; "
                     "#6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit "
                     "successfully\n")
            for i, r in ts.iterrows():
                fh.write(f"{i + 1:.6f} {r.rlnDefocusU:.6f} {r.rlnDefocusV:.6f} {r.rlnDefocusAngle:.6f} "
                         f"0.000000 0.100000 {2 * px:.6f}\n")
        # An (empty) tomogram of the simulated size at the tilt-series pixel size: Scipion's
        # coordinates refer to tomograms, and the extraction reads rlnTomoSizeX/Y/Z from it.
        size = (int(t.rlnTomoSizeZ), int(t.rlnTomoSizeY), int(t.rlnTomoSizeX))
        with mrcfile.new(imp / "tomo" / f"{name}.mrc", overwrite=True) as m:
            m.set_data(np.zeros(size, dtype=np.int8))
            m.voxel_size = px
    # Coordinates: RELION-5 picking STAR (rlnTomoName, rlnCoordinateX/Y/Z in tilt-series pixels
    # from the tomogram corner, as reliontomo's import reads them) with the perturbed poses:
    # position = centre - origin, angles = the perturbed ones (priors = the same tilt/psi).
    parts = read_star(sim / "particles_perturbed.star")["particles"].df
    size = {r.rlnTomoName: (r.rlnTomoSizeX, r.rlnTomoSizeY, r.rlnTomoSizeZ) for _, r in tomos.iterrows()}
    px = {r.rlnTomoName: float(r.rlnTomoTiltSeriesPixelSize) for _, r in tomos.iterrows()}
    lines = ["", "# version 50001", "", "data_particles", "", "loop_"]
    labels = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot",
              "rlnAngleTilt", "rlnAnglePsi", "rlnAngleTiltPrior", "rlnAnglePsiPrior"]
    lines += [f"_{lab} #{i + 1}" for i, lab in enumerate(labels)]
    for _, r in parts.iterrows():
        sx, sy, sz = size[r.rlnTomoName]
        p = px[r.rlnTomoName]
        x = (r.rlnCenteredCoordinateXAngst - r.rlnOriginXAngst) / p + sx / 2.0
        y = (r.rlnCenteredCoordinateYAngst - r.rlnOriginYAngst) / p + sy / 2.0
        z = (r.rlnCenteredCoordinateZAngst - r.rlnOriginZAngst) / p + sz / 2.0
        lines.append(f"{r.rlnTomoName} {x:.4f} {y:.4f} {z:.4f} {r.rlnAngleRot:.4f} {r.rlnAngleTilt:.4f} "
                     f"{r.rlnAnglePsi:.4f} {r.rlnAngleTilt:.4f} {r.rlnAnglePsi:.4f}")
    (imp / "coords" / "coordinates.star").write_text("\n".join(lines) + "\n")
    # Soft spherical solvent mask at the refinement's pixel size and box.
    box, mpx = args.crop, px[parts.rlnTomoName.iloc[0]] * args.bin
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    rad, edge = args.diameter / 2.0 / mpx, 3.0
    mask = np.where(r <= rad, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((r - rad) / edge, 0, 1)))
    with mrcfile.new(imp / "mask.mrc", overwrite=True) as m:
        m.set_data(mask.astype(np.float32))
        m.voxel_size = mpx


def scipion_environment(out, venv):
    """The environment the Scipion part (and every protocol it launches) runs in."""
    home = out / "scipion_home"
    (home / "config").mkdir(parents=True, exist_ok=True)
    parallel = "mpirun -np %(JOB_NODES)d %(COMMAND)s"
    (home / "config" / "hosts.conf").write_text(
        "[localhost]\nPARALLEL_COMMAND = " + parallel.replace("%(", "%_(") + "\n")
    (home / "config" / "scipion.conf").write_text("[PYWORKFLOW]\n\n[PLUGINS]\n")
    relion = out / "relion-5.0"            # the name must end in 5.0: reliontomo's RELION-5 mode
    shutil.rmtree(relion, ignore_errors=True)
    _run(["sta_relion_aliases", "--o", relion / "bin"])
    fake = out / "fakebin"                 # the IMOD plugin only checks that etomo is on PATH
    fake.mkdir(exist_ok=True)
    (fake / "etomo").write_text("#!/bin/sh\nexit 0\n")
    (fake / "etomo").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCIPION", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "SCIPION_HOME": str(home),
        "SCIPION_USER_DATA": str(out / "ScipionUserData"),
        "SCIPION_CONFIG": str(home / "config" / "scipion.conf"),
        "SCIPION_LOCAL_CONFIG": str(home / "config" / "scipion.conf"),
        "SCIPION_HOSTS": str(home / "config" / "hosts.conf"),
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_PYTHON": str(Path(venv) / "bin" / "python"),
        "SCIPION_NOTIFY": "False",
        "SCIPION_LOG_LEVEL": "INFO",
        "SQLITE_JOURNAL_MODE": "WAL",      # the tilt-series import hangs without it
        "RELIONTOMO_HOME": str(relion),
        "PARALLEL_COMMAND_RELIONTOMO": parallel,
        "PATH": f"{Path(venv) / 'bin'}:{fake}:{env.get('PATH', '')}",
    })
    return env


def compare_tilt_series(sim, extract_extra):
    """Largest differences between Scipion's tilt-series STAR files and the simulator's."""
    from sta.io.star import read_star

    cols = ("rlnTomoYTilt", "rlnTomoXTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst",
            "rlnDefocusU", "rlnDefocusV", "rlnMicrographPreExposure", "rlnCtfScalefactor")
    worst = dict.fromkeys(cols, 0.0)
    worst["rlnDefocusAngle (mod 180)"] = 0.0
    paths = sorted(Path(extract_extra).glob("TS_*.star"))
    worst["(tilt-series files compared)"] = len(paths)
    for path in paths:
        name = path.stem
        ours = read_star(sim / "tilt_series" / f"{name}.star")[name].df
        ours = ours.sort_values("rlnTomoNominalStageTiltAngle").reset_index(drop=True)
        theirs = read_star(path)[name].df.sort_values("rlnTomoNominalStageTiltAngle").reset_index(drop=True)
        for c in cols:
            worst[c] = max(worst[c], float((ours[c] - theirs[c]).abs().max()))
        da = ((ours.rlnDefocusAngle - theirs.rlnDefocusAngle + 90) % 180 - 90).abs().max()
        worst["rlnDefocusAngle (mod 180)"] = max(worst["rlnDefocusAngle (mod 180)"], float(da))
    return worst


def evaluate(sim, result):
    import numpy as np
    from sta.io.mrc import read_mrc
    from sta.kernels.fourier import fourier_crop_volume
    from sta.simulate.evaluate import crossing_resolution, fsc_against_truth

    path = result.get("refined_map")
    if not path or not os.path.exists(path):
        print("No refined map: no comparison with the truth.")
        return
    vol, px = read_mrc(path)
    truth, tpx = read_mrc(sim / "ground_truth.mrc")
    new_box = int(round(truth.shape[0] * tpx / px))
    truth = fourier_crop_volume(truth.astype(np.float64), new_box)
    lo = (new_box - vol.shape[0]) // 2
    truth = truth[lo:lo + vol.shape[0], lo:lo + vol.shape[1], lo:lo + vol.shape[2]]
    corr = float(np.corrcoef(vol.ravel(), truth.ravel())[0, 1])
    curve, _ = fsc_against_truth(sim, path)
    res05 = crossing_resolution(curve, vol.shape[0], px, 0.5)
    print(f"Refined map {path}: box {vol.shape[0]}, {px:g} Å/px")
    print(f"  correlation with the ground truth (Fourier-cropped to {px:g} Å): {corr:.3f}")
    print(f"  FSC against the truth crosses 0.5 at {res05:.1f} Å (Nyquist {2 * px:.1f} Å)")
    ref = result.get("reference_map")
    if ref and os.path.exists(ref):
        rvol, _ = read_mrc(ref)
        if rvol.shape == vol.shape:
            print(f"  (reference from the perturbed poses: correlation "
                  f"{float(np.corrcoef(rvol.ravel(), truth.ravel())[0, 1]):.3f})")
    if result.get("final_resolution"):
        print(f"  gold-standard resolution reported by post-processing: {result['final_resolution']}")


def driver(args):
    t0 = time.time()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sim, imp = out / "sim", out / "import"
    simulate(args, sim)
    write_import_files(sim, imp, args)
    env = scipion_environment(out, args.venv)
    spec = {"out": str(out), "import": str(imp), "np": args.np, "bin": args.bin, "box": args.box,
            "crop": args.crop, "sym": args.sym, "diameter": args.diameter, "max_dose": args.max_dose,
            "extra_refine": args.extra_refine, "dose": 3.0, "px": 4.0}
    spec_file = out / "scipion_spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    t1 = time.time()
    print(f"Simulation and import files: {t1 - t0:.0f} s", flush=True)
    cmd = [str(Path(args.venv) / "bin" / "python"), str(Path(__file__).resolve()), "--scipion_stage", str(spec_file)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, cwd=out)
    t2 = time.time()
    result_file = out / "scipion_result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    print("\n=== Scipion protocols (status) ===")
    for label in PROTOCOLS:
        r = result.get("protocols", {}).get(label)
        if r is None:
            print(f"  {label:30s} not run")
        else:
            print(f"  {label:30s} {r['status']:9s} {r['seconds']:6.0f} s  {r['run']}")
            if r.get("error"):
                print(f"      error: {r['error']}")
            log = Path(result.get("project", "")) / r["run"] / "logs" / "run.stdout"
            if r["run"] and log.exists():
                for line in log.read_text(errors="replace").splitlines():
                    if "relion_" in line and "--" in line and "Custom mpi" not in line:
                        print("      " + re.sub(r"\x1b\[[0-9;]*m", "", line).strip())
    if result.get("extract_extra"):
        print("\n=== Scipion's tilt-series STAR files vs the simulator's (largest |difference|) ===")
        for k, v in compare_tilt_series(sim, result["extract_extra"]).items():
            print(f"  {k:28s} {v:.4g}")
    print("\n=== Refined map vs ground truth ===")
    evaluate(sim, result)
    print(f"\nWall time: {t2 - t0:.0f} s in all ({t1 - t0:.0f} s simulation and files, "
          f"{t2 - t1:.0f} s Scipion); project {result.get('project', '?')}")


# ----------------------------------------------------------------------------------------------
# Scipion part (the Scipion virtual environment's interpreter)
# ----------------------------------------------------------------------------------------------

def scipion_stage(spec_file):
    spec = json.loads(Path(spec_file).read_text())
    out, imp = Path(spec["out"]), Path(spec["import"])
    result = {"protocols": {}}
    result_file = out / "scipion_result.json"

    def save():
        result_file.write_text(json.dumps(result, indent=1))

    import pyworkflow as pw
    from pwem import Domain
    Domain.getPlugins()  # registers the plugins (their variables: RELIONTOMO_HOME, ...) as Scipion does
    from pyworkflow.project import Manager
    from pwem.protocols import ProtImportMask
    from tomo.protocols import ProtImportTs, ProtImportTsCTF, ProtImportTomograms
    from imod.protocols import ProtImodImportTransformationMatrix
    from reliontomo import Plugin
    from reliontomo.protocols import (ProtImportCoordinates3DFromStar, ProtRelion5ExtractSubtomos,
                                      ProtRelion5ReconstructParticle, ProtRelionPostProcess,
                                      ProtRelionRefineSubtomograms)

    print(f"pyworkflow {pw.__version__}; reliontomo home {Plugin.getHome()} (RELION 5 mode: {Plugin.isRe50()})",
          flush=True)
    project = Manager().createProject("sta_scipion_check")  # in $SCIPION_USER_DATA/projects
    os.chdir(project.getPath())  # pyworkflow's paths are relative to the project (as in its tests)
    result["project"] = project.getPath()
    save()

    def ptr(prot, name):
        return prot, name  # (protocol, output name): set as a pointer, as the GUI does

    def launch(label, cls, **params):
        pointers = {k: v for k, v in params.items() if isinstance(v, tuple)}
        prot = project.newProtocol(cls, objLabel=label,
                                   **{k: v for k, v in params.items() if k not in pointers})
        for key, (src, output) in pointers.items():
            getattr(prot, key).set(src)
            getattr(prot, key).setExtended(output)
        t = time.time()
        print(f"--- {label}: {cls.__name__}", flush=True)
        errors = prot.validate()
        if errors:
            result["protocols"][label] = {"status": "invalid", "seconds": 0.0, "run": "",
                                          "error": "; ".join(str(e) for e in errors)}
            save()
            print("    validation failed: " + "; ".join(str(e) for e in errors), flush=True)
            return None
        try:
            project.launchProtocol(prot, wait=True)
        except Exception as exc:  # a failed launch is reported, not raised
            import traceback
            traceback.print_exc()
            result["protocols"][label] = {"status": "exception", "seconds": time.time() - t,
                                          "run": prot.getWorkingDir() or "", "error": repr(exc)}
            save()
            return None
        prot = project.getProtocol(prot.getObjId())
        status = prot.getStatus()
        entry = {"status": status, "seconds": time.time() - t, "run": prot.getWorkingDir()}
        if not prot.isFinished():
            entry["error"] = prot.getErrorMessage() or ""
        result["protocols"][label] = entry
        save()
        print(f"    {status} in {entry['seconds']:.0f} s ({prot.getWorkingDir()})", flush=True)
        return prot if prot.isFinished() else None

    px, dose = spec["px"], spec["dose"]
    p_ts = launch("import tilt-series", ProtImportTs, filesPath=str(imp / "ts"), filesPattern="{TS}.mrc",
                  anglesFrom=2, voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.1,
                  samplingRate=px, tiltAxisAngle=85.0, doseInitial=0.0, dosePerFrame=dose)
    if p_ts is None:
        return
    p_xf = launch("import transformation matrix", ProtImodImportTransformationMatrix,
                  filesPath=str(imp / "xf"), filesPattern="{TS}.xf",
                  inputSetOfTiltSeries=ptr(p_ts, "outputTiltSeries"))
    if p_xf is None:
        return
    p_ctf = launch("import tomo CTFs", ProtImportTsCTF, importFrom=0, filesPath=str(imp / "ctf"),
                   filesPattern="{TS}.txt", inputSetOfTiltSeries=ptr(p_xf, "TiltSeries"))
    p_tomo = launch("import tomograms", ProtImportTomograms, filesPath=str(imp / "tomo"),
                    filesPattern="{TS}.mrc", samplingRate=px)
    if p_ctf is None or p_tomo is None:
        return
    p_coords = launch("import 3D coordinates", ProtImportCoordinates3DFromStar,
                      starFile=str(imp / "coords" / "coordinates.star"), inTomos=ptr(p_tomo, "Tomograms"),
                      boxSize=spec["box"])
    if p_coords is None:
        return
    common = dict(binThreads=1, numberOfMpi=spec["np"], binningFactor=float(spec["bin"]),
                  boxSize=spec["box"], croppedBoxSize=spec["crop"])
    p_ext = launch("extract subtomos", ProtRelion5ExtractSubtomos, inReParticles=ptr(p_coords, "coordinates"),
                   inputCtfTs=ptr(p_ctf, "CTFs"), inputTS=ptr(p_xf, "TiltSeries"), maxDose=spec["max_dose"],
                   write2dStacks=True, **common)
    if p_ext is None:
        return
    result["extract_extra"] = os.path.abspath(p_ext._getExtraPath())
    p_rec = launch("reconstruct particle", ProtRelion5ReconstructParticle,
                   inReParticles=ptr(p_ext, "relionParticles"), symmetry=spec["sym"], **common)
    p_mask = launch("import mask", ProtImportMask, maskPath=str(imp / "mask.mrc"),
                    samplingRate=px * spec["bin"])
    if p_rec is None:
        return
    result["reference_map"] = os.path.abspath(p_rec._getExtraPath("merged.mrc"))
    save()
    p_ref = launch("3D auto-refine", ProtRelionRefineSubtomograms, inReParticles=ptr(p_ext, "relionParticles"),
                   referenceVolume=ptr(p_rec, "average"), symmetry=spec["sym"], maskDiameter=spec["diameter"],
                   initialLowPassFilterA=30, angularSamplingDeg=3, localSearchAutoSampling=3,
                   offsetSearchRangePix=3, offsetSearchStepPix=0.5, binThreads=1, numberOfMpi=max(3, spec["np"]),
                   extraParams=spec["extra_refine"])
    if p_ref is None:
        return
    result["refined_map"] = os.path.abspath(p_ref._getExtraPath("_class001.mrc"))
    save()
    if p_mask is None:
        return
    p_post = launch("post-processing", ProtRelionPostProcess, inVolume=ptr(p_ref, "average"),
                    solventMask=ptr(p_mask, "outputMask"))
    if p_post is not None:
        star = Path(p_post._getExtraPath("PostProcess", "postprocess.star"))
        if star.exists():
            for line in star.read_text().splitlines():
                if "_rlnFinalResolution" in line:
                    result["final_resolution"] = line.split()[1] + " Å"
    save()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default="/tmp/scipion/venv", help="virtual environment that holds Scipion")
    ap.add_argument("--out", default="/tmp/scipion/check", help="work directory (replaced)")
    ap.add_argument("--np", type=int, default=3, help="MPI ranks of the RELION protocols")
    ap.add_argument("--model", default=str(SHARED / "data" / "models" / "job080.cif"))
    ap.add_argument("--sym", default="C6")
    ap.add_argument("--tomograms", type=int, default=2)
    ap.add_argument("--particles", type=int, default=24, help="particles per tomogram")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", type=int, default=2, help="binning of extraction and refinement")
    ap.add_argument("--box", type=int, default=32, help="extraction box (binned pixels)")
    ap.add_argument("--crop", type=int, default=24, help="cropped box (binned pixels)")
    ap.add_argument("--diameter", type=int, default=150, help="particle / mask diameter (Å)")
    ap.add_argument("--max_dose", type=int, default=130, help="Scipion's 'Maximum dose' of the extraction")
    ap.add_argument("--extra_refine", default="--iter 8 --random_seed 1",
                    help="the refine protocol's 'Additional arguments'")
    ap.add_argument("--scipion_stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scipion_stage:
        scipion_stage(args.scipion_stage)
    else:
        driver(args)


if __name__ == "__main__":
    main()
