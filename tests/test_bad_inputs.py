"""Bad-input corpus (issue 13, reliability): every tool, fed a broken project, option or map,
stops with a non-zero exit, ONE stderr line ``ERROR: ...`` naming the culprit (file, table,
column or option, value; values as written, not as ``np.float64(...)``), no traceback, no
RuntimeWarning, and leaves the project as it was (no new, changed or removed file; empty
directories may appear).

One tiny simulated project is built once per module (1 tomogram, 6 particles, 9 tilts, 2D
stacks and a reconstruction at bin 2, a mask); each case runs in its own copy of it.
"""

import functools
import hashlib
import os
import re
import shutil
import warnings

import mrcfile
import numpy as np
import pytest

from sta.commands import mask_create, postprocess, reconstruct_particle, refine, star_handler, subtomo
from sta.io.mrc import write_mrc
from sta.io.star import read_star, write_star
from tests.conftest import run_in

TOOLS = {
    "subtomo": subtomo.main,
    "reconstruct": reconstruct_particle.main,
    "refine": refine.main,
    "postprocess": postprocess.main,
    "mask_create": mask_create.main,
    "star_handler": star_handler.main,
}

TILT_STAR = "tilt_series/TS_01.star"
TILT_1 = "tilt_images/TS_01/TS_01_001_-60.0.mrc"
TILT_5 = "tilt_images/TS_01/TS_01_005_0.0.mrc"

# argument lists that succeed on the unmodified project (outputs go to new directories)
BASE = {
    "subtomo": ["--i", "optimisation_set.star", "--b", "32", "--bin", "2", "--stack2d", "--o", "Extract2/",
                "--j", "1"],
    "reconstruct": ["--i", "optimisation_set.star", "--b", "32", "--bin", "2", "--o", "Reconstruct2/", "--j", "1"],
    "refine": ["--o", "Refine3D/run", "--auto_refine", "--split_random_halves", "--i", "Extract/particles.star",
               "--tomograms", "tomograms.star", "--ref", "Reconstruct/merged.mrc", "--ini_high", "30", "--ctf",
               "--particle_diameter", "150", "--healpix_order", "1", "--auto_local_healpix_order", "1",
               "--offset_range", "2", "--offset_step", "1", "--iter", "1", "--random_seed", "1", "--j", "1"],
    "postprocess": ["--i", "Reconstruct/half1.mrc", "--mask", "MaskCreate/mask.mrc", "--o", "PostProcess/postprocess",
                    "--angpix", "8"],
    "mask_create": ["--i", "Reconstruct/merged.mrc", "--ini_threshold", "0.01", "--angpix", "8",
                    "--o", "MaskCreate2/mask.mrc"],
    "star_handler": ["--i", "particles.star", "--o", "Select/out.star", "--select", "rlnRandomSubset",
                     "--minval", "1", "--maxval", "1"],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project: simulated, 2D stacks extracted (Extract/), reconstructed (Reconstruct/,
    8 Å, box 32) and a mask made from the merged map (MaskCreate/mask.mrc)."""
    from sta.simulate.project import SimulationParameters, simulate_project

    root = tmp_path_factory.mktemp("bad_inputs") / "project"
    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=6, image_size=(160, 160),
                             tomo_size=(180, 180, 60), tilt_step=15.0, snr=1.0, seed=5)
    simulate_project(p, str(root))
    assert run_in(root, subtomo.main, _argv("subtomo", {"--o": "Extract/"})) == 0
    assert run_in(root, reconstruct_particle.main, _argv("reconstruct", {"--o": "Reconstruct/"})) == 0
    assert run_in(root, mask_create.main, _argv("mask_create", {"--o": "MaskCreate/mask.mrc"})) == 0
    return root


# ---------------------------------------------------------------- mutations (run in the copy)

def _edit_star(path, edit):
    star = read_star(path)
    edit(star)
    write_star(path, star)


def set_cell(path, table, column, value, row=0):
    def edit(star):
        df = star[table].df
        if isinstance(value, str) and df[column].dtype != object:
            df[column] = df[column].astype(object)
        df.loc[df.index[row], column] = value
    _edit_star(path, edit)


def drop_column(path, table, column):
    def edit(star):
        star[table].df = star[table].df.drop(columns=[column])
    _edit_star(path, edit)


def drop_table(path, table):
    _edit_star(path, lambda star: star.pop(table))


def replace_text(path, old, new):
    with open(path) as fh:
        text = fh.read()
    assert old in text, (path, old)
    with open(path, "w") as fh:
        fh.write(text.replace(old, new))


def rename_table_beside_another(path, old, new):
    """The tomogram's table renamed and a second table added: no table by the tomogram's name
    (a file with one table of another name is read, with a warning, as in the star corpus)."""
    with open(path) as fh:
        text = fh.read()
    assert f"data_{old}" in text, (path, old)
    with open(path, "w") as fh:
        fh.write(text.replace(f"data_{old}", f"data_{new}") + "\n" + text.replace(f"data_{old}", "data_TS_98"))


def empty_particles_table(path):
    """Keep the data_particles header and labels, drop every row (write_star drops empty tables)."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    start = lines.index("data_particles")
    last_label = max(i for i, line in enumerate(lines) if i > start and line.startswith("_rln"))
    with open(path, "w") as fh:
        fh.write("\n".join(lines[:last_label + 1]) + "\n\n")


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def nan_in_mrc(path):
    with mrcfile.open(path) as m:
        data = m.data.astype(np.float32)
        px = float(m.voxel_size.x)
    data.reshape(-1)[data.size // 2 + 7] = np.nan
    os.remove(path)
    write_mrc(path, data, px, stack=path.endswith(".mrcs"))


def write_map(path, shape=(32, 32, 32), px=8.0, fill=0.0, source=None):
    """A map: ``source``'s data (or ``fill``) at header pixel size ``px``."""
    if source is not None:
        data = mrcfile.read(source).astype(np.float32)
    else:
        data = np.full(shape, fill, np.float32)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_mrc(path, data, px)


def both(*mutations):
    def run():
        for m in mutations:
            m()
    return run


P = functools.partial


def case(tool, argv_edit, mutate, *needles, id, marks=()):
    """``argv_edit``: dict option -> value (None removes the option; appended when absent) or a
    callable on the base list. ``needles``: substrings the ERROR line must contain (a tuple:
    any one of them), matched with the project copy's own path removed."""
    return pytest.param(tool, argv_edit, mutate, needles, id=id, marks=marks)


def _argv(tool, edit):
    argv = list(BASE[tool])
    if callable(edit):
        return edit(argv)
    for option, value in (edit or {}).items():
        if option in argv:
            i = argv.index(option)
            if value is None:
                del argv[i:i + 2]
            else:
                argv[i + 1] = value
        elif value is not None:
            argv += [option, value] if value != "" else [option]
    return argv


def _drop(option, flag=False):
    def edit(argv):
        i = argv.index(option)
        del argv[i:i + (1 if flag else 2)]
        return argv
    return edit


def _plus(*extra):
    return lambda argv: argv + list(extra)


NAN, INF = float("nan"), float("inf")
PTS = "particles.star"          # particles of the optimisation set (subtomo, reconstruct)
XPTS = "Extract/particles.star"  # 2D stacks (refine)
TOMOS = "tomograms.star"

CASES = [
    # ------------------------------------------------ tomograms.star, global table
    case("subtomo", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesPixelSize", 0.0),
         TOMOS, "rlnTomoTiltSeriesPixelSize", id="subtomo-tomo_pixel_size_0"),
    case("reconstruct", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesPixelSize", 0.0),
         TOMOS, "rlnTomoTiltSeriesPixelSize", id="reconstruct-tomo_pixel_size_0"),
    case("reconstruct", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesPixelSize", -4.0),
         TOMOS, "rlnTomoTiltSeriesPixelSize", "-4", id="reconstruct-tomo_pixel_size_negative"),
    case("subtomo", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesPixelSize", NAN),
         TOMOS, "rlnTomoTiltSeriesPixelSize", "nan", id="subtomo-tomo_pixel_size_nan"),
    case("refine", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesPixelSize", NAN),
         TOMOS, "rlnTomoTiltSeriesPixelSize", "nan", id="refine-tomo_pixel_size_nan"),
    case("subtomo", None, P(set_cell, TOMOS, "global", "rlnVoltage", 0.0),
         TOMOS, "rlnVoltage", id="subtomo-voltage_0"),
    case("refine", None, P(set_cell, TOMOS, "global", "rlnVoltage", 0.0),
         TOMOS, "rlnVoltage", id="refine-voltage_0"),
    case("reconstruct", None, P(set_cell, TOMOS, "global", "rlnTomoSizeX", 0),
         TOMOS, "rlnTomoSizeX", id="reconstruct-tomo_size_x_0"),
    case("subtomo", None, P(drop_column, TOMOS, "global", "rlnTomoHand"),
         TOMOS, "rlnTomoHand", id="subtomo-missing_rlnTomoHand"),
    case("refine", None, P(drop_column, TOMOS, "global", "rlnTomoHand"),
         TOMOS, "rlnTomoHand", id="refine-missing_rlnTomoHand"),
    case("subtomo", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesStarFile", "tilt_series/missing.star"),
         "tilt_series/missing.star", id="subtomo-tilt_series_file_missing"),
    case("reconstruct", None, P(set_cell, TOMOS, "global", "rlnTomoTiltSeriesStarFile", "tilt_series/missing.star"),
         "tilt_series/missing.star", id="reconstruct-tilt_series_file_missing"),
    case("subtomo", None, P(rename_table_beside_another, TILT_STAR, "TS_01", "TS_99"),
         TILT_STAR, "TS_01", id="subtomo-tilt_series_table_unknown"),
    case("reconstruct", None, P(rename_table_beside_another, TILT_STAR, "TS_01", "TS_99"),
         TILT_STAR, "TS_01", id="reconstruct-tilt_series_table_unknown"),
    # ------------------------------------------------ per-tilt tables
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographPreExposure", NAN),
         TILT_STAR, "rlnMicrographPreExposure", "nan", id="subtomo-pre_exposure_nan"),
    case("reconstruct", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographPreExposure", NAN),
         TILT_STAR, "rlnMicrographPreExposure", "nan", id="reconstruct-pre_exposure_nan"),
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnDefocusU", "abc"),
         TILT_STAR, "rlnDefocusU", "abc", id="subtomo-defocus_u_abc"),
    case("refine", None, P(set_cell, TILT_STAR, "TS_01", "rlnDefocusU", "abc"),
         TILT_STAR, "rlnDefocusU", "abc", id="refine-defocus_u_abc"),
    case("reconstruct", None, P(set_cell, TILT_STAR, "TS_01", "rlnTomoXTilt", INF),
         TILT_STAR, "rlnTomoXTilt", "inf", id="reconstruct-xtilt_inf"),
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnTomoYShiftAngst", NAN),
         TILT_STAR, "rlnTomoYShiftAngst", "nan", id="subtomo-yshift_nan"),
    case("refine", None, P(set_cell, TILT_STAR, "TS_01", "rlnTomoYShiftAngst", NAN),
         TILT_STAR, "rlnTomoYShiftAngst", "nan", id="refine-yshift_nan"),
    case("subtomo", None, P(drop_column, TILT_STAR, "TS_01", "rlnDefocusU"),
         TILT_STAR, "rlnDefocusU", id="subtomo-missing_rlnDefocusU"),
    case("reconstruct", None, P(drop_column, TILT_STAR, "TS_01", "rlnDefocusU"),
         TILT_STAR, "rlnDefocusU", id="reconstruct-missing_rlnDefocusU"),
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", "tilt_images/TS_01/missing_tilt.mrc"),
         "missing_tilt.mrc", id="subtomo-tilt_image_missing"),
    case("reconstruct", None,
         P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", "tilt_images/TS_01/missing_tilt.mrc"),
         "missing_tilt.mrc", id="reconstruct-tilt_image_missing"),
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", TILT_1 + ":xyz"),
         TILT_STAR, "rlnMicrographName", ":xyz", id="subtomo-tilt_image_suffix_xyz"),
    case("reconstruct", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", TILT_1 + ":spi"),
         TILT_STAR, "rlnMicrographName", ":spi", id="reconstruct-tilt_image_suffix_spi"),
    case("subtomo", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", "3@" + TILT_1),
         "TS_01_001_-60.0.mrc", id="subtomo-tilt_image_number_beyond_file"),
    case("reconstruct", None, P(set_cell, TILT_STAR, "TS_01", "rlnMicrographName", "3@" + TILT_1),
         "TS_01_001_-60.0.mrc", id="reconstruct-tilt_image_number_beyond_file"),
    case("subtomo", None, P(write_bytes, TILT_5, b"this is not an MRC file\n" * 400),
         "TS_01_005_0.0.mrc", id="subtomo-tilt_image_garbage"),
    case("reconstruct", None, P(write_bytes, TILT_5, b"this is not an MRC file\n" * 400),
         "TS_01_005_0.0.mrc", id="reconstruct-tilt_image_garbage"),
    case("subtomo", None, P(nan_in_mrc, TILT_5), "TS_01_005_0.0.mrc", id="subtomo-tilt_image_nan"),
    case("reconstruct", None, P(nan_in_mrc, TILT_5), "TS_01_005_0.0.mrc", id="reconstruct-tilt_image_nan"),
    # ------------------------------------------------ particles.star
    case("subtomo", None, P(set_cell, PTS, "particles", "rlnCenteredCoordinateXAngst", NAN),
         PTS, "rlnCenteredCoordinateXAngst", "nan", id="subtomo-coordinate_x_nan"),
    case("reconstruct", None, P(set_cell, PTS, "particles", "rlnCenteredCoordinateXAngst", NAN),
         PTS, "rlnCenteredCoordinateXAngst", "nan", id="reconstruct-coordinate_x_nan"),
    case("subtomo", None, P(set_cell, PTS, "particles", "rlnCenteredCoordinateXAngst", 1e9),
         PTS, ("1e+09", "1000000000", "1e9"), id="subtomo-coordinate_1e9"),
    case("reconstruct", None, P(set_cell, PTS, "particles", "rlnCenteredCoordinateXAngst", 1e9),
         PTS, ("1e+09", "1000000000", "1e9"), id="reconstruct-coordinate_1e9"),
    case("refine", None, P(set_cell, XPTS, "particles", "rlnCenteredCoordinateXAngst", 1e9),
         XPTS, ("1e+09", "1000000000", "1e9"), id="refine-coordinate_1e9"),
    case("subtomo", None, P(set_cell, PTS, "particles", "rlnAnglePsi", NAN),
         PTS, "rlnAnglePsi", "nan", id="subtomo-psi_nan"),
    case("reconstruct", None, P(set_cell, PTS, "particles", "rlnAnglePsi", NAN),
         PTS, "rlnAnglePsi", "nan", id="reconstruct-psi_nan"),
    case("refine", None, P(set_cell, XPTS, "particles", "rlnAnglePsi", NAN),
         XPTS, "rlnAnglePsi", "nan", id="refine-psi_nan"),
    case("reconstruct", None, P(set_cell, PTS, "particles", "rlnOriginXAngst", INF),
         PTS, "rlnOriginXAngst", "inf", id="reconstruct-origin_x_inf"),
    case("refine", None, P(set_cell, XPTS, "particles", "rlnOriginXAngst", INF),
         XPTS, "rlnOriginXAngst", "inf", id="refine-origin_x_inf"),
    case("subtomo", None, P(set_cell, PTS, "optics", "rlnTomoTiltSeriesPixelSize", 2.0),
         PTS, "rlnTomoTiltSeriesPixelSize", id="subtomo-optics_pixel_size_2_vs_4"),
    case("reconstruct", None, P(set_cell, PTS, "optics", "rlnTomoTiltSeriesPixelSize", 2.0),
         PTS, "rlnTomoTiltSeriesPixelSize", id="reconstruct-optics_pixel_size_2_vs_4"),
    case("subtomo", None, P(set_cell, PTS, "optics", "rlnVoltage", 200.0),
         PTS, "rlnVoltage", "200", id="subtomo-optics_voltage_200_vs_300"),
    case("refine", None, P(set_cell, XPTS, "optics", "rlnVoltage", 200.0),
         XPTS, "rlnVoltage", "200", id="refine-optics_voltage_200_vs_300"),
    case("subtomo", None, P(set_cell, PTS, "particles", "rlnTomoName", "TS_99"),
         "TS_99", id="subtomo-tomo_name_not_in_set"),
    case("reconstruct", None, P(set_cell, PTS, "particles", "rlnTomoName", "TS_99"),
         "TS_99", id="reconstruct-tomo_name_not_in_set"),
    case("refine", None, P(set_cell, XPTS, "particles", "rlnTomoName", "TS_99"),
         "TS_99", id="refine-tomo_name_not_in_set"),
    case("subtomo", None, P(drop_table, PTS, "particles"),
         PTS, ("data_particles", "table particles", "'particles'"), id="subtomo-no_particles_table"),
    case("reconstruct", None, P(drop_table, PTS, "particles"),
         PTS, ("data_particles", "table particles", "'particles'"), id="reconstruct-no_particles_table"),
    case("subtomo", None, P(empty_particles_table, PTS),
         PTS, ("no particle", "empty", "0 particles", "no rows"), id="subtomo-empty_particles_table"),
    case("reconstruct", None, P(empty_particles_table, PTS),
         PTS, ("no particle", "empty", "0 particles", "no rows"), id="reconstruct-empty_particles_table"),
    case("refine", None, P(empty_particles_table, XPTS),
         XPTS, ("no particle", "empty", "0 particles", "no rows"), id="refine-empty_particles_table"),
    case("refine", None, P(set_cell, XPTS, "particles", "rlnImageName",
                           "Extract/Subtomograms/TS_01/missing_stack2d.mrcs"),
         "missing_stack2d.mrcs", id="refine-particle_stack_missing"),
    # ------------------------------------------------ options
    case("subtomo", {"--b": "0"}, None, "--b", id="subtomo-box_0"),
    case("reconstruct", {"--b": "0"}, None, "--b", id="reconstruct-box_0"),
    case("subtomo", {"--bin": "0"}, None, "--bin", id="subtomo-bin_0"),
    case("reconstruct", {"--bin": "0"}, None, "--bin", id="reconstruct-bin_0"),
    case("reconstruct", {"--b": "23"}, None, "--b", "23", id="reconstruct-odd_box_23"),
    case("subtomo", {"--b": "23"}, None, "--b", "23", id="subtomo-odd_box_23"),
    case("reconstruct", {"--crop": "21"}, None, "--crop", "21", id="reconstruct-odd_crop_21"),
    case("reconstruct", {"--SNR": "inf"}, None, "--SNR", "inf", id="reconstruct-snr_inf"),
    case("refine", {"--particle_diameter": "nan"}, None, "--particle_diameter", "nan",
         id="refine-particle_diameter_nan"),
    case("subtomo", {"--max_dose": "nan"}, None, "--max_dose", "nan", id="subtomo-max_dose_nan"),
    case("reconstruct", {"--sym": "X9"}, None, "X9", id="reconstruct-sym_X9"),
    case("refine", {"--sym": "X9"}, None, "X9", id="refine-sym_X9"),
    case("subtomo", {"--j": "0"}, None, "--j", id="subtomo-j_0"),
    case("reconstruct", {"--j": "0"}, None, "--j", id="reconstruct-j_0"),
    case("refine", {"--j": "0"}, None, "--j", id="refine-j_0"),
    case("subtomo", {"--o": "taken"}, P(write_bytes, "taken", b"x"), "taken", id="subtomo-output_is_a_file"),
    case("reconstruct", {"--o": "taken"}, P(write_bytes, "taken", b"x"), "taken",
         id="reconstruct-output_is_a_file"),
    case("refine", {"--o": "taken/run"}, P(write_bytes, "taken", b"x"), "taken", id="refine-output_is_a_file"),
    case("postprocess", {"--o": "taken/postprocess"}, P(write_bytes, "taken", b"x"), "taken",
         id="postprocess-output_is_a_file"),
    case("mask_create", {"--o": "taken/mask.mrc"}, P(write_bytes, "taken", b"x"), "taken",
         id="mask_create-output_is_a_file"),
    case("refine", {"--iter": "0"}, None, "--iter", id="refine-iter_0"),
    case("refine", {"--ref": "Reconstruct/missing_ref.mrc"}, None, "missing_ref.mrc", id="refine-ref_missing"),
    case("refine", {"--ref": "Inputs/ref_box24.mrc"}, P(write_map, "Inputs/ref_box24.mrc", (24, 24, 24), 8.0, 0.1),
         "ref_box24.mrc", id="refine-ref_other_box"),
    case("refine", {"--ref": "Inputs/ref_16A.mrc"}, P(write_map, "Inputs/ref_16A.mrc", (32, 32, 32), 16.0, 0.1),
         "ref_16A.mrc", id="refine-ref_other_pixel_size"),
    case("refine", {"--ref": "Inputs/ref_nan.mrc"},
         both(P(write_map, "Inputs/ref_nan.mrc", source="Reconstruct/merged.mrc"),
              P(nan_in_mrc, "Inputs/ref_nan.mrc")),
         "ref_nan.mrc", id="refine-ref_nan"),
    case("refine", {"--ref": "Reconstruct/merged.mrc:spi"}, None, "merged.mrc", ":spi", id="refine-ref_suffix_spi"),
    case("refine", {"--solvent_mask": "Inputs/mask_box24.mrc", "--flatten_solvent": ""},
         P(write_map, "Inputs/mask_box24.mrc", (24, 24, 24), 8.0, 1.0),
         "mask_box24.mrc", id="refine-solvent_mask_other_box"),
    case("refine", _plus("--frobnicate", "3"), None, "--frobnicate", id="refine-unknown_option"),
    # ------------------------------------------------ postprocess
    case("postprocess", {"--i": "Inputs/x_half1.mrc", "--angpix": "4"},
         both(P(write_map, "Inputs/x_half1.mrc", px=4.0, source="Reconstruct/half1.mrc"),
              P(write_map, "Inputs/x_half2.mrc", px=8.0, source="Reconstruct/half2.mrc")),
         "x_half2.mrc", "8", id="postprocess-half2_8A_vs_half1_4A"),
    case("postprocess", {"--i2": "Inputs/small_half2.mrc"},
         P(write_map, "Inputs/small_half2.mrc", (24, 24, 24), 8.0, 0.1),
         "small_half2.mrc", id="postprocess-half_maps_other_boxes"),
    case("postprocess", {"--mask": "Inputs/mask_1p5.mrc"}, P(write_map, "Inputs/mask_1p5.mrc", fill=1.5),
         "mask_1p5.mrc", "[0, 1]", id="postprocess-mask_outside_0_1"),
    case("postprocess", {"--mask": "Inputs/mask_box24.mrc"},
         P(write_map, "Inputs/mask_box24.mrc", (24, 24, 24), 8.0, 1.0),
         "mask_box24.mrc", id="postprocess-mask_other_box"),
    case("postprocess", {"--mask": "MaskCreate/missing_mask.mrc"}, None,
         "missing_mask.mrc", id="postprocess-mask_missing"),
    case("postprocess", {"--i": "Reconstruct/merged.mrc"}, None, "--i2", id="postprocess-name_without_half1"),
    case("postprocess", {"--i": "Inputs/y_half1.mrc"},
         P(write_map, "Inputs/y_half1.mrc", source="Reconstruct/half1.mrc"),
         "y_half2.mrc", id="postprocess-half2_missing"),
    case("postprocess", {"--i2": "Inputs/nan_half2.mrc"},
         both(P(write_map, "Inputs/nan_half2.mrc", source="Reconstruct/half2.mrc"),
              P(nan_in_mrc, "Inputs/nan_half2.mrc")),
         "nan_half2.mrc", id="postprocess-half2_nan"),
    case("postprocess", _plus("--frobnicate", "3"), None, "--frobnicate", id="postprocess-unknown_option"),
    # ------------------------------------------------ mask_create
    case("mask_create", {"--i": "Reconstruct/missing_map.mrc"}, None, "missing_map.mrc",
         id="mask_create-input_missing"),
    case("mask_create", {"--i": "Inputs/nan_map.mrc"},
         both(P(write_map, "Inputs/nan_map.mrc", source="Reconstruct/merged.mrc"),
              P(nan_in_mrc, "Inputs/nan_map.mrc")),
         "nan_map.mrc", id="mask_create-input_nan"),
    case("mask_create", {"--i": "Inputs/garbage.mrc"}, P(write_bytes, "Inputs/garbage.mrc", b"not a map\n" * 300),
         "garbage.mrc", id="mask_create-input_garbage"),
    case("mask_create", _plus("--frobnicate", "3"), None, "--frobnicate", id="mask_create-unknown_option"),
    # ------------------------------------------------ star_handler
    case("star_handler", {"--i": "missing.star"}, None, "missing.star", id="star_handler-input_missing"),
    case("star_handler", {"--select": "rlnNoSuchLabel"}, None, "rlnNoSuchLabel",
         id="star_handler-select_unknown_label"),
    case("star_handler", {"--i": "Inputs/garbage.star"}, P(write_bytes, "Inputs/garbage.star", bytes(range(256)) * 8),
         "garbage.star", id="star_handler-input_garbage"),
    case("star_handler", {"--o": "taken/out.star"}, P(write_bytes, "taken", b"x"), "taken",
         id="star_handler-output_is_a_file"),
    case("star_handler", _plus("--frobnicate", "3"), None, "--frobnicate", id="star_handler-unknown_option"),
    case("subtomo", _plus("--frobnicate", "3"), None, "--frobnicate", id="subtomo-unknown_option"),
    case("reconstruct", _plus("--frobnicate", "3"), None, "--frobnicate", id="reconstruct-unknown_option"),
    # ------------------------------------------------ inputs named on the command line
    case("subtomo", {"--i": "missing_set.star"}, None, "missing_set.star", id="subtomo-optimisation_set_missing"),
    case("reconstruct", {"--i": "missing_set.star"}, None, "missing_set.star",
         id="reconstruct-optimisation_set_missing"),
    case("refine", {"--tomograms": "missing_tomograms.star"}, None, "missing_tomograms.star",
         id="refine-tomograms_missing"),
    case("refine", {"--i": "missing_particles.star"}, None, "missing_particles.star", id="refine-particles_missing"),
]


# ---------------------------------------------------------------- the check


def snapshot(root):
    """Every file under ``root``: relative path -> (size, mtime_ns, sha1)."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            with open(path, "rb") as fh:
                digest = hashlib.sha1(fh.read()).hexdigest()
            files[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
    return files


def _run_tool(tool, argv, workdir):
    """(exit code, RuntimeWarnings) of one in-process run; SystemExit counts as the exit code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as on the command line: printed, not raised
        try:
            code = run_in(workdir, TOOLS[tool], argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_corpus_size():
    assert len(CASES) >= 65


@pytest.mark.parametrize("tool,argv_edit,mutate,needles", CASES)
def test_bad_input(tool, argv_edit, mutate, needles, project, tmp_path, capsys):
    work = tmp_path / "project"
    shutil.copytree(project, work)
    if mutate is not None:
        run_in(work, lambda _: mutate(), None)
    argv = _argv(tool, argv_edit)
    before = snapshot(work)
    capsys.readouterr()
    code, runtime_warnings = _run_tool(tool, argv, work)
    err = capsys.readouterr().err
    after = snapshot(work)

    lines = err.strip().splitlines()
    # the copy's path holds the test id: needles must be found in the rest of the line
    plain = lines[0].replace(str(work), "<project>") if lines else ""
    problems = []
    if code == 0:
        problems.append("exit code 0")
    if len(lines) != 1 or not lines[0].startswith("ERROR:"):
        problems.append(f"stderr is not one ERROR line: {lines[:4]}")
    elif any(not any(n in plain for n in ((needle,) if isinstance(needle, str) else needle))
             for needle in needles):
        problems.append(f"ERROR line lacks {needles}: {lines[0]!r}")
    if re.search(r"\bnp\.\w+\(|Traceback", plain):
        problems.append(f"Python internals in the ERROR line (values as a user wrote them): {lines[0]!r}")
    if runtime_warnings:
        problems.append(f"RuntimeWarnings: {runtime_warnings[:3]}")
    new = sorted(set(after) - set(before))
    changed = sorted(p for p in set(after) & set(before) if after[p] != before[p])
    removed = sorted(set(before) - set(after))
    if new or changed or removed:
        problems.append(f"files new {new[:6]} changed {changed[:6]} removed {removed[:6]}")
    assert not problems, f"sta_{tool} {' '.join(argv)} (exit {code}): " + "; ".join(problems)
