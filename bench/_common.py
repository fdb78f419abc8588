"""Helpers shared by the bench scripts."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def measure(cmd, cwd):
    """Run ``cmd`` through ``_measure.py``: dict with wall_s, peak_rss_mb, rc (exits on failure)."""
    out = subprocess.run([sys.executable, str(HERE / "_measure.py")] + cmd, cwd=cwd, capture_output=True, text=True)
    vals = out.stdout.split()
    res = dict(zip(vals[::2], (float(v) for v in vals[1::2])))
    if res.get("rc", 1) != 0:
        raise SystemExit(f"failed ({out.stderr[-500:]}): {' '.join(cmd)}")
    return res
