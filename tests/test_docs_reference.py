"""docs/reference.md is the --help of every sta tool, rendered from the real parsers."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_up_to_date():
    gen = _generator()
    current = (ROOT / "docs" / "reference.md").read_text()
    fresh = gen.render()
    if fresh != current:
        recorded = re.search(r"with Python (\d+\.\d+)", current)
        if recorded and recorded.group(1) != gen.python_tag():
            pytest.skip(f"docs/reference.md was rendered with Python {recorded.group(1)}; argparse "
                        f"lays out help differently in {gen.python_tag()}")
    assert fresh == current, "docs/reference.md is out of date: run python docs/gen_reference.py"


def test_reference_lists_every_tool():
    gen = _generator()
    progs = [prog for prog, _ in gen.tools()]
    text = (ROOT / "docs" / "reference.md").read_text()
    for prog in progs:
        assert f"\n## {prog}\n" in text
        assert f"usage: {prog} " in text
    for prog in ("sta_simulate", "sta_reconstruct_particle", "sta_mask_create", "sta_postprocess",
                 "sta_star_handler", "sta_submit", "sta_relion_aliases"):
        assert prog in progs
