"""sta_star_handler (relion_star_handler): selection, duplicate removal and re-centring on the
RELION-written run_data.star of the cets-relion corpus (tomograms: Polish/job070)."""

import numpy as np
import pandas as pd
import pytest

from sta.commands import star_handler
from sta.geometry.euler import euler_to_matrix
from sta.geometry.tilt import particle_positions
from sta.io.star import read_star, write_star
from sta.workflows.star_ops import duplicates
from tests.conftest import CORPUS, need

PROJECT = CORPUS / "cets-relion"
RUN_DATA = "Refine3D/job074/run_data.star"
SUB = ["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]
ORI = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
CEN = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
ANG = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


@pytest.fixture
def project(monkeypatch):
    need(PROJECT / RUN_DATA)
    need(PROJECT / "Polish" / "job070" / "tomograms.star")
    monkeypatch.chdir(PROJECT)  # the corpus directory is the RELION project directory
    return PROJECT


def _run(args):
    return star_handler.main(args)


def _particles(path):
    return read_star(path)["particles"].df


def _tomo_positions(df, tomograms):
    """Reference centres in tomogram pixels (sta.geometry, spec §2.3)."""
    pos = np.empty((len(df), 3))
    for name, rows in df.groupby("rlnTomoName", sort=False).indices.items():
        ts = tomograms[name]
        a_sub = euler_to_matrix(*(df[SUB].to_numpy()[rows].T))
        pos[rows] = particle_positions(df[CEN].to_numpy()[rows], ts.pixel_size, ts.size,
                                       df[ORI].to_numpy()[rows], a_sub)
    return pos


def _assert_other_tables_kept(out_path):
    ref, out = read_star(RUN_DATA), read_star(out_path)
    assert list(out.keys()) == list(ref.keys())
    for key in ("general", "optics"):
        pd.testing.assert_frame_equal(out[key].df, ref[key].df)


def test_no_operation_copies(project, tmp_path):
    out = tmp_path / "copy.star"
    assert _run(["--i", RUN_DATA, "--o", str(out)]) == 0
    pd.testing.assert_frame_equal(_particles(out), _particles(RUN_DATA))
    _assert_other_tables_kept(out)


def test_select_range_inclusive(project, tmp_path):
    df = _particles(RUN_DATA)
    out = tmp_path / "half1.star"
    assert _run(["--i", RUN_DATA, "--o", str(out), "--select", "rlnRandomSubset", "--minval", "1",
                 "--maxval", "1"]) == 0
    sel = _particles(out)
    assert len(sel) == int((df["rlnRandomSubset"] == 1).sum()) > 0
    assert (sel["rlnRandomSubset"] == 1).all()
    assert list(sel["rlnTomoParticleName"]) == list(df.loc[df["rlnRandomSubset"] == 1, "rlnTomoParticleName"])
    _assert_other_tables_kept(out)
    # float label, bounds are inclusive: pick values that occur in the file
    values = np.sort(df["rlnMaxValueProbDistribution"].to_numpy())
    lo, hi = values[10], values[40]
    out2 = tmp_path / "range.star"
    assert _run(["--i", RUN_DATA, "--o", str(out2), "--select", "rlnMaxValueProbDistribution",
                 "--minval", str(float(lo)), "--maxval", str(float(hi))]) == 0
    assert len(_particles(out2)) == int(((values >= lo) & (values <= hi)).sum()) >= 31
    # py2rely's class selection
    out3 = tmp_path / "class1.star"
    assert _run(["--i", RUN_DATA, "--o", str(out3), "--select", "rlnClassNumber", "--minval", "1",
                 "--maxval", "1"]) == 0
    assert len(_particles(out3)) == len(df)


def test_select_by_str(project, tmp_path):
    out = tmp_path / "ts01.star"
    assert _run(["--i", RUN_DATA, "--o", str(out), "--select_by_str", "rlnTomoName",
                 "--select_include", "TS_01"]) == 0
    assert set(_particles(out)["rlnTomoName"]) == {"TS_01"} and len(_particles(out)) == 25
    assert _run(["--i", RUN_DATA, "--o", str(out), "--select_by_str", "rlnTomoName",
                 "--select_exclude", "TS_01"]) == 0
    assert len(_particles(out)) == 100 and "TS_01" not in set(_particles(out)["rlnTomoName"])


def _with_duplicate(tmp_path, k, shift_angst):
    """run_data.star with a copy of row k (shifted by shift_angst along x) right after it."""
    star = read_star(RUN_DATA)
    df = star["particles"].df
    copy = df.iloc[[k]].copy()
    copy["rlnCenteredCoordinateXAngst"] += shift_angst
    copy["rlnTomoParticleName"] = "copy"
    star["particles"].df = pd.concat([df.iloc[:k + 1], copy, df.iloc[k + 1:]], ignore_index=True)
    path = tmp_path / "with_dup.star"
    write_star(path, star)
    return str(path), df.iloc[k]["rlnTomoParticleName"]


def test_remove_duplicates_distance(project, tmp_path):
    n = len(_particles(RUN_DATA))
    # no natural pairs within 5 Å in this set
    out0 = tmp_path / "nodup.star"
    assert _run(["--i", RUN_DATA, "--o", str(out0), "--remove_duplicates", "5"]) == 0
    assert len(_particles(out0)) == n
    dup, original = _with_duplicate(tmp_path, 30, 1.0)
    out = tmp_path / "sel" / "particles.star"
    assert _run(["--i", dup, "--o", str(out), "--remove_duplicates", "5"]) == 0
    kept = _particles(out)
    removed = _particles(tmp_path / "sel" / "particles_removed.star")
    assert len(kept) == n and len(removed) == 1
    # as RELION, the earlier particle of the pair goes and the later one (the copy) stays
    assert removed["rlnTomoParticleName"].tolist() == [original]
    assert "copy" in kept["rlnTomoParticleName"].tolist()
    _assert_other_tables_kept(out)
    # 1 Å apart survives a 0.5 Å threshold
    assert _run(["--i", dup, "--o", str(out), "--remove_duplicates", "0.5"]) == 0
    assert len(_particles(out)) == n + 1
    # a threshold <= 0 switches the operation off (RELION's default -1)
    assert _run(["--i", dup, "--o", str(out), "--remove_duplicates", "0"]) == 0
    assert len(_particles(out)) == n + 1


def test_remove_duplicates_uses_rotated_origins(project, tmp_path):
    """Same reference centre written with different origins: the copy's coordinates move by
    A_sub·Δorigin, so centred - A_sub·origin is unchanged and the pair is a duplicate."""
    star = read_star(RUN_DATA)
    df = star["particles"].df
    k = 7
    copy = df.iloc[[k]].copy()
    delta = np.array([12.0, -7.0, 5.0])
    a_sub = euler_to_matrix(*copy[SUB].to_numpy()[0])
    assert np.abs(a_sub - np.eye(3)).max() > 0.5  # a real subtomogram rotation
    copy[ORI] = copy[ORI].to_numpy() + delta
    copy[CEN] = copy[CEN].to_numpy() + a_sub @ delta
    star["particles"].df = pd.concat([df, copy], ignore_index=True)
    path = tmp_path / "moved.star"
    write_star(path, star)
    out = tmp_path / "out.star"
    assert _run(["--i", str(path), "--o", str(out), "--remove_duplicates", "0.5"]) == 0
    assert len(_particles(out)) == len(df)
    removed = _particles(tmp_path / "out_removed.star")
    assert removed["rlnTomoParticleName"].tolist() == [df.iloc[k]["rlnTomoParticleName"]]


def test_duplicates_rule_matches_relion_loop():
    """KD-tree version == RELION's O(n²) loop (later neighbour within D removes the earlier)."""
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 200, size=(400, 3))
    pos[50] = pos[10] + [3.0, 0, 0]  # a chain 10 - 50 - 51: 10 and 50 go, 51 stays
    pos[51] = pos[50] + [3.0, 0, 0]
    groups = rng.integers(0, 3, size=400).astype(str)
    groups[[10, 50, 51]] = "0"
    threshold = 4.0
    ref = np.zeros(400, dtype=bool)
    for i in range(400):
        for j in range(i + 1, 400):
            if groups[i] == groups[j] and ((pos[i] - pos[j]) ** 2).sum() <= threshold ** 2:
                ref[i] = True
                break
    got = duplicates(groups, pos, threshold)
    assert np.array_equal(got, ref)
    assert got[10] and got[50] and not got[51]
    assert np.array_equal(duplicates(groups, pos, -1), np.zeros(400, dtype=bool))


def test_center_moves_origins(project, tmp_path):
    from sta.io.tomograms import TomogramSet

    df = _particles(RUN_DATA)
    optics = read_star(RUN_DATA)["optics"].df
    image_px = float(optics["rlnImagePixelSize"].iloc[0])  # pixel of the reference, 1.35 Å
    ts_px = float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0])
    c = np.array([2.0, -1.0, 3.0])  # reference pixels
    out = tmp_path / "centred.star"
    assert _run(["--i", RUN_DATA, "--o", str(out), "--center", "--center_X", "2", "--center_Y", "-1",
                 "--center_Z", "3"]) == 0
    new = _particles(out)
    a = euler_to_matrix(*(df[ANG].to_numpy().T))
    expected = df[ORI].to_numpy() - np.einsum("nij,j->ni", a, c) * image_px
    np.testing.assert_allclose(new[ORI].to_numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(new[CEN].to_numpy(), df[CEN].to_numpy())
    _assert_other_tables_kept(out)
    # the reference point c now sits at the particle centre: old centre + A_sub·A·c·px
    tomograms = TomogramSet.read("Polish/job070/tomograms.star")
    a_sub = euler_to_matrix(*(df[SUB].to_numpy().T))
    moved = np.einsum("nij,njk,k->ni", a_sub, a, c) * image_px / ts_px  # in tilt-series pixels
    np.testing.assert_allclose(_tomo_positions(new, tomograms), _tomo_positions(df, tomograms) + moved,
                               atol=1e-4)


def test_fold_origins_keeps_positions(project, tmp_path):
    from sta.io.tomograms import TomogramSet

    tomograms = TomogramSet.read("Polish/job070/tomograms.star")
    df = _particles(RUN_DATA)
    assert np.abs(df[ORI].to_numpy()).max() > 0.5
    out = tmp_path / "folded.star"
    assert _run(["--i", RUN_DATA, "--o", str(out), "--fold_origins"]) == 0
    new = _particles(out)
    assert np.all(new[ORI].to_numpy() == 0)
    np.testing.assert_allclose(_tomo_positions(new, tomograms), _tomo_positions(df, tomograms), atol=1e-4)
    # re-centre and fold in one run: position moves by A_sub·A·c·px, origins are zero
    out2 = tmp_path / "both.star"
    assert _run(["--i", RUN_DATA, "--o", str(out2), "--center", "--center_Z", "10", "--fold_origins"]) == 0
    both = _particles(out2)
    a = euler_to_matrix(*(df[ANG].to_numpy().T))
    a_sub = euler_to_matrix(*(df[SUB].to_numpy().T))
    px = read_star(RUN_DATA)["optics"].df  # image and tilt-series pixels are both 1.35 Å here
    assert float(px["rlnImagePixelSize"].iloc[0]) == float(px["rlnTomoTiltSeriesPixelSize"].iloc[0])
    moved = np.einsum("nij,njk,k->ni", a_sub, a, [0.0, 0.0, 10.0])
    assert np.all(both[ORI].to_numpy() == 0)
    np.testing.assert_allclose(_tomo_positions(both, tomograms), _tomo_positions(df, tomograms) + moved,
                               atol=1e-4)


@pytest.mark.parametrize("args,needle", [
    (["--select", "rlnNoSuchLabel"], "rlnNoSuchLabel"),
    (["--select", "rlnTomoName"], "not numeric"),
    (["--select", "rlnClassNumber", "--remove_duplicates", "5"], "one operation"),
    (["--select_by_str", "rlnTomoName"], "--select_include"),
    (["--i_tablename", "model_classes"], "model_classes"),
])
def test_bad_input_one_line(project, tmp_path, capsys, args, needle):
    base = ["--i", RUN_DATA, "--o", str(tmp_path / "x.star")]
    assert _run(base + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.star").exists()
