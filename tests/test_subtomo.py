"""sta_subtomo: conformance with RELION's stacks and STAR files, options, 3D mode, MPI, bad input."""

import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from sta.commands import subtomo
from sta.io.star import parse_int_vector, read_star
from tests.conftest import REFERENCE, need, requires_mpirun

CONF = REFERENCE / "conformance"
VARIANTS = [("bin1_float32", 48, 1), ("bin2_float32", 24, 2), ("bin1_float16", 48, 1), ("bin2_float16", 24, 2)]


def _run(argv):
    code = subtomo.main([str(a) for a in argv])
    assert code == 0
    return code


def _stacks(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(root.glob("Subtomograms/*/*_stack2d.mrcs"))}


def _image_errors(ours, ref):
    """Per-image relative RMS difference and Pearson correlation, (n,) each."""
    a = ours.reshape(len(ours), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    cc = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    return rel, cc


def _particles(path):
    return read_star(path)["particles"].df


def _visible(df):
    return np.array([parse_int_vector(v) for v in df["rlnTomoVisibleFrames"]], dtype=bool)


def _assert_star_equal(ours_path, ref_path, ours_dir, ref_dir):
    """Same tables, same columns in the same order, strings equal (paths modulo --o), numbers to 1e-5."""
    ours, ref = read_star(ours_path), read_star(ref_path)
    assert list(ours) == list(ref)
    for name in ref:
        a, b = ours[name].df, ref[name].df
        assert list(a.columns) == list(b.columns), name
        assert len(a) == len(b), name
        for col in b.columns:
            if b[col].dtype == object:
                got = [str(v).replace(ours_dir, ref_dir) for v in a[col]]
                assert got == [str(v) for v in b[col]], (name, col)
            else:
                np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), atol=1e-5, rtol=0,
                                           err_msg=f"{name}/{col}")


@pytest.mark.parametrize("variant,box,binning", VARIANTS)
def test_conformance_with_relion(variant, box, binning, tmp_path, monkeypatch):
    ref_dir = CONF / "Subtomo" / variant
    need(ref_dir / "particles.star")
    monkeypatch.chdir(CONF)
    out = tmp_path / variant
    float16 = variant.endswith("float16")
    _run(["--i", "optimisation_set.star", "--b", box, "--bin", binning, "--stack2d"]
         + (["--float16"] if float16 else []) + ["--o", f"{out}/", "--j", "2", "--theme", "classic"])
    refs, ours = _stacks(ref_dir), _stacks(out)
    assert list(ours) == list(refs) and len(refs) == 48
    worst_rel, worst_cc = 0.0, 1.0
    for rel_path, ref_file in refs.items():
        with mrcfile.open(ref_file, permissive=True) as r, mrcfile.open(ours[rel_path]) as o:
            assert o.data.shape == r.data.shape, rel_path
            assert int(o.header.mode) == int(r.header.mode) == (12 if float16 else 2)
            assert abs(float(o.voxel_size.x) - float(r.voxel_size.x)) < 1e-6
            assert abs(float(o.voxel_size.x) - 4.0 * binning) < 1e-6
            rel, cc = _image_errors(o.data, r.data)
        worst_rel, worst_cc = max(worst_rel, rel.max()), min(worst_cc, cc.min())
    # measured: float32 3.5e-7 / cc 1 - 1e-13; float16 1.7e-4 (RELION's own float16 rounding)
    assert worst_rel < (1e-3 if float16 else 2e-6), worst_rel
    assert worst_cc > (0.99999 if float16 else 0.999999), worst_cc
    ref_prefix = f"Subtomo/{variant}/"
    _assert_star_equal(out / "particles.star", ref_dir / "particles.star", f"{out}/", ref_prefix)
    _assert_star_equal(out / "optimisation_set.star", ref_dir / "optimisation_set.star", f"{out}/", ref_prefix)
    assert not (out / "motion.star").exists()
    assert (out / "note.txt").read_text().startswith("Command:")


def test_max_dose_min_frames_and_motion(tmp_path, monkeypatch):
    """--max_dose removes high-dose tilts, --min_frames drops particles, and the trajectory
    set of the kept particles is re-written (zero shifts: same geometry as RELION's run)."""
    from sta.io.trajectories import TrajectorySet

    ref_dir = CONF / "Subtomo" / "bin2_float32"
    need(ref_dir / "particles.star")
    monkeypatch.chdir(CONF)
    ref = _particles(ref_dir / "particles.star")
    names = ref["rlnTomoParticleName"].tolist()
    TrajectorySet.from_shifts({n: np.zeros((41, 3)) for n in names}).write(tmp_path / "motion_in.star")
    out = tmp_path / "md"
    _run(["--i", "optimisation_set.star", "--mot", tmp_path / "motion_in.star", "--b", 24, "--bin", 2, "--stack2d",
          "--max_dose", 60, "--min_frames", 15, "--o", f"{out}/", "--j", 1])
    dose = read_star("tilt_series/TS_01.star")["TS_01"].df["rlnMicrographPreExposure"].to_numpy()
    expected_vis = _visible(ref) & (dose <= 60)[None, :]
    keep = expected_vis.sum(axis=1) >= 15
    assert 0 < (~keep).sum() < len(keep)
    got = _particles(out / "particles.star")
    assert got["rlnTomoParticleName"].tolist() == [n for n, k in zip(names, keep) if k]
    np.testing.assert_array_equal(_visible(got), expected_vis[keep])
    # the images are RELION's images of the tilts that remain
    for name, vis_ref, vis_new in zip(got["rlnTomoParticleName"], _visible(ref)[keep], expected_vis[keep]):
        rel_file = f"Subtomograms/{name}_stack2d.mrcs"
        r = mrcfile.read(ref_dir / rel_file)[vis_new[vis_ref]]
        rel, _ = _image_errors(mrcfile.read(out / rel_file), r)
        assert rel.max() < 2e-6
    motion = TrajectorySet.read(out / "motion.star")
    assert motion.names() == got["rlnTomoParticleName"].tolist()
    opt = read_star(out / "optimisation_set.star")[""].as_dict()
    assert opt["rlnTomoTrajectoriesFile"] == f"{out}/motion.star"
    assert opt["rlnTomoParticlesFile"] == f"{out}/particles.star"


def test_motion_shift_equals_moved_particle(tmp_path, monkeypatch):
    """A constant trajectory shift d (Å) gives the stacks of particles moved by d (--no_ctf,
    whose images do not depend on the defocus)."""
    from sta.io.particles import ParticleSet
    from sta.io.trajectories import TrajectorySet

    need(CONF / "particles.star")
    monkeypatch.chdir(CONF)
    d = np.array([14.0, -9.0, 6.0])
    ps = ParticleSet.read("particles.star", tomograms="tomograms.star")
    TrajectorySet.from_shifts({n: np.tile(d, (41, 1)) for n in ps.df["rlnTomoParticleName"]}).write(
        tmp_path / "motion.star")
    for j, axis in enumerate("XYZ"):
        ps.df[f"rlnCenteredCoordinate{axis}Angst"] += d[j]
    ps.write(tmp_path / "moved.star")
    common = ["--t", "tomograms.star", "--b", 24, "--bin", 2, "--stack2d", "--no_ctf", "--j", 1]
    _run(["--p", "particles.star", "--mot", tmp_path / "motion.star", "--o", f"{tmp_path}/A/"] + common)
    _run(["--p", tmp_path / "moved.star", "--o", f"{tmp_path}/B/"] + common)
    a, b = _stacks(tmp_path / "A"), _stacks(tmp_path / "B")
    assert list(a) == list(b)
    for key in a:
        x, y = mrcfile.read(a[key]), mrcfile.read(b[key])
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max(), key
    assert not (tmp_path / "A" / "motion.star").exists()  # nothing removed: not re-written


def test_offsets_folded_or_kept(tmp_path, monkeypatch):
    """Default: rlnOrigin*Angst folded into the coordinates (A_sub·o) and zeroed, and the
    folded set re-extracts to the same stacks; --dont_apply_offsets keeps the origins and
    ignores them, giving RELION's stacks of the unshifted particles."""
    from sta.geometry.euler import euler_to_matrix

    ref_dir = CONF / "Subtomo" / "bin2_float32"
    need(CONF / "particles_perturbed.star")
    monkeypatch.chdir(CONF)
    common = ["--t", "tomograms.star", "--b", 24, "--bin", 2, "--stack2d", "--j", 1]
    _run(["--p", "particles_perturbed.star", "--o", f"{tmp_path}/F/"] + common)
    _run(["--p", "particles_perturbed.star", "--dont_apply_offsets", "--o", f"{tmp_path}/K/"] + common)
    src = _particles("particles_perturbed.star")
    folded, kept = _particles(tmp_path / "F" / "particles.star"), _particles(tmp_path / "K" / "particles.star")
    cen = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    org = [f"rlnOrigin{a}Angst" for a in "XYZ"]
    a_sub = euler_to_matrix(*src[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt",
                                  "rlnTomoSubtomogramPsi"]].to_numpy(float).T)
    expected = src[cen].to_numpy(float) - np.einsum("nij,nj->ni", a_sub, src[org].to_numpy(float))
    assert np.abs(src[org].to_numpy(float)).max() > 1.0
    np.testing.assert_allclose(folded[cen].to_numpy(float), expected, atol=1e-5)
    assert np.all(folded[org].to_numpy(float) == 0)
    np.testing.assert_allclose(kept[cen].to_numpy(float), src[cen].to_numpy(float), atol=1e-5)
    np.testing.assert_allclose(kept[org].to_numpy(float), src[org].to_numpy(float), atol=1e-5)
    for key, ref_file in _stacks(ref_dir).items():
        rel, _ = _image_errors(mrcfile.read(tmp_path / "K" / key), mrcfile.read(ref_file))
        assert rel.max() < 2e-6, key
    _run(["--p", tmp_path / "F" / "particles.star", "--o", f"{tmp_path}/F2/"] + common)
    diffs = []
    for key, path in _stacks(tmp_path / "F").items():
        first, again = mrcfile.read(path), mrcfile.read(tmp_path / "F2" / key)
        assert first.shape == again.shape
        diffs.append(np.linalg.norm(first - again) / np.linalg.norm(first))
        if first.shape == mrcfile.read(ref_dir / key).shape:
            diffs_ref = _image_errors(first, mrcfile.read(ref_dir / key))[0]
            assert diffs_ref.max() > 1e-3  # the offsets did move the particles
    assert max(diffs) < 1e-4  # coordinates are re-read at printed precision


def test_apply_orientations_and_crop(tmp_path, monkeypatch):
    """--apply_orientations: subtomogram angles = A_sub·A_part (jaz angles), particle angles 0,
    2D stacks unchanged.  --crop: stack and rlnImageSize = crop, margin bin·crop/2."""
    from sta.geometry.euler import euler_to_matrix, matrix_to_euler_simple

    ref_dir = CONF / "Subtomo" / "bin2_float32"
    need(ref_dir / "particles.star")
    monkeypatch.chdir(CONF)
    _run(["--i", "optimisation_set.star", "--b", 24, "--bin", 2, "--stack2d", "--apply_orientations",
          "--o", f"{tmp_path}/O/", "--j", 1])
    src, got = _particles("particles.star"), _particles(tmp_path / "O" / "particles.star")
    m = (euler_to_matrix(*src[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]]
                         .to_numpy(float).T)
         @ euler_to_matrix(*src[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float).T))
    expected = np.stack(matrix_to_euler_simple(m), axis=1)
    sub = got[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]].to_numpy(float)
    np.testing.assert_allclose(sub, expected, atol=1e-5)
    assert np.all(got[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float) == 0)
    for key, ref_file in _stacks(ref_dir).items():
        rel, _ = _image_errors(mrcfile.read(tmp_path / "O" / key), mrcfile.read(ref_file))
        assert rel.max() < 2e-6
    _run(["--i", "optimisation_set.star", "--b", 24, "--crop", 16, "--bin", 2, "--stack2d",
          "--o", f"{tmp_path}/C/", "--j", 1])
    cropped = _particles(tmp_path / "C" / "particles.star")
    assert read_star(tmp_path / "C" / "particles.star")["optics"].df["rlnImageSize"].tolist() == [16]
    vis_ref, vis_crop = _visible(_particles(ref_dir / "particles.star")), _visible(cropped)
    assert np.all(vis_crop >= vis_ref) and vis_crop.sum() > vis_ref.sum()
    stack = mrcfile.read(tmp_path / "C" / "Subtomograms" / "TS_01" / "2_stack2d.mrcs")
    assert stack.shape == (vis_crop[1].sum(), 16, 16)


def test_output_order_and_names(tmp_path, monkeypatch):
    """Particles come out tomogram by tomogram in tomogram-set order, then in file order;
    names without '/' get one directory per tomogram (<o>Subtomograms/<tomo>/<name>)."""
    from sta.io.particles import ParticleSet

    ref_dir = CONF / "Subtomo" / "bin2_float32"
    need(ref_dir / "particles.star")
    monkeypatch.chdir(CONF)
    ps = ParticleSet.read("particles.star", tomograms="tomograms.star")
    df = ps.df.iloc[::-1].reset_index(drop=True)
    old = df["rlnTomoParticleName"].tolist()
    df["rlnTomoParticleName"] = [f"p{n.split('/')[1]}" for n in old]
    ParticleSet.from_tables(df, ps.optics, ps.general).write(tmp_path / "reversed.star")
    _run(["--p", tmp_path / "reversed.star", "--t", "tomograms.star", "--b", 24, "--bin", 2, "--stack2d",
          "--o", f"{tmp_path}/R/", "--j", 1])
    got = _particles(tmp_path / "R" / "particles.star")
    expected = [n for t in ("TS_01", "TS_02") for n in old if n.startswith(t)]
    assert got["rlnTomoName"].tolist() == [n.split("/")[0] for n in expected]
    assert got["rlnImageName"].tolist() == [f"{tmp_path}/R/Subtomograms/{n.split('/')[0]}/p{n.split('/')[1]}"
                                            "_stack2d.mrcs" for n in expected]
    ref = _particles(ref_dir / "particles.star").set_index("rlnTomoParticleName")
    for name, image, vis in zip(expected, got["rlnImageName"], _visible(got)):
        np.testing.assert_array_equal(vis, parse_int_vector(ref.loc[name, "rlnTomoVisibleFrames"]).astype(bool))
        rel, _ = _image_errors(mrcfile.read(image), mrcfile.read(ref_dir / f"Subtomograms/{name}_stack2d.mrcs"))
        assert rel.max() < 2e-6


def _simulate(tmp_path, **kw):
    from sta.simulate.project import SimulationParameters, simulate_project

    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=12, box=32, pixel_size=6.0, image_size=(200, 200),
                             tomo_size=(200, 200, 70), snr=0, seed=5, subtomo_fraction=0.5, **kw)
    simulate_project(p, str(tmp_path))


def _rotate(vol, a):
    """out(r) = vol(a·r) about the voxel n//2 (r, a in x, y, z order; arrays z, y, x)."""
    from scipy.ndimage import affine_transform

    n = vol.shape[0]
    p = np.eye(3)[::-1]
    mat = p @ a @ p
    c = np.full(3, n // 2, dtype=float)
    return affine_transform(vol, mat, offset=c - mat @ c, order=1)


def test_pseudo_subtomograms_3d(tmp_path, monkeypatch):
    """3D mode on a noise-free simulation: RELION's file shapes and 1/px header quirk; the
    CTF-corrected sum of all particles' data/weights (--apply_orientations puts them in the
    reference frame) correlates with the truth at cc > 0.98 (measured 0.993) and FSC >= 0.95
    to shell 5; default-mode volumes rotated by A_part match the --apply_orientations ones (cc > 0.99);
    --no_ctf gives CTF² weights equal to the multiplicity; --cone_weight scales the weights by
    1 - exp(-t²/2)."""
    from sta.geometry.euler import euler_to_matrix
    from sta.kernels.fourier import centred_irfft, centred_rfft
    from sta.kernels.fsc import fsc
    from sta.kernels.insert import cone_weight

    _simulate(tmp_path)
    monkeypatch.chdir(tmp_path)
    _run(["--i", "optimisation_set.star", "--b", 32, "--o", "A/", "--j", 2, "--apply_orientations"])
    _run(["--i", "optimisation_set.star", "--b", 32, "--o", "D/", "--j", 2])
    data_files = sorted((tmp_path / "A" / "Subtomograms").glob("*/*_data.mrc"))
    assert len(data_files) == 12
    with mrcfile.open(data_files[0]) as d, mrcfile.open(str(data_files[0]).replace("_data", "_weights")) as w:
        assert d.data.shape == (32, 32, 32) and w.data.shape == (64, 32, 17)
        assert abs(float(d.voxel_size.x) - 6.0) < 1e-6 and abs(float(w.voxel_size.x) - 1 / 6.0) < 1e-6
    star = read_star(tmp_path / "A" / "particles.star")
    assert int(star["general"].as_dict()["rlnTomoSubTomosAre2DStacks"]) == 0
    assert star["optics"].df[["rlnImageDimensionality", "rlnCtfDataAreCtfPremultiplied", "rlnImageSize"]] \
        .to_numpy().tolist() == [[3, 1, 32]]
    parts = star["particles"].df
    assert parts["rlnCtfImage"].str.endswith("_weights.mrc").all() and "rlnTomoVisibleFrames" not in parts
    num, den = 0.0, 0.0
    for f in data_files:
        num = num + centred_rfft(mrcfile.read(f).astype(float))
        den = den + mrcfile.read(str(f).replace("_data", "_weights"))[:32].astype(float)
    avg = centred_irfft(num / np.maximum(den, 1e-3 * den.max()), (32, 32, 32))
    truth = mrcfile.read(tmp_path / "ground_truth.mrc")
    assert np.corrcoef(avg.ravel(), truth.ravel())[0, 1] > 0.98
    assert fsc(avg, truth)[1:6].min() >= 0.95
    # default mode: the volume is in the subtomogram frame; rotate by A_part into the reference frame
    src = read_star("particles.star")["particles"].df
    a_part = euler_to_matrix(*src[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float).T)
    ccs = []
    for f in data_files:
        k = src["rlnTomoParticleName"].tolist().index(f"TS_01/{f.name.split('_')[0]}")
        ref_frame = mrcfile.read(f)
        rotated = _rotate(mrcfile.read(str(f).replace("/A/", "/D/")), a_part[k])
        inner = np.s_[8:24, 8:24, 8:24]
        ccs.append(np.corrcoef(rotated[inner].ravel(), ref_frame[inner].ravel())[0, 1])
    assert min(ccs) > 0.99, ccs  # measured 0.998
    # --no_ctf: CTF² weights equal the multiplicity; --cone_weight multiplies both by the cone
    first = data_files[0].relative_to(tmp_path / "A").as_posix().replace("_data", "_weights")
    _run(["--i", "optimisation_set.star", "--b", 32, "--o", "NC/", "--j", 2, "--no_ctf"])
    _run(["--i", "optimisation_set.star", "--b", 32, "--o", "N/", "--j", 2, "--no_ctf", "--cone_weight",
          "--cone_angle", 20])
    w_nc = mrcfile.read(tmp_path / "NC" / first).astype(float)
    w_cone = mrcfile.read(tmp_path / "N" / first).astype(float)
    np.testing.assert_allclose(w_nc[:32], w_nc[32:], atol=1e-6)
    k = src["rlnTomoParticleName"].tolist().index(f"TS_01/{data_files[0].name.split('_')[0]}")
    a_sub = euler_to_matrix(*src[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt",
                                  "rlnTomoSubtomogramPsi"]].to_numpy(float).T)
    cone = cone_weight(32, a_sub[k] @ a_part[k], np.sin(np.deg2rad(10.0)), 2.0)
    assert cone.min() < 0.01 and cone.max() > 0.99
    np.testing.assert_allclose(w_cone[32:], w_nc[32:] * cone, atol=1e-5 * w_nc.max())
    np.testing.assert_allclose(w_cone[:32], w_nc[:32] * cone, atol=1e-5 * w_nc.max())
    # --crop in 3D: c³ volume; --no_comb: no weights file, but rlnCtfImage still names it (as RELION)
    _run(["--i", "optimisation_set.star", "--b", 32, "--crop", 24, "--o", "C/", "--j", 2, "--no_comb"])
    assert mrcfile.read(tmp_path / "C" / first.replace("_weights", "_data")).shape == (24, 24, 24)
    assert not (tmp_path / "C" / first).exists()
    cropped = read_star(tmp_path / "C" / "particles.star")
    assert cropped["optics"].df["rlnImageSize"].tolist() == [24]
    assert cropped["particles"].df["rlnCtfImage"].str.endswith("_weights.mrc").all()


def test_insert_kernel_identity_slice():
    """An identity slice lands on the kz = 0 plane: value, multiplicity 1, Hermitian mirror
    on the x = 0 column (DC twice), negative-y column x = 0 skipped."""
    from sta.kernels.insert import insert_slice_forward

    rng = np.random.default_rng(0)
    s = 8
    data2 = rng.normal(size=(s, s // 2 + 1)) + 1j * rng.normal(size=(s, s // 2 + 1))
    w2 = rng.uniform(1, 2, size=(s, s // 2 + 1))
    d = np.zeros((s, s, s // 2 + 1), complex)
    c = np.zeros(d.shape)
    m = np.zeros(d.shape)
    insert_slice_forward(data2, w2, np.full(s, s // 2 + 1), [1, 0, 0], [0, 1, 0], d, c, m)
    np.testing.assert_allclose(d[0, :, 1:], data2[:, 1:])
    np.testing.assert_allclose(c[0, :, 1:], w2[:, 1:])
    assert np.all(m[0, :, 1:] == 1) and np.all(m[1:] == 0) and np.all(d[1:] == 0)
    np.testing.assert_allclose(d[0, 0, 0], 2 * data2[0, 0].real)
    for y in range(1, s // 2):
        np.testing.assert_allclose(d[0, y, 0], data2[y, 0])
        np.testing.assert_allclose(d[0, s - y, 0], np.conj(data2[y, 0]))
    assert m[0, s // 2, 0] == 0


@requires_mpirun
def test_mpi_3_ranks_equal_1(tmp_path):
    _simulate(tmp_path, edge_particles=True)
    stacks, stars = {}, {}
    for np_ in (1, 3):
        cmd = ["mpirun", "-np", str(np_), sys.executable, "-m", "sta.commands.subtomo", "--i", "optimisation_set.star",
               "--b", "32", "--stack2d", "--o", f"M{np_}/", "--j", "1", "--min_frames", "30"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        stacks[np_] = {k: mrcfile.read(p) for k, p in _stacks(tmp_path / f"M{np_}").items()}
        stars[np_] = (tmp_path / f"M{np_}" / "particles.star").read_text().replace(f"M{np_}/", "M/")
    assert stacks[1] and list(stacks[1]) == list(stacks[3])
    for key, ref in stacks[1].items():
        assert np.array_equal(stacks[3][key], ref), key
    assert stars[1] == stars[3]


def test_bad_input_one_line(tmp_path, monkeypatch, capsys):
    _simulate(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--i", "optimisation_set.star", "--b", "32", "--o", "X/", "--stack2d"]
    img = next((tmp_path / "tilt_images" / "TS_01").glob("*.mrc"))
    cases = [(base + ["--whiten"], "--whiten"), (base + ["--real_subtomo"], "--real_subtomo"),
             (base + ["--div"], "--div"), (base + ["--crop", "40"], "--crop"),
             (base + ["--crop", "29"], "odd"), (base + ["--min_frames", "-1"], "--min_frames"),
             (["--p", "nothere.star", "--t", "tomograms.star", "--b", "32", "--o", "X/"], "nothere.star"),
             (base, img.name)]
    for argv, expected in cases:
        if expected == img.name:
            img.rename(img.with_suffix(".bak"))
        code = subtomo.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, argv
        assert len(err) == 1 and err[0].startswith("ERROR:") and expected in err[0], err
    assert not (tmp_path / "X" / "particles.star").exists()


def test_only_do_unfinished_and_pipeline_control(tmp_path, monkeypatch, capsys):
    _simulate(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["--i", "optimisation_set.star", "--b", "32", "--stack2d", "--o", "Job/", "--j", "1",
            "--pipeline_control", "Job/"]
    _run(argv)
    assert (tmp_path / "Job" / "RELION_JOB_EXIT_SUCCESS").exists() and not (tmp_path / "Job" / "note.txt").exists()
    files = sorted((tmp_path / "Job" / "Subtomograms" / "TS_01").glob("*.mrcs"))
    original = mrcfile.read(files[1])
    files[0].unlink()
    with mrcfile.new(files[1], overwrite=True) as m:
        m.set_data(np.zeros((2, 32, 32), np.float32))
    capsys.readouterr()
    _run(argv + ["--only_do_unfinished"])
    assert "1 written, 11 skipped" in capsys.readouterr().out
    assert files[0].exists() and mrcfile.read(files[1]).shape == (2, 32, 32)
    _run(argv)
    assert np.array_equal(mrcfile.read(files[1]), original)
