"""Memory model and plan behind ``sta_reconstruct_particle --mem`` (bytes per MPI rank).

``--mem X`` bounds the peak resident memory of every rank to about X GB (RELION's GB,
2³⁰ bytes) *above the interpreter's baseline*: the RSS of a process that has imported sta
and what a run imports (numpy, mrcfile, pyFFTW, scipy, pandas/starfile, mpi4py; about
140 MB, see :data:`RUNTIME_MODULES`).  This is a sta deviation: RELION's ``--mem`` only
counts the accumulators.  The model below gives the bytes of each component from the sizes
of the job; its factors were measured (RSS high-water marks, tracemalloc) on boxes 32-192
and rounded up.  Notation: s box, s0 extraction box (``int(bin·s + 0.5)``),
N = s²·(s//2+1) voxels of a half grid, sh = s//2+1, f tilts of H×W pixels.

==========================  ==================================================================
component                   bytes
==========================  ==================================================================
tilt series (float32)       S = 4·f·H·W each: the cache keeps ``keep`` (it drops the oldest
                            only once the next one is loaded), threads still busy on an
                            evicted one hold up to j_out−1 more, and the one being loaded
                            costs 2·S (one file per tilt: the images and their stack) or 3·S
                            (one stack file: mapped pages and two copies)
accumulators                48·N per outer thread (complex128 data + float64 weights, 2 halves)
particle work per thread    16·f·s·sh (dose and CTF·dose) + the largest of: CTF evaluation
                            48·f·s·sh; adding slices 56·E + 8·N + 48·G·s·sh + 40·0.8·s² with
                            E = :func:`sta.workflows.reconstruct_particle.max_entries`;
                            extraction 112·G·s0² + 40·E; plus pyFFTW plans 16·G·s0²
                            (G = TILT_GROUP tilts at a time)
grid tables                 24·s²
MPI reduction               1.5 × the reduced chunk (:data:`REDUCE_CHUNK`, 4 MB), ranks > 1
final maps (rank 0)         the reduced accumulators 48·N + 3.3·(8·s³) (inverse FFT, CTF
                            division, tapering, one map written at a time) + 16·crop³ + 6 MB
                            (symmetrisation, chunked)
metadata                    2 × the STAR tables in memory (given by the caller) + 10 MB
                            (pandas' first-use caches)
slack                       16 MB (FFTW, thread stacks, small arrays, allocator)
==========================  ==================================================================

With one rank, that rank back-projects and then makes the maps (the tilt series and the
other threads' accumulators are freed in between); with more, rank 0 only hands out work,
reduces and makes the maps, and every other rank back-projects.  :func:`plan_memory` picks
the largest ``j_out`` (at most the requested one), then ``keep`` 2 or 1, whose estimate
fits; when even ``j_out`` 1 and ``keep`` 1 do not, it raises :class:`MemoryTooSmall`.

Test hook (benchmarks): with ``STA_REPORT_PEAK_RSS=1`` every rank prints
``sta peak RSS: rank R VmHWM K kB`` to stderr when the tool ends; with
``STA_REPORT_PEAK_RSS=FILE`` it appends ``R K`` to FILE instead (:func:`report_peak_rss`).
"""

import contextlib
import dataclasses
import os
import sys

GB = 2 ** 30
MB = 2 ** 20

#: modules a run imports: a process that imported these (and initialised MPI under mpirun)
#: has the "baseline" RSS that --mem does not count
RUNTIME_MODULES = ("numpy", "mrcfile", "pyfftw", "pyfftw.interfaces.numpy_fft", "scipy.special", "scipy.fft",
                   "pandas", "pyarrow", "pyarrow.compute", "starfile", "sta.commands.reconstruct_particle",
                   "sta.commands._tomo_inputs", "sta.io.optimisation_set", "sta.workflows.reconstruct_particle",
                   "sta.parallel.batches", "sta.parallel.mpi", "sta.kernels.ctf", "sta.geometry.symmetry")

#: bytes of an accumulator array reduced over MPI at a time
REDUCE_CHUNK = 4 * MB

SLACK = 16 * MB

#: what reading the first STAR tables adds whatever their size (pandas/pyarrow first use)
METADATA_FIXED = 10 * MB


@dataclasses.dataclass
class Sizes:
    """What the model needs to know about a job."""

    box: int
    box0: int                  # extraction box in unbinned tilt-series pixels
    n_tilts: int               # of the largest tilt series
    height: int
    width: int
    single_stack: bool = False  # the tilt images are sections of one file
    crop: int = -1
    tilt_group: int = 4
    max_entries: int = 0       # gathered entries held (0: s²·(s//2+1)/5)
    metadata: int = 0          # bytes of the STAR tables in memory (counted twice)


def half_voxels(box):
    """N = s²·(s//2+1), the voxels of an FFTW half grid."""
    return box * box * (box // 2 + 1)


def accumulator_bytes(box):
    """One thread's accumulators: complex128 data and float64 weights of both halves (48·N)."""
    return 48 * half_voxels(box)


def relion_accumulator_gb(box):
    """RELION's per-thread estimate (spec §5.2): 2·(s/2+1)·s²·3·8 / 2³⁰."""
    return accumulator_bytes(box) / GB


def tilt_series_bytes(n_tilts, height, width):
    """One tilt series in memory (float32)."""
    return 4 * n_tilts * height * width


def tilt_data_bytes(sz, keep, j_out):
    """Tilt series alive at once on a back-projecting rank (see the module docstring)."""
    series = tilt_series_bytes(sz.n_tilts, sz.height, sz.width)
    loading = 3 if sz.single_stack else 2
    return series * (keep + j_out - 1 + loading)


def _entries(sz):
    return sz.max_entries or max(half_voxels(sz.box) // 5, 4096)


def particle_work_bytes(sz):
    """Working memory of one thread back-projecting one particle."""
    s, s0, g = sz.box, sz.box0, sz.tilt_group
    n = half_voxels(s)
    fss = sz.n_tilts * s * (s // 2 + 1)
    e = _entries(sz)
    ctf = 48 * fss
    adding = 56 * e + 8 * n + 48 * g * s * (s // 2 + 1) + 32 * s * s
    extraction = 112 * g * s0 * s0 + 40 * e
    return 16 * fss + max(ctf, adding, extraction) + 16 * g * s0 * s0


def grid_bytes(box):
    """Row tables of the half grid (coordinates are made on demand)."""
    return 24 * box * box


def reduce_bytes(box, n_ranks):
    """MPI's temporary buffers while the accumulators are summed in chunks."""
    if n_ranks <= 1:
        return 0
    return int(1.5 * min(REDUCE_CHUNK, 32 * half_voxels(box)))


def finalise_bytes(sz):
    """Rank 0 while it makes the maps: the reduced accumulators plus the work of one map."""
    s = sz.box
    crop = 16 * sz.crop ** 3 if 0 < sz.crop < s else 0
    return accumulator_bytes(s) + int(3.3 * 8 * s ** 3) + crop + 6 * MB


def backprojection_bytes(sz, j_out, keep, n_ranks=1):
    """A rank that back-projects with ``j_out`` threads and a cache of ``keep`` tilt series."""
    return (tilt_data_bytes(sz, keep, j_out) + j_out * (accumulator_bytes(sz.box) + particle_work_bytes(sz))
            + grid_bytes(sz.box) + reduce_bytes(sz.box, n_ranks))


def _fixed(sz):
    return 2 * sz.metadata + METADATA_FIXED + SLACK


def describe(sz, j_out, keep, n_ranks=1):
    """One line: how the estimate of :func:`rank_peaks` is made up (GB)."""
    def gb(v):
        return f"{v / GB:.3f}"

    bp = (f"tilt series {gb(tilt_data_bytes(sz, keep, j_out))} + accumulators {gb(j_out * accumulator_bytes(sz.box))}"
          f" + particle work {gb(j_out * particle_work_bytes(sz))}")
    fixed = f"metadata and slack {gb(_fixed(sz))}"
    if n_ranks <= 1:
        return f"{fixed} + the larger of back-projection ({bp}) and final maps {gb(finalise_bytes(sz))}"
    return (f"{fixed} + back-projection on ranks 1-{n_ranks - 1} ({bp} + MPI {gb(reduce_bytes(sz.box, n_ranks))}), "
            f"final maps on rank 0 {gb(finalise_bytes(sz) + reduce_bytes(sz.box, n_ranks))}")


def rank_peaks(sz, j_out, keep, n_ranks=1):
    """Estimated peak (bytes above the baseline) of each kind of rank: a dict with
    ``"serial"`` (one rank) or ``"leader"`` and ``"worker"`` (several)."""
    fixed = _fixed(sz)
    if n_ranks <= 1:
        return {"serial": fixed + max(backprojection_bytes(sz, j_out, keep), finalise_bytes(sz))}
    return {"leader": fixed + finalise_bytes(sz) + reduce_bytes(sz.box, n_ranks),
            "worker": fixed + backprojection_bytes(sz, j_out, keep, n_ranks)}


@dataclasses.dataclass
class MemoryPlan:
    limit: int          # bytes per rank (0: no limit)
    j_out: int
    keep: int
    estimate: int       # the largest estimated peak of any rank, bytes above the baseline
    peaks: dict


class MemoryTooSmall(ValueError):
    """Even one thread and one cached tilt series exceed the limit; ``needed`` in bytes."""

    def __init__(self, limit, needed, plan):
        self.limit, self.needed, self.plan = limit, needed, plan
        super().__init__(f"{limit / GB:.3g} GB < {needed / GB:.3g} GB")


def plan_memory(limit, sz, j_out, n_ranks=1):
    """Largest ``j_out`` (≤ the requested one), then ``keep`` (2 or 1), that fit ``limit``
    bytes per rank; ``limit`` <= 0 keeps ``j_out`` and ``keep`` 2."""
    if limit <= 0:
        peaks = rank_peaks(sz, j_out, 2, n_ranks)
        return MemoryPlan(0, j_out, 2, max(peaks.values()), peaks)
    for j in range(j_out, 0, -1):
        for keep in (2, 1):
            peaks = rank_peaks(sz, j, keep, n_ranks)
            if max(peaks.values()) <= limit:
                return MemoryPlan(limit, j, keep, max(peaks.values()), peaks)
    peaks = rank_peaks(sz, 1, 1, n_ranks)
    raise MemoryTooSmall(limit, max(peaks.values()), MemoryPlan(limit, 1, 1, max(peaks.values()), peaks))


# --- keeping a process within its plan -------------------------------------------------


def return_freed_memory():
    """Make glibc give freed blocks of 256 kB and more back to the system at once (fixed
    mmap and trim thresholds), so that the resident size follows the live arrays; no-op
    elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def fft_plans_not_kept():
    """pyFFTW's interface cache keeps the arrays of recent transforms alive for its
    keep-alive time (sta sets 30 s); inside this block it is off (what it held is released)
    and it is restored on exit."""
    from sta.backend import get_fft

    get_fft()  # the engine enables the cache when it is first made
    try:
        from pyfftw.interfaces import cache
    except ImportError:
        yield
        return
    if not cache.is_enabled():
        yield
        return
    keepalive = getattr(getattr(cache, "_fftw_cache", None), "keepalive_time", 30.0)
    cache.disable()
    try:
        yield
    finally:
        cache.enable()
        cache.set_keepalive_time(keepalive)


def peak_rss_kb():
    """VmHWM of this process in kB (0 where /proc is not available)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def report_peak_rss(rank):
    """The ``STA_REPORT_PEAK_RSS`` hook (see the module docstring)."""
    target = os.environ.get("STA_REPORT_PEAK_RSS")
    if not target:
        return
    kb = peak_rss_kb()
    if target == "1":
        sys.stderr.write(f"sta peak RSS: rank {rank} VmHWM {kb} kB\n")
        sys.stderr.flush()
        return
    with open(target, "a") as fh:
        fh.write(f"{rank} {kb}\n")
