"""RELION image names ``[N@]path[:type]`` as Scipion writes them: one parser, same results.

Scipion's RELION-tomography plugin writes every tilt image as ``N@stack.mrc:mrcs``; the tools
must read such names and give bit-identical outputs to plain per-tilt names.
"""

import os

import mrcfile
import numpy as np
import pytest

from sta.commands import reconstruct_particle, refine, subtomo
from sta.errors import InputError
from sta.io.image_name import image_file, map_file, parse_image_name
from sta.io.star import read_star, write_star
from tests.conftest import one_error_line, run_in


@pytest.mark.parametrize("name,path,section,ftype", [
    ("1@Runs/000002_ProtImportTs/extra/TS_01.mrc:mrcs", "Runs/000002_ProtImportTs/extra/TS_01.mrc", 1, "mrcs"),
    ("000021@stack.mrcs", "stack.mrcs", 21, None),
    ("TS_01.st:MRC", "TS_01.st", None, "mrc"),
    ("/data/run:2/map.mrc", "/data/run:2/map.mrc", None, None),
    ("user@host/x.mrc", "user@host/x.mrc", None, None),
    ("plain.mrc", "plain.mrc", None, None),
])
def test_parse_image_name(name, path, section, ftype):
    got = parse_image_name(name)
    assert (got.path, got.section, got.type) == (path, section, ftype)
    assert image_file(name) == path


@pytest.mark.parametrize("name,text", [
    ("x.mrc:spi", "(SPIDER) is not read by sta"),
    ("x.mrc:tif", "(TIFF) is not read by sta"),
    ("x.mrc:foo", "unknown type suffix ':foo'"),
    ("0@x.mrcs", "image number 0"),
    ("3@:mrcs", "no file name"),
])
def test_bad_image_names(name, text):
    with pytest.raises(InputError, match=text.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_image_name(name, "f.star: table t row 2 rlnMicrographName")
    assert "f.star: table t row 2 rlnMicrographName" in str(err.value)


def test_map_names_take_a_type_but_no_section():
    assert map_file("Refine3D/run_class001.mrc:mrc") == "Refine3D/run_class001.mrc"
    with pytest.raises(InputError, match="image number"):
        map_file("2@Refine3D/run_class001.mrc")


# ---------------------------------------------------------------- the tools on Scipion-style names

@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """One small simulated project twice: as simulated (one MRC per tilt) and as Scipion writes
    it (one stack per tilt series, tilt ``k`` named ``k@tilt_stacks/TS_01.mrc:mrcs``)."""
    from sta.simulate.project import SimulationParameters, simulate_project

    plain = tmp_path_factory.mktemp("plain")
    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=8, image_size=(200, 200),
                             tomo_size=(220, 220, 64), tilt_step=10.0, snr=1.0, seed=3,
                             perturb_angles=3, perturb_offsets=2)
    simulate_project(p, str(plain))
    scipion = tmp_path_factory.mktemp("scipion")
    for item in os.listdir(plain):
        os.symlink(plain / item, scipion / item)
    os.remove(scipion / "tilt_series")
    os.mkdir(scipion / "tilt_series")
    os.mkdir(scipion / "tilt_stacks")
    for star_path in sorted((plain / "tilt_series").glob("*.star")):
        star = read_star(star_path)
        table = next(t for t in star.values() if t.loop)
        df = table.df
        images = [mrcfile.read(plain / n).reshape(-1, *mrcfile.read(plain / n).shape[-2:])[0]
                  for n in df["rlnMicrographName"]]
        stack = f"tilt_stacks/{table.name}.mrc"
        with mrcfile.new(scipion / stack) as mrc:  # a volume header (ispg 1): ':mrcs' says "stack"
            mrc.set_data(np.stack(images).astype(np.float32))
            mrc.voxel_size = 4.0
        df["rlnMicrographName"] = [f"{k}@{stack}:mrcs" for k in range(1, len(df) + 1)]
        write_star(scipion / "tilt_series" / star_path.name, star)
    return plain, scipion


def _same_file_data(a, b):
    da, db = mrcfile.read(a), mrcfile.read(b)
    assert da.shape == db.shape and np.array_equal(da, db), (a, b)


def test_scipion_names_give_identical_outputs(projects):
    """sta_subtomo, sta_reconstruct_particle and sta_refine on ``N@stack.mrc:mrcs`` tilt images
    (and ``:mrcs`` particle stacks, ``:mrc`` reference) give bit-identical maps and stacks."""
    plain, scipion = projects
    for root in (plain, scipion):
        assert run_in(root, subtomo.main, ["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2",
                                        "--stack2d", "--o", "Extract/", "--j", "1"]) == 0
        assert run_in(root, reconstruct_particle.main, ["--i", "optimisation_set_perturbed.star", "--b", "24",
                                                     "--bin", "2", "--o", "Reconstruct/", "--j", "1"]) == 0
    stacks = sorted(p.relative_to(plain) for p in plain.glob("Extract/Subtomograms/*/*_stack2d.mrcs"))
    assert len(stacks) == 8
    for rel in stacks:
        _same_file_data(plain / rel, scipion / rel)
    for name in ("merged.mrc", "half1.mrc", "half2.mrc"):
        _same_file_data(plain / "Reconstruct" / name, scipion / "Reconstruct" / name)
    # particle stacks named with a type suffix, as Scipion's extraction output is
    star = read_star(scipion / "Extract" / "particles.star")
    star["particles"].df["rlnImageName"] = [f"{n}:mrcs" for n in star["particles"].df["rlnImageName"]]
    write_star(scipion / "Extract" / "particles_scipion.star", star)
    common = ["--auto_refine", "--split_random_halves", "--tomograms", "tomograms.star", "--ini_high", "30",
              "--ctf", "--particle_diameter", "150", "--healpix_order", "2", "--offset_range", "2",
              "--offset_step", "1", "--sym", "C6", "--random_seed", "1", "--iter", "2", "--j", "1"]
    assert run_in(plain, refine.main, ["--o", "Refine3D/run", "--i", "Extract/particles.star",
                                    "--ref", "Reconstruct/merged.mrc"] + common) == 0
    assert run_in(scipion, refine.main, ["--o", "Refine3D/run", "--i", "Extract/particles_scipion.star",
                                      "--ref", "Reconstruct/merged.mrc:mrc"] + common) == 0
    for name in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        _same_file_data(plain / "Refine3D" / name, scipion / "Refine3D" / name)


def test_bad_scipion_names_give_one_line(projects, capsys):
    """An unknown type suffix and a section past the end of the stack: one line naming them."""
    _, scipion = projects
    star_path = next((scipion / "tilt_series").glob("*.star"))
    original = star_path.read_text()
    try:
        for bad, text in ((":mrcs", ":xyz"), ("1@", "999@")):
            star = read_star(star_path)
            table = next(t for t in star.values() if t.loop)
            table.df.loc[0, "rlnMicrographName"] = table.df.loc[0, "rlnMicrographName"].replace(bad, text)
            write_star(star_path, star)
            assert run_in(scipion, subtomo.main, ["--i", "optimisation_set_perturbed.star", "--b", "24", "--bin", "2",
                                               "--stack2d", "--o", "Bad/", "--j", "1"]) == 1
            line = one_error_line(capsys)
            assert star_path.name in line
            assert ("unknown type suffix ':xyz'" in line) if text == ":xyz" else ("999" in line and "holds" in line)
            star_path.write_text(original)
    finally:
        star_path.write_text(original)
