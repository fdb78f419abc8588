"""sta_relion_aliases: RELION-named executables that run the sta tools with RELION's argv."""

import importlib
import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

import sta.commands
from sta import __version__
from sta.commands import relion_aliases
from tests.conftest import requires_mpirun

VERSION_LINE = f"RELION version: 5.0-compatible (sta {__version__})"


@pytest.fixture(scope="module")
def alias_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("aliases") / "bin"
    assert relion_aliases.main(["--o", str(directory)]) == 0
    return directory


def _tool_modules():
    for info in pkgutil.iter_modules(sta.commands.__path__):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"sta.commands.{info.name}")


def test_every_relion_name_written(alias_dir):
    launchers = {"mpirun", "mpiexec"} & set(os.listdir(alias_dir))
    written = sorted(set(os.listdir(alias_dir)) - launchers)
    assert written == sorted(relion_aliases.ALIASES)
    for name in ("relion_tomo_refine_ctf_mpi", "relion_tomo_align_mpi", "relion_align_symmetry",
                 "relion_tomo_subtomo", "relion_refine"):  # the names Scipion's plugin calls
        assert name in written
    launcher = relion_aliases.find_launcher(sys.executable, str(alias_dir))
    hydra = launcher is not None and relion_aliases.is_hydra(launcher)
    assert launchers == ({"mpirun", "mpiexec"} if hydra else set())
    for name in ("relion_tomo_reconstruct_particle", "relion_tomo_reconstruct_particle_mpi",
                 "relion_mask_create", "relion_postprocess", "relion_postprocess_mpi",
                 "relion_star_handler"):
        assert name in written
    for name in written:
        path = alias_dir / name
        assert os.access(path, os.X_OK), name
        text = path.read_text()
        assert text.startswith("#!/bin/sh\n")
        mod = relion_aliases.ALIASES[name]
        if importlib.util.find_spec(f"sta.commands.{mod}") is not None:
            assert f'-m sta.commands.{mod} "$@"' in text
        else:  # a tool still to come: the script says so (test_missing_tools_fail_visibly)
            assert f"-m sta.commands._missing {name} sta_{mod} " in text
        assert os.path.abspath(sys.executable) in text
    assert not list(alias_dir.glob(".*"))  # no temporary files left behind


def test_rewrite_is_idempotent(alias_dir):
    before = {p.name: p.read_text() for p in alias_dir.iterdir()}
    assert relion_aliases.main(["--o", str(alias_dir)]) == 0
    assert {p.name: p.read_text() for p in alias_dir.iterdir()} == before


def test_mask_create_version(alias_dir):
    res = subprocess.run([str(alias_dir / "relion_mask_create"), "--version"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert line == VERSION_LINE
    assert line.startswith("RELION version: 5") and "sta" in line


def test_every_alias_answers_version_and_help(alias_dir):
    for path in sorted(alias_dir.iterdir()):
        if path.name in ("mpirun", "mpiexec") or not relion_aliases.module_available(relion_aliases.ALIASES[path.name]):
            continue
        res = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == VERSION_LINE, (path.name, res.stderr)
        res = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith("usage: sta_"), (path.name, res.stderr)
        assert "--pipeline_control" in res.stdout


def test_every_tool_version_goes_through_make_parser(capsys):
    tools = [m for m in _tool_modules() if callable(getattr(m, "main", None))]
    assert len(tools) >= 9
    for module in tools:
        assert module.main(["--version"]) == 0, module.__name__
        assert capsys.readouterr().out.strip() == VERSION_LINE, module.__name__


def test_missing_output_dir_is_one_line_error(capsys):
    assert relion_aliases.main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--o" in err[0]


def test_bad_python_is_one_line_error(tmp_path, capsys):
    assert relion_aliases.main(["--o", str(tmp_path / "b"), "--python", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--python" in err and "nope" in err


def test_launcher_wrapper_drops_oversubscribe(alias_dir):
    """py2rely's `mpirun --oversubscribe -n 2 ...` through the wrapper (hydra rejects the option)."""
    if not (alias_dir / "mpirun").exists():
        pytest.skip("the MPI launcher is not MPICH hydra: no wrapper written")
    res = subprocess.run([str(alias_dir / "mpirun"), "--oversubscribe", "-n", "2", sys.executable, "-c",
                          "print('hello')"], capture_output=True, text=True, timeout=60)
    # two ranks share one stdout: their lines may interleave ("hellohello\n\n"), so count words
    assert res.returncode == 0 and res.stdout.count("hello") == 2, (res.stdout, res.stderr)


@requires_mpirun
def test_py2rely_reconstruct_through_mpirun(alias_dir, tmp_path):
    """py2rely's exact reconstruct command line through the RELION name under mpirun -np 3."""
    from sta.commands import reconstruct_particle
    from sta.simulate.project import SimulationParameters, simulate_project

    p = SimulationParameters(n_tomograms=1, particles_per_tomogram=6, box=32, pixel_size=6.0,
                             image_size=(200, 200), tomo_size=(200, 200, 70), snr=0, seed=7)
    simulate_project(p, str(tmp_path))
    job = "Reconstruct/job002/"
    cmd = ["mpirun", "-np", "3", str(alias_dir / "relion_tomo_reconstruct_particle_mpi"),
           "--t", "tomograms.star", "--p", "particles.star", "--o", job, "--b", "32", "--crop", "-1",
           "--bin", "1", "--sym", "C1", "--theme", "classic", "--j", "1", "--j_out", "1", "--j_in", "1",
           "--pipeline_control", job]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = tmp_path / job
    assert (out / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (out / "RELION_JOB_EXIT_FAILURE").exists()
    assert not (out / "note.txt").exists()  # under pipeline control, as RELION
    # the same maps as a serial in-process run of sta_reconstruct_particle
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert reconstruct_particle.main(["--t", "tomograms.star", "--p", "particles.star", "--o", "Serial/",
                                          "--b", "32", "--bin", "1", "--j", "1", "--j_out", "1"]) == 0
    finally:
        os.chdir(cwd)
    for tag in ("merged", "half1", "half2"):
        ours = mrcfile.read(out / f"{tag}.mrc")
        ref = mrcfile.read(tmp_path / "Serial" / f"{tag}.mrc")
        assert ours.shape == (32, 32, 32)
        assert np.std(ours) > 0
        assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), tag


# ------------------------------------------------ Open MPI options through the launcher wrapper

@pytest.mark.parametrize("given,hydra,dropped", [
    (["--oversubscribe"], [], ["--oversubscribe (hydra always allows more ranks than cores)"]),
    (["-oversubscribe"], [], ["-oversubscribe (hydra always allows more ranks than cores)"]),
    (["--allow-run-as-root"], [], ["--allow-run-as-root (hydra runs as root without it)"]),
    (["--bind-to", "none"], ["-bind-to", "none"], []),
    (["--bind-to=core:overload-allowed"], ["-bind-to", "core"],
     ["the modifier :overload-allowed of -bind-to core:overload-allowed"]),
    (["--map-by", "socket"], ["-map-by", "socket"], []),
    (["--map-by", "node"], ["-ppn", "1"], []),
    (["--map-by", "ppr:2:node"], ["-ppn", "2"], []),
    (["--map-by", "slot"], [], ["--map-by slot (hydra's default)"]),
    (["--map-by", "seq"], [], ["--map-by seq"]),
    (["--mca", "btl", "^openib"], [], ["--mca btl ^openib"]),
    (["-mca", "pml", "ucx"], [], ["-mca pml ucx"]),
    (["-x", "OMP_NUM_THREADS"], ["-genvlist", "OMP_NUM_THREADS"], []),
    (["-x", "A", "-x", "B=1 2"], ["-genvlist", "A", "-genv", "B", "1 2"], []),
    (["-H", "n1:2,n2:2"], ["-hosts", "n1:2,n2:2"], []),
    (["--hostfile", "hosts.txt"], ["-f", "hosts.txt"], []),
    (["--npernode", "4"], ["-ppn", "4"], []),
    (["-c", "3"], ["-n", "3"], []),
    (["--np=3"], ["-n", "3"], []),
    (["-genv", "X", "1", "-ppn", "2"], ["-genv", "X", "1", "-ppn", "2"], []),  # hydra's own, untouched
])
def test_openmpi_options_translated(given, hydra, dropped):
    from sta.parallel.launcher import translate

    program = ["-n", "5", "relion_refine_mpi", "--o", "Refine3D/job001/run", "-x", "--mca"]
    got, gone = translate(given + program)
    # the program and its own arguments (even ones that look like launcher options) are untouched
    assert got[-len(program):] == program
    assert got[:-len(program)] == hydra
    assert gone == dropped


def test_rank_count_options_are_never_dropped():
    from sta.parallel.launcher import translate

    for opt in (["-np", "4"], ["-n", "4"], ["--n", "4"], ["-c", "4"], ["--np=4"]):
        got, gone = translate(opt + ["prog"])
        assert got == ["-n", "4", "prog"] and gone == [], opt


def test_wrapper_passes_translated_options_to_hydra(tmp_path):
    """The command line hydra receives from the wrapper, and the one stderr line."""
    fake = tmp_path / "hydra"
    fake.write_text('#!/bin/sh\nfor a; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    wrapper = tmp_path / "mpirun"
    wrapper.write_text(relion_aliases.launcher_text("mpirun", str(fake), sys.executable))
    wrapper.chmod(0o755)
    res = subprocess.run([str(wrapper), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                          "--map-by", "core", "--mca", "btl", "^openib", "-x", "OMP_NUM_THREADS",
                          "-np", "3", "relion_refine_mpi", "--j", "4"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["-genvlist", "OMP_NUM_THREADS", "-bind-to", "none", "-map-by", "core",
                                       "-n", "3", "relion_refine_mpi", "--j", "4"]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "--allow-run-as-root" in err[0] and "--oversubscribe" in err[0]
    assert "--mca btl ^openib" in err[0] and "OMP_NUM_THREADS" not in err[0]
    # an option missing its value: one line, non-zero exit, hydra not started
    res = subprocess.run([str(wrapper), "-x"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.strip().splitlines()) == 1


def test_wrapper_exports_x_variables_through_hydra(alias_dir):
    """Scipion's `mpirun -x VAR --bind-to none ...` reaches every rank with VAR set."""
    if not (alias_dir / "mpirun").exists():
        pytest.skip("the MPI launcher is not MPICH hydra: no wrapper written")
    env = dict(os.environ, STA_CHECK_VAR="42")
    res = subprocess.run([str(alias_dir / "mpirun"), "--allow-run-as-root", "--bind-to", "none", "-x",
                          "STA_CHECK_VAR", "-n", "2", sys.executable, "-c",
                          "import os; print('var=' + os.environ.get('STA_CHECK_VAR', 'unset'))"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.count("var=42") == 2, (res.stdout, res.stderr)


# ------------------------------------------------------ RELION names without an sta tool yet

def test_missing_tools_fail_visibly(alias_dir, tmp_path):
    """A client calling a program sta does not have yet gets one line, a failure file, exit 1."""
    missing = [n for n, mod in relion_aliases.ALIASES.items() if not relion_aliases.module_available(mod)]
    assert "relion_tomo_refine_ctf_mpi" in missing or relion_aliases.module_available("refine_ctf")
    for name in missing:
        job = tmp_path / name
        res = subprocess.run([str(alias_dir / name), "--i", "x.star", "--pipeline_control", f"{job}/"],
                             capture_output=True, text=True, timeout=60)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(err) == 1 and err[0].startswith("ERROR:") and name in err[0], err
        assert "not implemented" in err[0]
        assert (job / "RELION_JOB_EXIT_FAILURE").exists()
        res = subprocess.run([str(alias_dir / name), "--version"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == VERSION_LINE


def test_missing_tool_under_mpirun(alias_dir, tmp_path):
    """Under `mpirun -n 3` the failure file is written and the job exits non-zero."""
    missing = [n for n, mod in relion_aliases.ALIASES.items() if not relion_aliases.module_available(mod)]
    if not missing or not (alias_dir / "mpirun").exists():
        pytest.skip("every RELION name is implemented, or no hydra wrapper")
    job = tmp_path / "job"
    res = subprocess.run([str(alias_dir / "mpirun"), "--oversubscribe", "-n", "3", str(alias_dir / missing[0]),
                          "--pipeline_control", f"{job}/"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and (job / "RELION_JOB_EXIT_FAILURE").exists()
    assert res.stderr.count("not implemented") == 1, res.stderr


def test_missing_tool_runs_relion_when_it_is_on_path(alias_dir, tmp_path):
    """With RELION's bin after the alias directory, a name sta lacks runs RELION's program."""
    missing = [n for n, mod in relion_aliases.ALIASES.items() if not relion_aliases.module_available(mod)]
    if not missing:
        pytest.skip("every RELION name is implemented")
    relion_bin = tmp_path / "relion" / "bin"
    relion_bin.mkdir(parents=True)
    fake = relion_bin / missing[0]
    fake.write_text('#!/bin/sh\necho "RELION ran with: $*"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{alias_dir}{os.pathsep}{relion_bin}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run([missing[0], "--i", "a b.star"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "RELION ran with: --i a b.star", res.stderr
    assert res.stderr.count("not implemented in sta") == 1 and str(fake) in res.stderr
