"""Shared test fixtures: paths to ../shared, small simulated projects."""

import os
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


def need(path):
    """Skip when a shared data file is not present (it is in every session and in CI)."""
    if not Path(path).exists():
        pytest.skip(f"shared data not found: {path}")
    return Path(path)


def one_error_line(capsys):
    """The captured stderr is exactly one line starting with ``ERROR:``; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR:"), err
    return err[0]


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


os.environ.setdefault("OMP_NUM_THREADS", "1")
