"""Run one command and print its wall time and the peak RSS of its largest process.

Usage: python bench/_measure.py CMD ...   ->  prints `wall_s <t> peak_rss_mb <m> rc <code>`
(peak RSS from getrusage(RUSAGE_CHILDREN): the maximum over all descendant processes,
e.g. the largest MPI rank).
"""

import resource
import subprocess
import sys
import time

t0 = time.time()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.time() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
print(f"wall_s {wall:.3f} peak_rss_mb {peak:.1f} rc {rc}")
