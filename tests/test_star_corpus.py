"""The STAR reader/writer on the real-file corpus in ../shared/data/star-corpus/.

Every file is read, written and read again with every table, column and value kept; values
are cross-checked against the ``starfile`` package (test oracle only); files written by
RELION's C++ code are re-written byte for byte.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sta.io.star import format_star, read_star, write_star

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "star-corpus"
FILES = sorted(CORPUS.rglob("*.star"))
IDS = [str(f.relative_to(CORPUS)) for f in FILES]

# Written by RELION's MetaDataTable::write, so our writer must reproduce them exactly.
RELION_WRITTEN = [
    "cets-relion/Polish/job070/optimisation_set.star",
    "cets-relion/Polish/job070/tomograms.star",
    "cets-relion/Polish/job070/tilt_series/TS_01.star",
    "cets-relion/Polish/job070/tilt_series/TS_43.star",
    "cets-relion/PostProcess/job079/postprocess.star",
    "cets-relion/Refine3D/job074/run_data.star",
    "cets-relion/Refine3D/job074/run_model.star",
    "cets-relion/Refine3D/job074/run_optimisation_set.star",
    "cets-relion/Refine3D/job074/run_optimiser.star",
    "cets-relion/Select/job077/particles_removed.star",
    "cryoCAT/relion5_1_run_it025_data.star",
    "cryoCAT/relion_4.0.star",
    "fomo/tomograms.star",
    "relion/tilt_series_metadata/tilt_series/220728_TS_01.star",
    "starfile/postprocess.star",
    "starfile/run_it025_optimiser_3D.star",
]


def assert_same_tables(a, b):
    """Same keys, names, kinds, columns and values (floats to 1e-6 relative)."""
    assert list(a.keys()) == list(b.keys())
    for key in a:
        ta, tb = a[key], b[key]
        assert (ta.name, ta.loop) == (tb.name, tb.loop), key
        assert list(ta.df.columns) == list(tb.df.columns), key
        assert len(ta.df) == len(tb.df), key
        for col in ta.df.columns:
            va, vb = ta.df[col].to_numpy(), tb.df[col].to_numpy()
            if va.dtype.kind == "f":
                assert vb.dtype.kind == "f", (key, col)
                np.testing.assert_allclose(vb, va, rtol=1e-6, atol=0, equal_nan=True,
                                           err_msg=f"{key}/{col}")
            elif va.dtype.kind in "iu":
                assert vb.dtype == va.dtype, (key, col)
                np.testing.assert_array_equal(vb, va, err_msg=f"{key}/{col}")
            else:
                assert vb.dtype == object and list(vb) == list(va), (key, col)


def test_corpus_is_complete():
    assert len(FILES) == 36


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_read_every_file(path):
    star = read_star(path)
    assert len(star) >= 1
    for table in star.values():
        assert table.df.shape[1] >= 1
        assert table.loop or len(table.df) == 1
    assert_same_tables(star, read_star(path, strict=False))


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_round_trip(path, tmp_path):
    star = read_star(path)
    out = tmp_path / path.name
    write_star(out, star)
    again = read_star(out)
    assert_same_tables(star, again)
    assert again.comments == star.comments
    # and a second generation is textually stable
    assert format_star(again) == out.read_text()


@pytest.mark.parametrize("name", RELION_WRITTEN)
def test_relion_written_files_byte_exact(name):
    text = (CORPUS / name).read_text()
    match = re.search(r"# version (\d+)", text)
    version = int(match.group(1)) if match else None
    assert format_star(read_star(CORPUS / name), version=version) == text


def _their_frame(block):
    if isinstance(block, dict):
        return pd.DataFrame({k: [v] for k, v in block.items()}), False
    return block, True


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_values_match_starfile_package(path):
    starfile = pytest.importorskip("starfile")
    try:
        theirs = starfile.read(path, always_dict=True)
    except Exception:  # noqa: BLE001 - the oracle failing is not our failure
        pytest.skip("starfile cannot read this file")
    ours = read_star(path)
    assert [t.name for t in ours.values()] == list(theirs.keys())
    for table, block in zip(ours.values(), theirs.values()):
        their_df, their_loop = _their_frame(block)
        assert table.loop == their_loop, table.name
        assert list(table.df.columns) == list(their_df.columns), table.name
        assert len(table.df) == len(their_df), table.name
        for col in table.df.columns:
            _compare_column(table.df[col], their_df[col], f"{table.name}/{col}")


def _compare_column(ours, theirs, where):
    if pd.api.types.is_numeric_dtype(theirs) and not pd.api.types.is_bool_dtype(theirs):
        mine = pd.to_numeric(ours).to_numpy(dtype=np.float64)
        np.testing.assert_allclose(mine, theirs.to_numpy(dtype=np.float64), rtol=1e-6,
                                   equal_nan=True, err_msg=where)
    else:
        assert [str(v) for v in ours] == [str(v) for v in theirs], where


# --------------------------------------------------------------------------------------
# what particular files must give


def test_quirky_files_read_to_the_right_shapes():
    shapes = {
        "cets-relion/Refine3D/job074/run_data.star":
            {"general": (1, 1), "optics": (1, 11), "particles": (125, 26)},
        "cets-relion/Refine3D/job074/run_model.star":
            {"model_general": (1, 23), "model_classes": (1, 6), "model_class_1": (97, 9),
             "model_groups": (5, 4), "model_optics_group_1": (97, 3),
             "model_pdf_orient_class_1": (32810, 1)},
        "cets-relion/Select/job077/particles_removed.star": {"": (15, 26)},
        "cets-relion/Picks/job019/particles.star": {"particles": (100, 4)},
        "cryoCAT/warp2_matching_tomograms.star":
            {"global": (5, 13), "TS_17.tomostar": (41, 9), "TS_32.tomostar": (41, 9),
             "TS_1.tomostar": (41, 9), "TS_11.tomostar": (41, 9), "TS_23.tomostar": (41, 9)},
        "cryoCAT/relion_3.1_optics.star": {"optics": (1, 7), "particles": (3, 22)},
        "cryoCAT/relion_3.0.star": {"": (3, 15)},
        "cylindra/Refine3D/job_refine/run_it050_data.star":
            {"optics": (2, 11), "particles": (5, 21)},
        "cylindra/Picks/job_picks/optimisation_set.star": {"optimisation_set": (1, 2)},
        "cylindra/Tomograms/job_tomo/tilt_series/14pf_MT.star": {"13pf_MT": (7, 2)},
        "relion/mtf_falcon4EC_300kV.star": {"": (64, 2)},
        "cets-relion/Refine3D/job074/run_optimiser.star": {"optimiser_general": (1, 102)},
    }
    for name, expected in shapes.items():
        star = read_star(CORPUS / name)
        assert {k: t.df.shape for k, t in star.items()} == expected, name


def test_selected_values():
    star = read_star(CORPUS / "cylindra/Refine3D/job_refine/run_it050_data.star")
    p = star["particles"].df
    assert p["rlnCenteredCoordinateXAngst"].iloc[0] == pytest.approx(-176.94)
    assert p["rlnCenteredCoordinateYAngst"].iloc[1] == pytest.approx(9.700021)
    assert p["rlnImageName"].iloc[2] == "Extract/job_extract/Subtomograms/TS_01/3_data.mrc"
    assert p["rlnRandomSubset"].dtype == np.int64

    opt = read_star(CORPUS / "cets-relion/Refine3D/job074/run_optimiser.star")
    assert opt.comments[0].startswith("# RELION optimiser; version 5.0-beta-2")
    general = opt["optimiser_general"].as_dict()
    assert general["rlnRandomSeed"] == 1710675928
    assert general["rlnSgdStepsizeScheme"] == ""
    assert general["rlnSolventMask2Name"] == "None"

    warp = read_star(CORPUS / "cryoCAT/warp2_particles_matching.star")["particles"].df
    assert warp["rlnAngleRot"].max() > 360.0

    removed = read_star(CORPUS / "cets-relion/Select/job077/particles_removed.star")[""].df
    assert removed["rlnLogLikeliContribution"].iloc[0] == pytest.approx(1.641298e06)
    assert removed["rlnTomoVisibleFrames"].iloc[0].startswith("[0,0,0")


def test_truncated_corpus_file_is_an_error(tmp_path):
    from sta.errors import FormatError

    text = (CORPUS / "cets-relion/Refine3D/job074/run_data.star").read_text()
    cut = text[: text.rindex("Extract/job071") + 20]  # mid-row of the last particle
    path = tmp_path / "run_data.star"
    path.write_text(cut)
    n_lines = cut.count("\n") + 1
    with pytest.raises(FormatError, match=rf"run_data.star: table data_particles, line "
                                          rf"{n_lines}: expected 26 values"):
        read_star(path)
    star = read_star(path, strict=False)
    assert len(star["particles"].df) == 124
