"""sta_submit and jobscripts/: RELION's queue-template substitution and whole-line rule."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sta.commands import submit

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ["slurm", "pbs", "sge", "lsf"]
REFINE = ["sta_refine", "--o", "Refine3D/job010/run", "--auto_refine", "--split_random_halves",
          "--i", "Extract/job008/particles.star", "--tomograms", "tomograms.star", "--ref",
          "Reconstruct/job005/half1.mrc", "--sym", "C6", "--j", "8", "--pipeline_control",
          "Refine3D/job010/"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("RELION_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _fill(args):
    code = submit.main(args)
    return code


def _write_template(tmp_path, text, name="t.sh"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_slurm_refine_script(tmp_path):
    assert _fill(["--template", "slurm", "--mpi", "5", "--threads", "8", "--queue", "gpu",
                  "--extra1", "1-00:00:00", "--extra2", "", "--print", "--"] + REFINE) == 0
    script = tmp_path / "Refine3D" / "job010" / "run_submit.script"
    text = script.read_text()
    assert not re.search(r"XXX\w+XXX", text)
    lines = text.splitlines()
    assert "mpirun -n 5 " + " ".join(REFINE) in lines
    for directive in ("--ntasks=5", "--cpus-per-task=8", "--partition=gpu", "--time=1-00:00:00",
                      "--output=Refine3D/job010/run.out", "--error=Refine3D/job010/run.err",
                      "--job-name=Refine3D/job010/"):
        assert f"#SBATCH {directive}" in lines, directive
    assert os.stat(script).st_mode & stat.S_IXUSR
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_fills_to_valid_bash(name, tmp_path):
    assert (ROOT / "jobscripts" / f"{name}.sh").exists()
    assert _fill(["--template", str(ROOT / "jobscripts" / f"{name}.sh"), "--mpi", "3", "--threads", "4",
                  "--dedicated", "8", "--extra1", "12:00:00", "--extra2", "module load mpi",
                  "--name", f"Job/{name}/", "--print", "--"] + REFINE) == 0
    text = (tmp_path / "Job" / name / "run_submit.script").read_text()
    assert not re.search(r"XXX\w+XXX", text)
    assert "mpirun -n 3 sta_refine --o Refine3D/job010/run" in text
    assert "module load mpi" in text.splitlines()
    res = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_numbers_and_names(tmp_path):
    t = _write_template(tmp_path, "mpi=XXXmpinodesXXX thr=XXXthreadsXXX cores=XXXcoresXXX "
                                  "ded=XXXdedicatedXXX nodes=XXXnodesXXX q=XXXqueueXXX\n"
                                  "name=XXXnameXXX out=XXXoutfileXXX err=XXXerrfileXXX\n"
                                  "e1=XXXextra1XXX e2=XXXextra2XXX e3=XXXextra3XXX twice=XXXcoresXXX/XXXcoresXXX\n"
                                  "go XXXcommandXXX\n")
    assert _fill(["--template", t, "--mpi", "5", "--threads", "3", "--dedicated", "4", "--queue", "q1",
                  "--extra1", "a", "--extra2", "b c", "--extra", "3=d", "--name", "Class3D/job004",
                  "--print", "--", "sta_reconstruct_particle", "--o", "x/"]) == 0
    lines = (tmp_path / "Class3D" / "job004" / "run_submit.script").read_text().splitlines()
    # cores = 5 x 3 = 15, nodes = ceil(15 / 4) = 4; the job dir gets RELION's trailing slash
    assert lines[0] == "mpi=5 thr=3 cores=15 ded=4 nodes=4 q=q1"
    assert lines[1] == "name=Class3D/job004/ out=Class3D/job004/run.out err=Class3D/job004/run.err"
    assert lines[2] == "e1=a e2=b c e3=d twice=15/15"
    assert lines[3] == "go sta_reconstruct_particle --o x/"


def test_relion_environment_defaults(tmp_path, monkeypatch):
    t = _write_template(tmp_path, "q=XXXqueueXXX ded=XXXdedicatedXXX nodes=XXXnodesXXX e1=XXXextra1XXX\n"
                                  "mpirun -n XXXmpinodesXXX XXXcommandXXX\n")
    monkeypatch.setenv("RELION_QSUB_TEMPLATE", t)
    monkeypatch.setenv("RELION_MINIMUM_DEDICATED", "16")
    monkeypatch.setenv("RELION_QSUB_EXTRA1_DEFAULT", "48:00:00")
    assert _fill(["--mpi", "5", "--threads", "8", "--print", "--", "relion_refine_mpi", "--o", "R/job1/run"]) == 0
    lines = (tmp_path / "R" / "job1" / "run_submit.script").read_text().splitlines()
    assert lines[0] == "q=openmpi ded=16 nodes=3 e1=48:00:00"
    assert lines[1] == "mpirun -n 5 relion_refine_mpi --o R/job1/run"


def test_whole_line_rule(tmp_path):
    """RELION's rule (pipeline_jobs.cpp): with several ranks, only MPI programs go into the
    XXXcommandXXX line; serial programs and shell commands replace the whole line."""
    t = _write_template(tmp_path, "#!/bin/bash\necho start\nmpirun -n XXXmpinodesXXX XXXcommandXXX >> log\necho end\n")
    cmds = ["--command", "sta_mask_create --version", "--command", "rm -f R/job1/RELION_JOB_EXIT_SUCCESS",
            "--command", "relion_postprocess --version", "--command", "relion_tomo_subtomo_mpi --o R/job1/"]
    assert _fill(["--template", t, "--mpi", "5", "--name", "R/job1/", "--print"] + cmds
                 + ["--", "sta_reconstruct_particle", "--o", "R/job1/"]) == 0
    lines = (tmp_path / "R" / "job1" / "run_submit.script").read_text().splitlines()
    assert lines[:2] == ["#!/bin/bash", "echo start"]
    assert lines[2:7] == ["sta_mask_create --version",
                          "rm -f R/job1/RELION_JOB_EXIT_SUCCESS",
                          "relion_postprocess --version",
                          "mpirun -n 5 relion_tomo_subtomo_mpi --o R/job1/ >> log",
                          "mpirun -n 5 sta_reconstruct_particle --o R/job1/ >> log"]
    assert lines[7] == "echo end"
    # one rank: every RELION/sta program goes into the template line, shell commands do not
    assert _fill(["--template", t, "--mpi", "1", "--name", "R/job2/", "--print", "--command", "rm -f x",
                  "--", "sta_mask_create", "--i", "a.mrc"]) == 0
    lines = (tmp_path / "R" / "job2" / "run_submit.script").read_text().splitlines()
    assert lines[2:4] == ["rm -f x", "mpirun -n 1 sta_mask_create --i a.mrc >> log"]


def test_job_dir_from_command(tmp_path):
    t = _write_template(tmp_path, "XXXnameXXX XXXcommandXXX\n")
    assert _fill(["--template", t, "--print", "--", "sta_postprocess", "--i", "h1.mrc", "--o",
                  "PostProcess/job007/postprocess"]) == 0
    assert (tmp_path / "PostProcess" / "job007" / "run_submit.script").read_text().startswith(
        "PostProcess/job007/ sta_postprocess")
    assert _fill(["--template", t, "--print", "--", "sta_x", "--o", "A/", "--pipeline_control", "B/job1/"]) == 0
    assert (tmp_path / "B" / "job1" / "run_submit.script").exists()


def test_quoting_survives(tmp_path):
    t = _write_template(tmp_path, "mpirun -n XXXmpinodesXXX XXXcommandXXX\n")
    assert _fill(["--template", t, "--mpi", "3", "--name", "J/", "--print", "--", "sta_refine", "--gpu", "",
                  "--o", "J/run dir"]) == 0
    line = (tmp_path / "J" / "run_submit.script").read_text().splitlines()[0]
    assert line == "mpirun -n 3 sta_refine --gpu '' --o 'J/run dir'"


@pytest.mark.parametrize("args,needle", [
    (["--mpi", "2", "--name", "J/", "--", "sta_refine"], "XXXextra1XXX"),
    (["--name", "J/", "--extra1", "1", "--extra2", ""], "no command"),
    (["--extra1", "1", "--extra2", "", "--", "sta_refine"], "--name"),
    (["--extra", "x=1", "--name", "J/", "--", "sta_refine"], "--extra"),
])
def test_bad_input_one_line(args, needle, tmp_path, capsys):
    assert _fill(["--template", "slurm", "--print"] + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_unknown_variable_is_refused(tmp_path, capsys):
    t = _write_template(tmp_path, "#SBATCH --mem=XXXmemXXX\nXXXcommandXXX\n")
    assert _fill(["--template", t, "--name", "J/", "--print", "--", "sta_refine"]) == 1
    err = capsys.readouterr().err
    assert "XXXmemXXX" in err and "line 1" in err
    assert not (tmp_path / "J" / "run_submit.script").exists()


def test_submit_with_command(tmp_path, capsys):
    fake = tmp_path / "fake_sbatch"
    fake.write_text('#!/bin/sh\necho "$@" > submitted_args\necho "Submitted batch job 42"\n')
    fake.chmod(0o755)
    assert _fill(["--template", "slurm", "--mpi", "5", "--threads", "2", "--extra1", "1:00:00",
                  "--extra2", "", "--submit_command", str(fake), "--"] + REFINE) == 0
    assert "Submitted batch job 42" in capsys.readouterr().out
    assert (tmp_path / "submitted_args").read_text().strip() == "Refine3D/job010/run_submit.script"
    # LSF style: the script on stdin
    fake_lsf = tmp_path / "fake_bsub"
    fake_lsf.write_text("#!/bin/sh\ncat > received\necho 'Job <7> is submitted'\n")
    fake_lsf.chmod(0o755)
    assert _fill(["--template", "lsf", "--mpi", "3", "--extra1", "60", "--extra2", "", "--name", "L/",
                  "--submit_command", f"{fake_lsf} <", "--"] + REFINE) == 0
    assert (tmp_path / "received").read_text() == (tmp_path / "L" / "run_submit.script").read_text()
    # a failing submission is one line with the exit code
    bad = tmp_path / "bad_sbatch"
    bad.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\nexit 3\n")
    bad.chmod(0o755)
    capsys.readouterr()
    assert _fill(["--template", "slurm", "--extra1", "1", "--extra2", "", "--name", "B/",
                  "--submit_command", str(bad), "--"] + REFINE) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exited with 3" in err[0] and "invalid partition" in err[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_filled_script_runs(tmp_path):
    """A filled template really runs its command (a stand-in for mpirun on PATH)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mpirun").write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    (bindir / "mpirun").chmod(0o755)
    t = _write_template(tmp_path, "#!/bin/bash\nmpirun -n XXXmpinodesXXX XXXcommandXXX\n")
    assert _fill(["--template", t, "--mpi", "3", "--name", "J/", "--print", "--",
                  "sta_reconstruct_particle", "--version"]) == 0
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run(["bash", "J/run_submit.script"], capture_output=True, text=True, env=env, timeout=60)
    if res.returncode == 127:
        pytest.skip("sta_reconstruct_particle console script not installed")
    assert res.returncode == 0, res.stderr
    assert "RELION version: 5.0-compatible" in res.stdout
