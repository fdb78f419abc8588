"""Thread limits set by entry points before NumPy is imported (stdlib only on purpose:
importing NumPy here would load BLAS before the limits take effect)."""

import os

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads_for_mpi(argv, option="--j"):
    """Under an MPI launcher with several ranks, cap BLAS/OpenMP threads per rank at ``--j``
    (default 1; ``option=None``: always 1) unless the user set them, so that ranks × BLAS
    threads do not oversubscribe the node (OpenBLAS threads spin and slow everything down
    by an order of magnitude).  Call from an entry point before NumPy is imported."""
    size = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) or 1)
    if size <= 1:
        return
    threads = "1"
    argv = list(argv)
    if option is not None and option in argv:
        k = argv.index(option)
        if k + 1 < len(argv) and argv[k + 1].isdigit():
            threads = argv[k + 1]
    for var in BLAS_VARS:
        os.environ.setdefault(var, threads)


def one_blas_thread_per_worker():
    """For entry points whose ``--j`` threads each run the numerics (sta_refine's E-step): one
    BLAS/OpenMP thread per worker thread in every launch mode, one rank or many, so that a job
    uses ranks × ``--j`` cores and no more (unless the user set the variables).  Call before
    NumPy is imported; in a process that has already loaded NumPy it changes nothing."""
    for var in BLAS_VARS:
        os.environ.setdefault(var, "1")


def cores_per_rank():
    """Cores this process may use, shared among the MPI ranks on its node (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    local = os.environ.get("MPI_LOCALNRANKS", os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
    ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, cores // ranks)


def worker_threads(requested):
    """``--j`` worker threads that each run numerics, capped at :func:`cores_per_rank` so that
    ranks × threads never oversubscribe the node (py2rely's ``--j 8`` on 5 ranks of a
    2-core machine ran 40 compute threads).  ``STA_TEST_OVERSUBSCRIBE=1`` lifts the cap (tests
    that check threads under mpirun on a 2-core machine).  Returns ``(threads, capped)``."""
    if os.environ.get("STA_TEST_OVERSUBSCRIBE") == "1":  # test hook: threads on a small machine
        return requested, False
    usable = cores_per_rank()
    return (usable, True) if requested > usable else (requested, False)
