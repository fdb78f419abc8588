"""Shared test fixtures: paths to ../shared, small simulated projects."""

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "data" / "star-corpus"
REFERENCE = SHARED / "data" / "relion-reference"
MODELS = SHARED / "data" / "models"

if str(ROOT / "src") not in sys.path:  # allow running the tests without installing
    sys.path.insert(0, str(ROOT / "src"))


#: CI sets STA_REQUIRE_DATA=1: a test that needs ../shared data or mpirun then fails instead of skipping
REQUIRE_DATA = os.environ.get("STA_REQUIRE_DATA") == "1"


def need(path):
    """Skip when a shared data file is not present (it is in every session and in CI); fail
    instead under ``STA_REQUIRE_DATA=1``."""
    if not Path(path).exists():
        if REQUIRE_DATA:
            pytest.fail(f"shared data not found: {path} (STA_REQUIRE_DATA=1)")
        pytest.skip(f"shared data not found: {path}")
    return Path(path)


def need_mpirun():
    """Path of ``mpirun``; skip without one, fail under ``STA_REQUIRE_DATA=1``."""
    path = shutil.which("mpirun")
    if path is None:
        if REQUIRE_DATA:
            pytest.fail("mpirun not found (STA_REQUIRE_DATA=1; install the mpi extra)")
        pytest.skip("mpirun not installed")
    return path


#: marks a test that runs under mpirun (skipped without it, failing under STA_REQUIRE_DATA=1)
requires_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None and not REQUIRE_DATA,
                                     reason="mpirun not installed")


def one_error_line(capsys):
    """The captured stderr is exactly one line starting with ``ERROR:``; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR:"), err
    return err[0]


def run_in(directory, fn, argv):
    """``fn(argv)`` with ``directory`` as the working directory (a tool's ``main`` run in a project)."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        return fn(argv)
    finally:
        os.chdir(cwd)


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


os.environ.setdefault("OMP_NUM_THREADS", "1")
