"""MPI runtime shared by the tools: world communicator, dynamic work counter, reductions,
and failure handling.

Runs without mpi4py (or outside ``mpirun``) as a single rank.  Random decisions are made
by rank 0 and broadcast; arrays are reduced with buffer-based (uppercase) calls.
"""

import logging
import os
import sys

import numpy as np

log = logging.getLogger(__name__)

_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD",
                "PMIX_RANK", "SLURM_STEP_NUM_TASKS")


class SerialComm:
    """Stand-in for a one-rank communicator."""

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def Barrier(self):
        pass

    def barrier(self):
        pass

    def Abort(self, code=1):
        os._exit(code)


def launched_by_mpi():
    """True when an MPI launcher started this process (checked without importing mpi4py)."""
    return any(v in os.environ for v in _LAUNCH_VARS)


def world():
    """``MPI.COMM_WORLD`` under an MPI launcher with mpi4py installed, else :class:`SerialComm`."""
    if not launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        if int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))) > 1:
            sys.stderr.write("ERROR: started under mpirun but mpi4py is not installed "
                             "(pip install sta-tomo[mpi])\n")
            sys.exit(1)
        return SerialComm()
    return MPI.COMM_WORLD


def abort_on_error(comm, rank_message, code=1):
    """Report a failure on one rank and take the whole job down (never a hang)."""
    sys.stderr.write(f"ERROR: rank {comm.Get_rank()}: {rank_message}\n")
    sys.stderr.flush()
    if comm.Get_size() > 1:
        comm.Abort(code)


class DynamicCounter:
    """A shared counter on rank 0 that every rank (rank 0 included) advances atomically:
    ``next()`` hands out 0, 1, 2, ... across all ranks, so work items are taken dynamically
    without a dedicated dispatcher."""

    def __init__(self, comm):
        self.comm = comm
        self.serial = comm.Get_size() == 1
        self.value = 0
        if not self.serial:
            from mpi4py import MPI

            self._MPI = MPI
            itemsize = MPI.INT64_T.Get_size()
            size = itemsize if comm.Get_rank() == 0 else 0
            self.win = MPI.Win.Allocate(size, itemsize, comm=comm)
            if comm.Get_rank() == 0:
                buf = np.frombuffer(self.win.tomemory(), dtype=np.int64)
                buf[0] = 0
            comm.Barrier()

    def next(self):
        if self.serial:
            v = self.value
            self.value += 1
            return v
        MPI = self._MPI
        one = np.ones(1, dtype=np.int64)
        result = np.zeros(1, dtype=np.int64)
        self.win.Lock(0, MPI.LOCK_SHARED)
        self.win.Fetch_and_op(one, result, 0, 0, MPI.SUM)
        self.win.Unlock(0)
        return int(result[0])

    def free(self):
        if not self.serial:
            self.comm.Barrier()
            self.win.Free()


def reduce_sum(comm, array, root=0):
    """Sum ``array`` over all ranks onto ``root`` in place (buffer-based); returns it on root."""
    if comm.Get_size() == 1:
        return array
    from mpi4py import MPI

    array = np.ascontiguousarray(array)
    if comm.Get_rank() == root:
        comm.Reduce(MPI.IN_PLACE, array, op=MPI.SUM, root=root)
        return array
    comm.Reduce(array, None, op=MPI.SUM, root=root)
    return None
