"""Reliability of every tool (issue 13): file modes, job files on a bad command line, negative
numbers in exponent form, --iter 0, reconstruct_particle's optimisation set, one-line OS
errors, note.txt only after a successful run."""

import builtins
import errno
import os
import stat

import numpy as np
import pytest

from sta.commands import _cli, reconstruct_particle, refine, star_handler
from sta.io.atomic import current_umask, write_text_atomic
from sta.io.mrc import write_mrc
from sta.io.optimisation_set import OptimisationSet
from sta.io.star import read_star, write_star
from tests.conftest import one_error_line

TINY_STAR = """
data_particles

loop_
_rlnTomoName #1
_rlnRandomSubset #2
_rlnClassNumber #3
TS_01 1 -3
TS_01 2 -1
TS_01 1 2
"""


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.fixture
def tiny_star(chdir_tmp):
    (chdir_tmp / "in.star").write_text(TINY_STAR)
    return "in.star"


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------- 1. umask


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_umask(mask, expected, umask, tmp_path):
    umask(mask)
    assert current_umask() == mask
    write_mrc(tmp_path / "a.mrc", np.zeros((4, 4, 4), np.float32), 1.0)
    write_text_atomic(tmp_path / "b.txt", "x\n")
    write_star(tmp_path / "c.star", {"t": {"rlnImageSize": 4}})
    _cli.write_note(str(tmp_path), ["--o", "x"])
    for name in ("a.mrc", "b.txt", "c.star", "note.txt"):
        assert _mode(tmp_path / name) == expected, (name, oct(_mode(tmp_path / name)))
    # rewriting an existing file keeps following the umask, not the old file's mode
    os.chmod(tmp_path / "b.txt", 0o600)
    write_text_atomic(tmp_path / "b.txt", "y\n")
    assert _mode(tmp_path / "b.txt") == expected
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


# ----------------------------------------------------------------- 2. bad command line


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_parse_error_writes_exit_failure(form, tiny_star, capsys):
    job = "Select/job001/"
    control = ["--pipeline_control", job] if form == "separate" else [f"--pipeline_control={job}"]
    code = star_handler.main(["--i", tiny_star, "--no_such_flag"] + control)
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: sta_star_handler: ") and "--no_such_flag" in err[0], err
    assert os.path.exists(job + "RELION_JOB_EXIT_FAILURE")
    assert not os.path.exists(job + "RELION_JOB_EXIT_SUCCESS")


def test_help_and_version_write_no_job_file(tiny_star, capsys):
    for flag in ("--help", "--version"):
        assert star_handler.main([flag, "--pipeline_control", "Job/"]) == 0
    assert not os.path.exists("Job")
    assert _cli.pipeline_control_in(["--i", "x", "--pipeline_control"]) is None
    assert _cli.pipeline_control_in(["--pipeline_control", "A/", "--pipeline_control=B/"]) == "B/"


# ----------------------------------------------------------------- 3. negative exponents


def test_negative_exponent_option_values(tiny_star):
    assert star_handler.main(["--i", tiny_star, "--o", "out.star", "--select", "rlnClassNumber",
                              "--minval", "-1e9", "--maxval", "-1.5E-1"]) == 0
    df = read_star("out.star")["particles"].df
    assert df["rlnClassNumber"].tolist() == [-3, -1]
    parser = _cli.make_parser("t", "")
    parser.add_argument("--x", type=float)
    parser.add_argument("--n", type=int)
    parser.add_argument("--flag", action="store_true")
    for text in ("-1e9", "-1.5E-3", "-.5e2", "-2", "-0.25", "-.5", "-1e+3"):
        args = parser.parse_args(["--x", text, "--n", "-3", "--flag"])
        assert args.x == float(text) and args.n == -3 and args.flag


# ----------------------------------------------------------------- 4. sta_refine --iter 0


def test_refine_iter_0_is_refused_first(tmp_path, capsys):
    code = refine.main(["--o", str(tmp_path / "R" / "run"), "--auto_refine", "--split_random_halves",
                        "--i", str(tmp_path / "missing.star"), "--iter", "0"])
    assert code == 1
    line = one_error_line(capsys)
    assert line.startswith("ERROR: --iter 0:"), line
    assert not (tmp_path / "R").exists()


# ----------------------------------------------------------------- 5. optimisation_set.star


def _simulate(tmp_path):
    from sta.simulate.project import SimulationParameters, simulate_project

    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=12, box=32, pixel_size=6.0,
                             image_size=(200, 200), tomo_size=(200, 200, 70), snr=0, seed=5)
    simulate_project(p, str(tmp_path))


def test_reconstruct_writes_optimisation_set_and_note_only_on_success(chdir_tmp, capsys):
    _simulate(chdir_tmp)
    argv = ["--i", "optimisation_set.star", "--b", "32", "--o", "Rec/", "--j", "1", "--j_out", "1"]
    assert reconstruct_particle.main(argv) == 0
    opt = OptimisationSet.read("Rec/optimisation_set.star")
    assert (opt.ref1, opt.ref2) == ("Rec/half1.mrc", "Rec/half2.mrc")
    assert (opt.particles, opt.tomograms) == ("particles.star", "tomograms.star")
    assert os.path.exists(opt.resolve(opt.ref1)) and os.path.exists(opt.resolve(opt.ref2))
    assert len(opt.load_particles()) == 12
    # 7. a run that fails leaves the previous run's note.txt as it was
    note = (chdir_tmp / "Rec" / "note.txt").read_text()
    assert note.startswith("Command:") and "--o Rec/" in note
    capsys.readouterr()
    assert reconstruct_particle.main(argv[:-4] + ["--sym", "Q7", "--j", "1"]) == 1
    assert "Q7" in one_error_line(capsys)
    assert (chdir_tmp / "Rec" / "note.txt").read_text() == note


# ----------------------------------------------------------------- 6. OS errors in one line


def test_output_that_is_a_file(tiny_star, capsys):
    open("taken", "w").close()
    assert star_handler.main(["--i", tiny_star, "--o", "taken/out.star"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("ERROR: cannot write taken/out.star: taken:") and "File exists" in line, line
    assert reconstruct_particle.main(["--i", "optimisation_set.star", "--b", "8", "--o", "taken"]) == 1
    assert one_error_line(capsys) == "ERROR: --o taken: exists and is not a directory"

    def body(args):  # a folder made under --o that is a file (sta_subtomo's taken/Subtomograms)
        os.makedirs("taken/Subtomograms")

    assert _cli.run("sta_test", _cli.make_parser("sta_test", ""), body, []) == 1
    assert one_error_line(capsys) == "ERROR: cannot use taken/Subtomograms: taken is a file, not a folder"


def test_disk_full_names_the_file(tiny_star, capsys, monkeypatch):
    real_open = builtins.open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name

    def full_open(path, mode="r", *args, **kw):
        fh = real_open(path, mode, *args, **kw)
        return FullDisk(fh) if "w" in mode else fh

    monkeypatch.setattr("sta.io.star.open", full_open, raising=False)
    assert star_handler.main(["--i", tiny_star, "--o", "Sel/out.star"]) == 1
    assert one_error_line(capsys) == f"ERROR: cannot write Sel/out.star: {os.strerror(errno.ENOSPC)}"
    assert os.listdir("Sel") == []  # no temporary file left behind
    monkeypatch.undo()

    def body(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y.mrc")

    assert _cli.run("sta_test", _cli.make_parser("sta_test", ""), body, []) == 1
    assert one_error_line(capsys) == f"ERROR: cannot write /x/y.mrc: {os.strerror(errno.ENOSPC)}"
