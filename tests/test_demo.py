"""The README's demo command runs end to end and reports sensible numbers."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import MODELS, need


@pytest.mark.skipif(shutil.which("sta_demo") is None, reason="package not installed (pip install -e .)")
def test_demo_runs_and_reports_resolution(tmp_path):
    need(MODELS / "job080.cif")
    res = subprocess.run(["sta_demo", "--o", str(tmp_path / "demo"), "--np", "3"], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    final = re.search(r"FINAL RESOLUTION:\s+([0-9.]+)", res.stdout)
    truth = re.search(r"ground truth drops below 0.5 at ([0-9.]+)", res.stdout)
    refined = re.search(r"refined poses\): median angular error ([0-9.]+) deg, median offset error ([0-9.]+)",
                        res.stdout)
    assert final and truth and refined, res.stdout[-2000:]
    # 4 Å pixels (Nyquist 8 Å), noisy data from 48 particles: gold standard and truth both near 8-12 Å
    assert 8.0 <= float(final.group(1)) < 12.0
    assert 8.0 <= float(truth.group(1)) < 12.0
    # poses perturbed by 10° / 5 Å, refined at bin 2 (8 Å pixels)
    assert float(refined.group(1)) < 3.0 and float(refined.group(2)) < 2.0
    for rel in ["Extract/job001/particles.star", "Reconstruct/job002/merged.mrc", "Refine3D/job003/run_data.star",
                "Reconstruct/job004/merged.mrc", "MaskCreate/job005/mask.mrc", "PostProcess/job006/postprocess.star"]:
        assert (tmp_path / "demo" / rel).exists(), rel
