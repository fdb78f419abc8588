"""RELION 5 data model: tomogram, particle, trajectory and optimisation sets."""

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from sta.errors import FormatError, InputError
from sta.io.optimisation_set import OptimisationSet
from sta.io.particles import ParticleSet
from sta.io.star import read_star
from sta.io.tomograms import TomogramSet
from sta.io.trajectories import TrajectorySet

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "star-corpus"
CETS = CORPUS / "cets-relion"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def polish_tomograms():
    return TomogramSet.read(CETS / "Polish/job070/tomograms.star", project_dir=CETS)


@pytest.fixture(scope="module")
def warp_tomograms():
    return TomogramSet.read(CORPUS / "cryoCAT/warp2_matching_tomograms.star")


# --------------------------------------------------------------------------------------
# optimisation sets -> tomogram and particle sets


def test_polish_optimisation_set_resolves_tomograms():
    opt = OptimisationSet.read(CETS / "Polish/job070/optimisation_set.star", project_dir=CETS)
    assert opt.particles == "Polish/job070/particles.star"
    assert opt.tomograms == "Polish/job070/tomograms.star"
    assert opt.trajectories == "Polish/job070/motion.star"
    assert opt.manifolds is None and opt.ref1 is None and opt.fsc is None
    tomos = opt.load_tomograms()
    assert tomos.names() == ["TS_01", "TS_03", "TS_43", "TS_45", "TS_54"]
    assert [ts.n_tilts for ts in tomos] == [40, 40, 41, 41, 41]
    # the particles and motion files it names are not in the corpus
    with pytest.raises(InputError, match="Polish/job070/particles.star: file not found"):
        opt.load_particles(tomos)
    with pytest.raises(InputError, match="motion.star: file not found"):
        opt.load_trajectories()


def test_refine_optimisation_set_resolves_particles():
    opt = OptimisationSet.read(CETS / "Refine3D/job074/run_optimisation_set.star",
                               project_dir=CETS)
    tomos = opt.load_tomograms()
    assert len(tomos) == 5
    assert tomos["TS_01"].n_tilts == 40 and tomos["TS_43"].n_tilts == 41
    parts = opt.load_particles(tomos)
    assert parts.n == 125
    assert parts.tomo_names() == ["TS_01", "TS_03", "TS_43", "TS_45", "TS_54"]
    assert parts.is_stack2d
    assert parts.pixel_size(0) == pytest.approx(1.35)
    assert parts.optics_row(0)["rlnImageSize"] == 192
    vis = parts.visible_frames(0)
    assert vis.dtype == np.int64 and vis.size == tomos[parts.tomo_name(0)].n_tilts
    assert parts.particle_name(0).startswith(parts.tomo_name(0) + "/")
    assert sum(len(v) for v in parts.indices_by_tomogram().values()) == 125
    # same particles straight from the optimisation set (tomograms loaded implicitly)
    assert opt.load_particles().n == 125


def test_tilt_series_accessors(polish_tomograms):
    ts = polish_tomograms["TS_01"]
    assert ts is polish_tomograms[0]
    assert ts.pixel_size == pytest.approx(1.35)
    assert ts.size == (4000, 4000, 2000)
    np.testing.assert_array_equal(ts.centre, [2000.0, 2000.0, 1000.0])
    assert ts.hand == -1.0
    assert (ts.voltage, ts.cs, ts.q0) == (300.0, 2.7, 0.1)
    assert ts.defocus_slope == 1.0 and ts.bfactor_per_dose == 0.0
    assert ts.optics_group_name == "optics1"
    dose = ts.column("rlnMicrographPreExposure")
    assert dose.shape == (40,) and dose.dtype == np.float64
    np.testing.assert_array_equal(ts.column("rlnCtfBfactor", default=0.0), np.zeros(40))
    with pytest.raises(InputError, match="Polish/job070/tilt_series/TS_01.star: table TS_01 "
                                         "has no column rlnNotThere"):
        ts.column("rlnNotThere")
    assert ts.legacy_projection_rows() is None
    paths = ts.micrograph_paths()
    assert len(paths) == 40 and paths[0].startswith(str(CETS))


def test_required_global_columns_named_when_missing(polish_tomograms):
    gdf = polish_tomograms.global_df.drop(columns=["rlnTomoTiltSeriesPixelSize", "rlnTomoHand"])
    tables = {ts.name: ts.df for ts in polish_tomograms}
    tomos = TomogramSet.from_tables(gdf, tables, project_dir=CETS)
    with pytest.raises(InputError, match="table global has no column rlnTomoTiltSeriesPixelSize"):
        tomos["TS_03"].pixel_size
    with pytest.raises(InputError, match="no column rlnTomoHand"):
        tomos["TS_03"].hand
    with pytest.raises(InputError, match="no tomogram named 'TS_99'"):
        tomos["TS_99"]


# --------------------------------------------------------------------------------------
# tomogram sets: layouts and writing


def test_warp_relion4_single_file_layout(warp_tomograms):
    assert warp_tomograms.names() == ["TS_17.tomostar", "TS_32.tomostar", "TS_1.tomostar",
                                      "TS_11.tomostar", "TS_23.tomostar"]
    ts = warp_tomograms["TS_17.tomostar"]
    assert ts.star_file is None and ts.n_tilts == 41
    m = ts.legacy_projection_rows()
    assert m.shape == (41, 4, 4)
    np.testing.assert_allclose(m[0, 0], [0.05876775, 0.99705213, -0.049329475, 0])
    np.testing.assert_allclose(m[20, 1], [-0.9970521, 0.076727085, 0.00034803688, 0])
    np.testing.assert_array_equal(m[:, 3], np.tile([0, 0, 0, 1], (41, 1)))
    rot = m[:, :3, :3]
    np.testing.assert_allclose(np.einsum("fij,fkj->fik", rot, rot),
                               np.broadcast_to(np.eye(3), rot.shape), atol=1e-6)
    assert ts.size == (4400, 6000, 1000) and ts.pixel_size == pytest.approx(0.7894)


def test_warp_tomograms_write_converts_layout(warp_tomograms, tmp_path):
    out = tmp_path / "Tomo" / "job002" / "tomograms.star"
    warp_tomograms.write(out)
    files = sorted(p.name for p in (out.parent / "tilt_series").iterdir())
    assert files == sorted(f"{n}.star" for n in warp_tomograms.names())
    back = TomogramSet.read(out)
    assert back.names() == warp_tomograms.names()
    ts = back["TS_32.tomostar"]
    assert Path(ts.star_file).is_absolute()  # written outside the project directory
    assert ts.legacy_projection_rows() is None
    assert "rlnTomoProjX" not in ts.df.columns
    np.testing.assert_allclose(ts.column("rlnDefocusU"),
                               warp_tomograms["TS_32.tomostar"].column("rlnDefocusU"))
    warp_tomograms.write(tmp_path / "keep" / "tomograms.star", keep_legacy=True)
    kept = TomogramSet.read(tmp_path / "keep" / "tomograms.star")
    np.testing.assert_allclose(kept[1].legacy_projection_rows(),
                               warp_tomograms[1].legacy_projection_rows(), rtol=1e-6)


def test_tomogram_set_write_pipeline_paths(tmp_path):
    shutil.copytree(CETS / "Polish", tmp_path / "Polish")
    tomos = TomogramSet.read(tmp_path / "Polish/job070/tomograms.star", project_dir=tmp_path)
    out = tmp_path / "CtfRefine/job010/tomograms.star"
    tomos.write(out)
    assert (tmp_path / "CtfRefine/job010/tilt_series/TS_43.star").exists()
    star = read_star(out)["global"].df
    assert star["rlnTomoTiltSeriesStarFile"].tolist() == [
        f"CtfRefine/job010/tilt_series/{n}.star" for n in tomos.names()]
    back = TomogramSet.read(out, project_dir=tmp_path)
    original = TomogramSet.read(CETS / "Polish/job070/tomograms.star", project_dir=CETS)
    for a, b in zip(original, back):
        assert a.name == b.name and a.n_tilts == b.n_tilts
        for col in a.df.columns:
            va, vb = a.df[col].to_numpy(), b.df[col].to_numpy()
            if va.dtype.kind == "f":
                np.testing.assert_allclose(vb, va, rtol=1e-6)
            else:
                assert list(va) == list(vb)
        for key, value in a.global_row.items():
            if key != "rlnTomoTiltSeriesStarFile":
                assert b.global_row[key] == value
    # the per-tilt files are RELION's own bytes again
    assert ((tmp_path / "CtfRefine/job010/tilt_series/TS_01.star").read_text()
            == (CETS / "Polish/job070/tilt_series/TS_01.star").read_text())


def test_cylindra_table_name_quirk(caplog):
    cyl = CORPUS / "cylindra"
    tomos = TomogramSet.read(cyl / "Tomograms/job_tomo/tomograms.star", project_dir=cyl)
    assert [ts.n_tilts for ts in tomos] == [5, 7]
    assert "data_13pf_MT, not data_TS_02" in caplog.text
    assert tomos["TS_02"].column("rlnTomoNominalStageTiltAngle")[1] == -20.0


def test_missing_tomo_name_column(tmp_path):
    path = tmp_path / "tomograms.star"
    path.write_text("data_global\nloop_\n_rlnTomoTiltSeriesStarFile #1\nts.star\n")
    with pytest.raises(InputError, match=r"tomograms.star: table global has no column rlnTomoName"):
        TomogramSet.read(path)


def test_missing_per_tilt_file_and_table(tmp_path):
    path = tmp_path / "tomograms.star"
    path.write_text("data_global\nloop_\n_rlnTomoName\n_rlnTomoTiltSeriesStarFile\nTS_01 ts.star\n")
    with pytest.raises(InputError, match="rlnTomoTiltSeriesStarFile of TS_01 is ts.star: "
                                         "file not found"):
        TomogramSet.read(path, project_dir=tmp_path)
    (tmp_path / "ts.star").write_text("data_a\nloop_\n_rlnX\n1\ndata_b\nloop_\n_rlnX\n2\n")
    with pytest.raises(InputError, match="ts.star: no table data_TS_01"):
        TomogramSet.read(path, project_dir=tmp_path)


def _tiny_set(tmp_path, micrographs, stack=None):
    gdf = pd.DataFrame({"rlnTomoName": pd.Series(["TS_01"], dtype=object)})
    if stack is not None:
        gdf["rlnTomoTiltSeriesName"] = pd.Series([stack], dtype=object)
    df = pd.DataFrame({"rlnMicrographName": pd.Series(micrographs, dtype=object),
                       "rlnMicrographPreExposure": np.arange(len(micrographs)) * 3.0})
    gdf["rlnTomoTiltSeriesStarFile"] = pd.Series(["tilt_series/TS_01.star"], dtype=object)
    return TomogramSet.from_tables(gdf, {"TS_01": df}, project_dir=tmp_path)


def _mrc(path, n):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((n, 4, 4), dtype=np.float32))


def test_tilt_stack_row_count_mismatch(tmp_path):
    _mrc(tmp_path / "TS_01.mrcs", 40)
    tomos = _tiny_set(tmp_path, [f"{k}@TS_01.mrcs" for k in range(1, 42)])
    with pytest.raises(InputError, match=r"^tilt_series/TS_01.star: table TS_01 has 41 rows but "
                                         r"TS_01.mrcs holds 40 images$"):
        tomos.validate_tilt_images("TS_01")
    ok = _tiny_set(tmp_path, [f"{k}@TS_01.mrcs" for k in range(1, 41)])
    ok.validate_tilt_images("TS_01")
    legacy = _tiny_set(tmp_path, ["x"] * 41, stack="TS_01.mrcs")
    with pytest.raises(InputError, match="has 41 rows but TS_01.mrcs holds 40 images"):
        legacy.validate_tilt_images("TS_01")


def test_tilt_images_per_file(tmp_path):
    for k in range(3):
        _mrc(tmp_path / f"t{k}.mrc", 1)
    _tiny_set(tmp_path, ["t0.mrc", "t1.mrc", "t2.mrc"]).validate_tilt_images("TS_01")
    with pytest.raises(InputError, match="table TS_01 row 4: tilt image t3.mrc not found"):
        _tiny_set(tmp_path, ["t0.mrc", "t1.mrc", "t2.mrc", "t3.mrc"]).validate_tilt_images("TS_01")
    (tmp_path / "bad.mrc").write_bytes(b"not an mrc file at all" * 100)
    with pytest.raises(FormatError, match="bad.mrc: not a readable MRC file"):
        _tiny_set(tmp_path, ["1@bad.mrc", "2@bad.mrc"]).validate_tilt_images("TS_01")


# --------------------------------------------------------------------------------------
# particle sets


def test_picks_get_optics_from_tomograms(polish_tomograms):
    parts = ParticleSet.read(CETS / "Picks/job019/particles.star", tomograms=polish_tomograms,
                             project_dir=CETS)
    assert parts.n == 100
    assert parts.optics["rlnOpticsGroupName"].tolist() == ["optics1"]
    row = parts.optics_row(57)
    assert row == {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                   "rlnAmplitudeContrast": 0.1, "rlnTomoTiltSeriesPixelSize": 1.35,
                   "rlnOpticsGroup": 1, "rlnOpticsGroupName": "optics1"}
    assert (parts.df["rlnOpticsGroup"] == 1).all()
    names = parts.df["rlnTomoParticleName"].tolist()
    assert names[:2] == ["TS_54/1", "TS_54/2"]
    assert names[20] == "TS_45/1" and names[99] == "TS_03/20"
    assert not parts.is_stack2d


def test_optics_one_group_per_tomogram_without_group_names(polish_tomograms):
    gdf = polish_tomograms.global_df.drop(columns=["rlnOpticsGroupName"])
    gdf.loc[gdf["rlnTomoName"] == "TS_45", "rlnTomoTiltSeriesPixelSize"] = 2.7
    tomos = TomogramSet.from_tables(gdf, {ts.name: ts.df for ts in polish_tomograms},
                                    project_dir=CETS)
    parts = ParticleSet.read(CETS / "Picks/job019/particles.star", tomograms=tomos)
    # order of first appearance in the particle file: TS_54, TS_45, TS_01, TS_43, TS_03
    assert parts.optics["rlnOpticsGroupName"].tolist() == ["TS_54", "TS_45", "TS_01", "TS_43",
                                                           "TS_03"]
    assert parts.optics["rlnOpticsGroup"].tolist() == [1, 2, 3, 4, 5]
    assert parts.df["rlnOpticsGroup"].iloc[[0, 20, 40, 99]].tolist() == [1, 2, 3, 5]
    assert parts.pixel_size(20) == 2.7 and parts.pixel_size(0) == 1.35
    np.testing.assert_array_equal(parts.pixel_sizes()[18:22], [1.35, 1.35, 2.7, 2.7])


def test_unknown_tomogram_in_particles(polish_tomograms, tmp_path):
    path = tmp_path / "p.star"
    path.write_text("data_particles\nloop_\n_rlnTomoName\n_rlnCenteredCoordinateXAngst\n"
                    "TS_01 1\nTS_77 2\n")
    with pytest.raises(InputError, match="rlnTomoName 'TS_77' is not in the tomogram set"):
        ParticleSet.read(path, tomograms=polish_tomograms)


def test_select_bare_block_particles(polish_tomograms):
    parts = ParticleSet.read(CETS / "Select/job077/particles_removed.star",
                             tomograms=polish_tomograms)
    assert parts.n == 15 and parts.tomo_names() == ["TS_03", "TS_45", "TS_54"]
    assert parts.optics["rlnTomoTiltSeriesPixelSize"].tolist() == [1.35]
    no_tomos = ParticleSet.read(CETS / "Select/job077/particles_removed.star")
    assert no_tomos.optics is None
    with pytest.raises(InputError, match="no optics table"):
        no_tomos.pixel_size(0)


def test_warp_particles_angles_and_legacy_coordinates(warp_tomograms, tmp_path):
    path = CORPUS / "cryoCAT/warp2_particles_matching.star"
    parts = ParticleSet.read(path, tomograms=warp_tomograms)
    raw = read_star(path)["particles"].df
    np.testing.assert_array_equal(parts.angles(),
                                  raw[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    assert parts.angles().max() > 360.0
    assert parts.has_legacy_coordinates and not parts.has_centred_coordinates
    assert len(parts.optics) == 5
    out = tmp_path / "particles.star"
    parts.write(out)
    back = read_star(out)
    assert list(back) == ["general", "optics", "particles"]
    df = back["particles"].df
    assert "rlnCoordinateX" not in df.columns
    px = parts.pixel_size(0)
    expected = (raw[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
                - np.array([2200.0, 3000.0, 500.0])) * px
    got = df[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
              "rlnCenteredCoordinateZAngst"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(df["rlnAngleRot"], raw["rlnAngleRot"], rtol=1e-6)
    parts.write(tmp_path / "legacy.star", keep_legacy=True)
    kept = read_star(tmp_path / "legacy.star")["particles"].df
    assert list(kept.columns) == list(parts.df.columns)


def test_particles_write_is_relion_bytes(tmp_path, polish_tomograms):
    src = CETS / "Refine3D/job074/run_data.star"
    parts = ParticleSet.read(src, tomograms=polish_tomograms)
    parts.write(tmp_path / "run_data.star")
    assert (tmp_path / "run_data.star").read_text() == src.read_text()


def test_legacy_particle_files_without_tomograms():
    r30 = ParticleSet.read(CORPUS / "cryoCAT/relion_3.0.star")
    assert r30.n == 3 and r30.optics is None
    assert "rlnTomoParticleName" not in r30.df.columns  # no rlnTomoName to build it from
    assert r30.general == {"rlnTomoSubTomosAre2DStacks": 0}
    r31 = ParticleSet.read(CORPUS / "cryoCAT/relion_3.1_optics.star")
    assert r31.n == 3 and len(r31.optics) == 1
    assert r31.optics_row(2)["rlnImagePixelSize"] == pytest.approx(2.446)
    with pytest.raises(InputError, match="table optics has no column rlnTomoTiltSeriesPixelSize"):
        r31.pixel_size(0)
    r40 = ParticleSet.read(CORPUS / "cryoCAT/relion_4.0.star")
    assert r40.n == 121 and r40.has_legacy_coordinates
    with pytest.raises(InputError, match="needs the tomogram set"):
        r40.centered_coordinates_angst()


def test_particles_write_keeps_legacy_without_tomograms(tmp_path, caplog):
    r40 = ParticleSet.read(CORPUS / "cryoCAT/relion_4.0.star")
    r40.write(tmp_path / "p.star")
    assert "legacy rlnCoordinateX/Y/Z kept" in caplog.text
    back = ParticleSet.read(tmp_path / "p.star")
    np.testing.assert_allclose(back.df["rlnCoordinateX"], r40.df["rlnCoordinateX"], rtol=1e-6)
    assert back.df.columns.tolist() == r40.df.columns.tolist()


# --------------------------------------------------------------------------------------
# trajectories


def test_motion_fixture_read_write_read(tmp_path):
    traj = TrajectorySet.read(DATA / "motion.star")
    assert traj.names() == ["TS_01/1", "TS_01/2"] and not traj.positional
    s = traj.shifts("TS_01/1")
    assert s.shape == (4, 3)
    np.testing.assert_allclose(s[3], [3.75, -1.5, 0.3])
    np.testing.assert_allclose(traj.shifts(1)[0], [-0.25, 0.5, 5e-4])
    out = tmp_path / "Polish/job099/motion.star"
    traj.write(out)
    assert out.read_text() == (DATA / "motion.star").read_text()
    again = TrajectorySet.read(out)
    for name in traj.names():
        np.testing.assert_array_equal(again.shifts(name), traj.shifts(name))


def test_motion_length_check(polish_tomograms):
    traj = TrajectorySet.read(DATA / "motion.star")
    with pytest.raises(InputError, match=r"motion.star: trajectory TS_01/1 has 4 rows but "
                                         r"tilt series TS_01 has 40 tilts"):
        traj.shifts("TS_01/1", polish_tomograms["TS_01"])
    with pytest.raises(InputError, match="no trajectory for particle 'TS_01/9'"):
        traj.shifts("TS_01/9")
    traj.set_shifts("TS_01/1", np.zeros((40, 3)))
    assert traj.shifts("TS_01/1", polish_tomograms["TS_01"]).shape == (40, 3)
    with pytest.raises(InputError, match=r"expected shape \(n_tilts, 3\)"):
        traj.set_shifts("x", np.zeros((3, 2)))


def test_motion_positional_names(tmp_path):
    df = pd.DataFrame({"rlnTomoName": pd.Series(["TS_01", "TS_01"], dtype=object),
                       "rlnCenteredCoordinateXAngst": [0.0, 1.0]})
    parts = ParticleSet.from_tables(df)
    assert parts.df["rlnTomoParticleName"].tolist() == ["TS_01/1", "TS_01/2"]
    traj = TrajectorySet.read(DATA / "motion_positional.star", particles=parts)
    assert traj.positional and traj.names() == ["TS_01/1", "TS_01/2"]
    np.testing.assert_array_equal(traj.shifts("TS_01/2")[1], [-4.0, -5.0, -6.0])
    plain = TrajectorySet.read(DATA / "motion_positional.star")
    assert plain.names() == ["0", "1"]


# --------------------------------------------------------------------------------------
# optimisation sets


def test_optimisation_set_write_quirk(tmp_path):
    opt = OptimisationSet.read(CETS / "Polish/job070/optimisation_set.star", project_dir=CETS)
    opt.write(tmp_path / "o.star")
    assert ((tmp_path / "o.star").read_text()
            == (CETS / "Polish/job070/optimisation_set.star").read_text())
    opt.apply_overrides(ref1="Refine3D/job074/run_half1_class001_unfil.mrc", mask="mask.mrc",
                        mot="", p="Extract/job071/particles.star")
    assert opt.trajectories is None and opt.particles == "Extract/job071/particles.star"
    opt.write(tmp_path / "tomo_only.star")
    star = read_star(tmp_path / "tomo_only.star")
    assert list(star) == [""]
    assert star[""].as_dict() == {"rlnTomoParticlesFile": "Extract/job071/particles.star",
                                  "rlnTomoTomogramsFile": "Polish/job070/tomograms.star"}
    opt.write(tmp_path / "all.star", only_tomo_files=False)
    again = OptimisationSet.read(tmp_path / "all.star")
    assert again.ref1 == "Refine3D/job074/run_half1_class001_unfil.mrc"
    assert again.mask == "mask.mrc" and again.trajectories is None


def test_optimisation_set_variants():
    cyl = CORPUS / "cylindra"
    empty_traj = OptimisationSet.read(cyl / "Class3D/job_class3d/run_it025_optimisation_set.star")
    assert empty_traj.trajectories is None
    assert empty_traj.tomograms == "Tomograms/job_tomo/tomograms.star"
    assert empty_traj.load_trajectories() is None
    loop_form = OptimisationSet.read(cyl / "Picks/job_picks/optimisation_set.star")
    assert loop_form.particles == "Picks/job_picks/particles.star"
    warp = OptimisationSet.read(CORPUS / "cryoCAT/warp2_matching_optimisation_set.star")
    assert (warp.particles, warp.tomograms, warp.trajectories) == (
        "matching.star", "matching_tomograms.star", None)
    with pytest.raises(InputError, match="has no rlnTomoTrajectoriesFile"):
        OptimisationSet(particles="p.star")._require("trajectories")


def test_optimisation_set_keeps_unknown_entries(tmp_path):
    path = tmp_path / "o.star"
    path.write_text("data_optimisation_set\n_rlnTomoParticlesFile p.star\n_rlnSomethingNew 7\n")
    opt = OptimisationSet.read(path)
    assert opt.extra == {"rlnSomethingNew": 7}
    opt.write(tmp_path / "o2.star", only_tomo_files=False)
    assert read_star(tmp_path / "o2.star")[""].as_dict() == {
        "rlnTomoParticlesFile": "p.star", "rlnSomethingNew": 7}
