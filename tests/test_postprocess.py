"""sta_postprocess: conformance with RELION's PostProcess outputs, truth, plots, errors."""

import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from sta.commands.postprocess import main
from sta.io.mrc import write_mrc
from sta.io.star import list_table, loop_table, read_star, write_star
from sta.kernels import filters
from sta.kernels import fsc as fsck
from sta.workflows.mask import mask_from_map
from tests.conftest import need, one_error_line

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "relion-reference" / "conformance"

# README command lines (program name replaced); run from a copy of the conformance directory
README_COMMANDS = {
    "bin1_C1": "--mask MaskCreate/mask_bin1.mrc --i Reconstruct/bin1_C1/half1.mrc --i2 Reconstruct/bin1_C1/half2.mrc "
               "--o PostProcess/bin1_C1/postprocess --angpix 4 --auto_bfac --autob_lowres 20 --random_seed 0",
    "bin1_C6": "--mask MaskCreate/mask_bin1.mrc --i Reconstruct/bin1_C6/half1.mrc --i2 Reconstruct/bin1_C6/half2.mrc "
               "--o PostProcess/bin1_C6/postprocess --angpix 4 --auto_bfac --autob_lowres 20 --random_seed 0",
    "bin2_C1": "--mask MaskCreate/mask_bin2.mrc --i Reconstruct/bin2_C1/half1.mrc --i2 Reconstruct/bin2_C1/half2.mrc "
               "--o PostProcess/bin2_C1/postprocess --angpix 8 --adhoc_bfac -400 --random_seed 0",
}
PHASE_WARNING = "WARNING: The phase-randomised FSC is larger than 0.10 at the estimated resolution!"


def _conformance():
    need(CONFORMANCE / "PostProcess")
    return CONFORMANCE


@pytest.mark.parametrize("variant", sorted(README_COMMANDS))
def test_conformance_with_relion(variant, tmp_path, monkeypatch, capsys):
    ref_dir = _conformance()
    monkeypatch.chdir(tmp_path)
    for sub in ("Reconstruct", "MaskCreate"):
        os.symlink(ref_dir / sub, sub)
    assert main(README_COMMANDS[variant].split()) == 0
    captured = capsys.readouterr()
    ours = read_star(tmp_path / "PostProcess" / variant / "postprocess.star")
    ref = read_star(ref_dir / "PostProcess" / variant / "postprocess.star")

    assert list(ours.keys()) == list(ref.keys()) == ["general", "fsc", "guinier"]
    for name in ref:
        assert ours[name].labels == ref[name].labels, name
        assert len(ours[name]) == len(ref[name]), name
    g_ours, g_ref = ours["general"].as_dict(), ref["general"].as_dict()
    for key, value in g_ref.items():
        if isinstance(value, str):
            assert g_ours[key] == value, key
    f_ours, f_ref = ours["fsc"].df, ref["fsc"].df
    dev = {c: float(np.abs(f_ours[c] - f_ref[c]).max()) for c in f_ref.columns if c != "rlnSpectralIndex"}
    shell_from = int(round(48 * 4 / g_ref["rlnRandomiseFrom"])) if variant.startswith("bin1") else \
        int(round(24 * 8 / g_ref["rlnRandomiseFrom"]))
    beyond = np.abs(f_ours["rlnFourierShellCorrelationCorrected"] - f_ref["rlnFourierShellCorrelationCorrected"])
    b_ours, b_ref = g_ours["rlnBfactorUsedForSharpening"], g_ref["rlnBfactorUsedForSharpening"]
    with mrcfile.open(tmp_path / "PostProcess" / variant / "postprocess.mrc") as m, \
            mrcfile.open(ref_dir / "PostProcess" / variant / "postprocess.mrc") as r:
        rel_rms = float(np.linalg.norm(m.data - r.data) / np.linalg.norm(r.data))
        assert m.voxel_size.x == pytest.approx(r.voxel_size.x)
    with capsys.disabled():
        print(f"\n{variant}: resolution ours {g_ours['rlnFinalResolution']:.6f} RELION "
              f"{g_ref['rlnFinalResolution']:.6f}; B ours {b_ours:.5f} RELION {b_ref:.5f}; randomise from "
              f"{g_ours['rlnRandomiseFrom']:.6f}/{g_ref['rlnRandomiseFrom']:.6f}; max |dFSC| unmasked "
              f"{dev['rlnFourierShellCorrelationUnmaskedMaps']:.2g} masked "
              f"{dev['rlnFourierShellCorrelationMaskedMaps']:.2g} corrected {beyond.max():.2g} "
              f"phase-randomised {dev['rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps']:.2g}; "
              f"map rel. RMS {rel_rms:.2g}")
    assert g_ours["rlnFinalResolution"] == pytest.approx(g_ref["rlnFinalResolution"], abs=1e-6)
    assert g_ours["rlnRandomiseFrom"] == pytest.approx(g_ref["rlnRandomiseFrom"], abs=1e-6)
    assert dev["rlnFourierShellCorrelationUnmaskedMaps"] <= 1e-4
    assert dev["rlnFourierShellCorrelationMaskedMaps"] <= 1e-4
    assert beyond[shell_from:].max() <= 0.03
    assert abs(b_ours - b_ref) <= 0.05 * abs(b_ref)
    # RELION's random numbers are reproduced: everything agrees to the printed digits
    assert max(dev.values()) <= 2e-6
    assert rel_rms < 1e-5
    g_cols = ref["guinier"].df.columns
    assert np.abs(ours["guinier"].df[g_cols].to_numpy() - ref["guinier"].df[g_cols].to_numpy()).max() < 2e-5
    # what pipelines grep
    final = [ln for ln in captured.out.splitlines() if "+ FINAL RESOLUTION:" in ln]
    assert len(final) == 1 and float(final[0].split()[-1]) == pytest.approx(g_ref["rlnFinalResolution"], rel=1e-5)
    assert "+ apply b-factor of:" in captured.out
    assert (PHASE_WARNING in captured.err) == (variant == "bin2_C1")  # as in RELION's logs
    for ext in ("_fsc.xml", "_fsc.dat"):
        assert (tmp_path / "PostProcess" / variant / f"postprocess{ext}").read_text() == \
            (ref_dir / "PostProcess" / variant / f"postprocess{ext}").read_text()


# ----------------------------------------------------------------------------- synthetic data


def truth_map(box, rng, n_atoms=400, radius=15.0, bfactor=800.0, angpix=4.0):
    """Random point 'atoms' in a sphere, blurred by a B-factor: a map with power to Nyquist."""
    pts = rng.uniform(-1, 1, (n_atoms * 3, 3))
    pts = pts[np.linalg.norm(pts, axis=1) < 1][:n_atoms] * radius + box // 2
    vol = np.zeros((box,) * 3)
    idx = np.rint(pts).astype(int)
    np.add.at(vol, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)
    spec = np.fft.rfftn(vol)
    filters.bfactor_spectrum(spec, box, bfactor, angpix)
    return np.fft.irfftn(spec, s=vol.shape, axes=(0, 1, 2))


@pytest.fixture
def halves(tmp_path):
    """Box-32 half maps = truth + independent white noise, a mask, at 4 Å/px."""
    rng = np.random.default_rng(11)
    truth = truth_map(32, rng, n_atoms=300, radius=10.0)
    sigma = 2.0 * truth.std()
    h1 = truth + rng.normal(0, sigma, truth.shape)
    h2 = truth + rng.normal(0, sigma, truth.shape)
    mask = mask_from_map(truth, 4.0, 15, 0.1 * truth.max(), 2, 3)
    d = tmp_path / "maps"
    write_mrc(d / "run_half1_class001_unfil.mrc", h1, 4.0)
    write_mrc(d / "run_half2_class001_unfil.mrc", h2, 4.0)
    write_mrc(d / "mask.mrc", mask, 4.0)
    return d


def test_truth_resolution_relation(tmp_path, capsys):
    """FSC_halves(corrected, masked) = 0.143 where FSC(merged, truth) = 0.5, within one shell.

    Half maps are made by adding independent white Gaussian noise to a known map (no
    reconstruction); the signal falls off with a B-factor of 800 Å², so the SSNR decreases
    smoothly with resolution.
    """
    rng = np.random.default_rng(0)
    box, angpix = 48, 4.0
    truth = truth_map(box, rng)
    sigma = 3.0 * truth.std()
    h1 = truth + rng.normal(0, sigma, truth.shape)
    h2 = truth + rng.normal(0, sigma, truth.shape)
    mask = mask_from_map(truth, angpix, 15, 0.1 * truth.max(), 3, 4)
    for name, vol in (("half1", h1), ("half2", h2), ("mask", mask)):
        write_mrc(tmp_path / f"{name}.mrc", vol, angpix)
    assert main(["--i", str(tmp_path / "half1.mrc"), "--mask", str(tmp_path / "mask.mrc"), "--o",
                 str(tmp_path / "pp" / "postprocess"), "--angpix", "4", "--auto_bfac"]) == 0
    star = read_star(tmp_path / "pp" / "postprocess.star")
    res = star["general"].as_dict()["rlnFinalResolution"]
    halves_shell = int(round(box * angpix / res))
    merged = 0.5 * (h1 + h2)
    truth_shell_masked = fsck.resolution_shell(fsck.fsc(merged * mask, truth * mask), 0.5)
    unmasked_halves = fsck.resolution_shell(star["fsc"].df["rlnFourierShellCorrelationUnmaskedMaps"], 0.143)
    truth_shell_unmasked = fsck.resolution_shell(fsck.fsc(merged, truth), 0.5)
    with capsys.disabled():
        print(f"\ntruth: masked corrected FSC 0.143 at shell {halves_shell} ({res:.2f} Å); FSC(merged·mask, "
              f"truth·mask) 0.5 at shell {truth_shell_masked} ({box * angpix / truth_shell_masked:.2f} Å); "
              f"unmasked: halves 0.143 at {unmasked_halves}, truth 0.5 at {truth_shell_unmasked}")
    assert abs(halves_shell - truth_shell_masked) <= 1
    assert abs(unmasked_halves - truth_shell_unmasked) <= 1
    assert 8 <= halves_shell < box // 2  # the test is not degenerate (not at Nyquist)


def test_plots_and_pdf(halves, tmp_path):
    mpimg = pytest.importorskip("matplotlib.image")
    from sta.io.postprocess_files import PLOT_SIZE_PX

    root = tmp_path / "pp" / "postprocess"
    assert main(["--i", str(halves / "run_half1_class001_unfil.mrc"), "--mask", str(halves / "mask.mrc"),
                 "--o", str(root), "--angpix", "4", "--auto_bfac", "--autob_lowres", "20"]) == 0
    for name in ("postprocess_fsc.png", "postprocess_guinier.png"):
        img = np.rint(mpimg.imread(root.parent / name)[..., :3] * 255).astype(np.uint8)
        assert img.shape == (PLOT_SIZE_PX[1], PLOT_SIZE_PX[0], 3), name
        assert img.astype(float).var() > 0
        colours = np.unique(img.reshape(-1, 3), axis=0)
        assert len(colours) >= 5, name
        # the curves are drawn: pure-ish red and blue pixels are present
        assert np.any((img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)), name
        assert np.any((img[..., 2] > 200) & (img[..., 0] < 80) & (img[..., 1] < 80)), name
    pdf = (root.parent / "logfile.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + pdf.count(b"/Type /Page>") >= 2


def _write_map(path, data, px=4.0):
    write_mrc(path, data, px)
    return str(path)


def test_bad_input_one_line(halves, tmp_path, capsys):
    h1 = str(halves / "run_half1_class001_unfil.mrc")
    out = ["--o", str(tmp_path / "pp" / "postprocess"), "--angpix", "4"]
    # missing half 2 (found by replacing half1 with half2)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    os.symlink(h1, lonely / "x_half1.mrc")
    assert main(["--i", str(lonely / "x_half1.mrc")] + out) == 1
    assert "x_half2.mrc" in one_error_line(capsys)
    # mask values outside [0, 1]
    bad_mask = _write_map(tmp_path / "badmask.mrc", np.full((32, 32, 32), 1.5))
    assert main(["--i", h1, "--mask", bad_mask] + out) == 1
    line = one_error_line(capsys)
    assert "badmask.mrc" in line and "[0, 1]" in line
    # maps of different sizes
    small = _write_map(tmp_path / "small_half2.mrc", np.zeros((24, 24, 24)))
    assert main(["--i", h1, "--i2", small] + out) == 1
    assert "differ in size" in one_error_line(capsys)
    # NaN in a map
    nan_map = np.zeros((32, 32, 32), np.float32)
    nan_map[3, 4, 5] = np.nan
    nan_path = _write_map(tmp_path / "nan_half2.mrc", nan_map)
    assert main(["--i", h1, "--i2", nan_path] + out) == 1
    assert "nan_half2.mrc" in one_error_line(capsys)
    # a name without half1/half2 and no --i2; contradictory B-factor options
    assert main(["--i", _write_map(tmp_path / "map.mrc", np.zeros((32, 32, 32)))] + out) == 1
    assert "--i2" in one_error_line(capsys)
    assert main(["--i", h1, "--auto_bfac", "--adhoc_bfac", "-100"] + out) == 1
    assert "--adhoc_bfac" in one_error_line(capsys)
    # mask of another size
    assert main(["--i", h1, "--mask", small] + out) == 1
    assert "mask size" in one_error_line(capsys)


def test_same_seed_same_star(halves, tmp_path):
    args = ["--i", str(halves / "run_half1_class001_unfil.mrc"), "--mask", str(halves / "mask.mrc"),
            "--o", str(tmp_path / "pp" / "postprocess"), "--angpix", "4", "--adhoc_bfac", "-200"]
    star = tmp_path / "pp" / "postprocess.star"
    label = "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"
    assert main(args + ["--random_seed", "3"]) == 0
    first = star.read_text()
    first_curve = read_star(star)["fsc"].df[label].to_numpy()
    assert main(args + ["--random_seed", "3"]) == 0
    assert star.read_text() == first
    assert main(args + ["--random_seed", "4"]) == 0
    other = read_star(star)["fsc"].df[label].to_numpy()
    assert not np.allclose(other, first_curve)


def test_unmasked_half_maps_lowpass_and_pipeline_control(halves, tmp_path, capsys):
    root = tmp_path / "pp" / "postprocess"
    job = tmp_path / "pp"
    assert main(["--i", str(halves / "run_half1_class001_unfil.mrc"), "--o", str(root), "--angpix", "4",
                 "--adhoc_bfac", "-300", "--low_pass", "16", "--half_maps", "--pipeline_control", str(job)]) == 0
    out = capsys.readouterr().out
    assert "== Not performing any masking ... " in out and "+ FINAL RESOLUTION:" in out
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    star = read_star(f"{root}.star")
    assert star["fsc"].labels == ["rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution",
                                  "rlnFourierShellCorrelationUnmaskedMaps"]
    assert "rlnMaskName" not in star["general"].labels
    assert star["guinier"].labels == ["rlnResolutionSquared", "rlnLogAmplitudesOriginal",
                                      "rlnLogAmplitudesWeighted", "rlnLogAmplitudesSharpened"]
    with mrcfile.open(f"{root}.mrc") as m:
        full = m.data.astype(np.float64)
    halves_out = []
    for k in (1, 2):
        with mrcfile.open(f"{root}_half{k}.mrc") as m:
            halves_out.append(m.data.astype(np.float64))
    # the same linear filter on both halves: their average is the post-processed map
    np.testing.assert_allclose(0.5 * (halves_out[0] + halves_out[1]), full, atol=1e-5 * np.abs(full).max())
    # low-pass at 16 Å = shell 8 with a 2-shell edge: nothing beyond shell 9
    spec = np.abs(np.fft.rfftn(full))
    r = np.sqrt(fsck.freq_squared(full.shape))
    assert spec[r > 9.01].max() < 1e-6 * spec.max()


def test_mtf_division(halves, tmp_path):
    mtf = tmp_path / "mtf.star"
    write_star(mtf, [loop_table("", pd.DataFrame({"rlnResolutionInversePixel": np.linspace(0, 0.5, 21),
                                                  "rlnMtfValue": np.full(21, 0.5)}))])
    root = tmp_path / "pp" / "postprocess"
    assert main(["--i", str(halves / "run_half1_class001_unfil.mrc"), "--o", str(root), "--angpix", "4",
                 "--mtf", str(mtf), "--skip_fsc_weighting", "--adhoc_bfac", "-100"]) == 0
    g = read_star(f"{root}.star")["guinier"].df
    assert "rlnLogAmplitudesWeighted" not in g.columns
    diff = (g["rlnLogAmplitudesMTFCorrected"] - g["rlnLogAmplitudesOriginal"]).to_numpy()
    np.testing.assert_allclose(diff[:-1], np.log(2.0), atol=2e-5)  # all shells below Nyquist


def test_optimisation_set(halves, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_star("optimisation_set.star", [list_table("", {
        "rlnTomoParticlesFile": "particles.star",
        "rlnTomoReferenceMap1File": "maps/run_half1_class001_unfil.mrc",
        "rlnTomoReferenceMap2File": "maps/run_half2_class001_unfil.mrc"})])
    assert main(["--ios", "optimisation_set.star", "--o", "PostProcess/job001/postprocess", "--angpix", "4",
                 "--mask", "maps/mask.mrc"]) == 0
    oset = read_star("PostProcess/job001/postprocess_optimisation_set.star")
    d = next(iter(oset.values())).as_dict()
    assert d["rlnTomoReferenceFscFile"] == "PostProcess/job001/postprocess.star"
    assert d["rlnTomoParticlesFile"] == "particles.star"
    assert d["rlnTomoReferenceMap1File"] == "maps/run_half1_class001_unfil.mrc"
    general = read_star("PostProcess/job001/postprocess.star")["general"].as_dict()
    assert general["rlnUnfilteredMapHalf2"] == "maps/run_half2_class001_unfil.mrc"


def test_molweight_interpolate_and_randomize_at_A(halves, tmp_path, capsys):
    root = tmp_path / "pp" / "postprocess"
    assert main(["--i", str(halves / "run_half1_class001_unfil.mrc"), "--mask", str(halves / "mask.mrc"),
                 "--o", str(root), "--angpix", "4", "--molweight", "300", "--interpolate",
                 "--randomize_at_A", "30", "--adhoc_bfac", "-100"]) == 0
    final = [ln for ln in capsys.readouterr().out.splitlines() if "+ FINAL RESOLUTION:" in ln][0]
    star = read_star(f"{root}.star")
    general = star["general"].as_dict()
    assert general["rlnRandomiseFrom"] == pytest.approx(32 * 4 / int(32 * 4 / 30))
    frac = 0.476 * (32 * 4.0) ** 3 * 0.81 / 300e3
    assert general["rlnMolecularWeight"] == 300 and general["rlnParticleBoxFractionMolecularWeight"] == \
        pytest.approx(frac, rel=1e-5)
    fsc = star["fsc"].df
    assert list(fsc.columns)[3:6] == ["rlnFourierShellCorrelationCorrected",
                                      "rlnFourierShellCorrelationParticleMaskFraction",
                                      "rlnFourierShellCorrelationParticleMolWeight"]
    unm = fsc["rlnFourierShellCorrelationUnmaskedMaps"]
    np.testing.assert_allclose(fsc["rlnFourierShellCorrelationParticleMolWeight"],
                               frac * unm / (1 + (frac - 1) * unm), atol=2e-6)
    # "X (Y)": the interpolated resolution lies between the shell found and the next one
    res, frac_res = float(final.split()[-2]), float(final.split()[-1].strip("()"))
    assert res == pytest.approx(general["rlnFinalResolution"], rel=1e-5)
    assert 32 * 4 / (32 * 4 / res + 1) <= frac_res <= res
