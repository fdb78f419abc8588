"""MPI runtime shared by the tools: world communicator, dynamic work counter, reductions,
and failure handling.

Runs without mpi4py (or outside ``mpirun``) as a single rank.  Random decisions are made
by rank 0 and broadcast; arrays move with buffer-based (uppercase) calls in chunks of at most
:data:`MAX_MESSAGE_BYTES` (``reduce_inplace``, ``allreduce_inplace``, ``bcast_inplace``,
``bcast_arrays``, ``send_array``/``recv_array``), never pickled.
"""

import logging
import os
import socket
import subprocess
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


def polite_recv(comm, source, tag, interval=0.005, check=None, check_every=0.5):
    """Blocking receive that sleeps between probes instead of spinning (the leader must not
    take a core from the followers while it waits).  ``check()`` (e.g. the pipeline's abort
    flag) is called every ``check_every`` seconds while waiting; what it raises propagates."""
    import time

    last = time.monotonic()
    while not comm.Iprobe(source=source, tag=tag):
        time.sleep(interval)
        if check is not None and time.monotonic() - last >= check_every:
            check()
            last = time.monotonic()
    return comm.recv(source=source, tag=tag)


def launched_rank():
    """Rank given by the MPI launcher's environment (0 when not under a launcher)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                return 0
    return 0


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

    def serve(self, total_calls, on_progress=None, interval=0.002):
        """Rank 0 of a multi-rank job: keep MPI progressing (passive-target RMA needs the
        target to enter MPI) until ``total_calls`` calls of :meth:`next` were made, sleeping
        between polls so that it takes no core from the workers."""
        import time

        MPI = self._MPI
        rank = self.comm.Get_rank()
        last = -1
        while True:
            self.win.Lock(rank, MPI.LOCK_EXCLUSIVE)
            value = int(np.frombuffer(self.win.tomemory(), dtype=np.int64)[0])
            self.win.Unlock(rank)
            if on_progress is not None and value != last:
                on_progress(value)
                last = value
            if value >= total_calls:
                return
            self.comm.Iprobe()
            time.sleep(interval)

    def free(self):
        if not self.serial:
            self.comm.Barrier()
            self.win.Free()


#: largest single MPI message of the array helpers below: arrays are sent in chunks of at most
#: this many bytes, far below the 2 GiB where MPI's int counts (and some transports) break, and
#: small enough that MPI's temporary buffer of a reduction stays small
MAX_MESSAGE_BYTES = 16 * 2 ** 20


def _chunks(array, max_bytes=None):
    """Contiguous 1-D views of ``array`` (C-contiguous) of at most ``max_bytes`` each."""
    if not array.flags.c_contiguous:
        raise ValueError("MPI buffer helpers need C-contiguous arrays")
    flat = array.reshape(-1)
    limit = MAX_MESSAGE_BYTES if max_bytes is None else max_bytes
    step = max(int(limit) // max(flat.itemsize, 1), 1)
    return [flat[a:a + step] for a in range(0, flat.size, step)]


def _op(op):
    from mpi4py import MPI

    return MPI.SUM if op is None else op


def reduce_inplace(comm, array, root=0, op=None, max_bytes=None):
    """Sum (or ``op``) ``array`` over the ranks of ``comm`` into ``array`` on ``root``, in place and
    in chunks of at most ``max_bytes`` (:data:`MAX_MESSAGE_BYTES`).  Other ranks' arrays are
    unchanged."""
    if comm.Get_size() == 1:
        return array
    from mpi4py import MPI

    op = _op(op)
    at_root = comm.Get_rank() == root
    for c in _chunks(array, max_bytes):
        if at_root:
            comm.Reduce(MPI.IN_PLACE, c, op=op, root=root)
        else:
            comm.Reduce(c, None, op=op, root=root)
    return array


def allreduce_inplace(comm, array, op=None, max_bytes=None):
    """Sum (or ``op``) ``array`` over the ranks of ``comm`` into ``array`` on every rank, in place
    and in chunks."""
    if comm.Get_size() == 1:
        return array
    from mpi4py import MPI

    op = _op(op)
    for c in _chunks(array, max_bytes):
        comm.Allreduce(MPI.IN_PLACE, c, op=op)
    return array


def bcast_inplace(comm, array, root=0, max_bytes=None):
    """``root``'s ``array`` into ``array`` on every rank of ``comm`` (same shape and dtype), in chunks."""
    if comm.Get_size() == 1:
        return array
    for c in _chunks(array, max_bytes):
        comm.Bcast(c, root=root)
    return array


def bcast_arrays(comm, arrays, root=0, meta=None, max_bytes=None):
    """Broadcast a list of arrays (``None`` on the receiving ranks) and a small picklable ``meta``:
    shapes, dtypes and ``meta`` go pickled, the arrays as buffers in chunks.  Returns ``(meta,
    arrays)`` on every rank."""
    if comm.Get_rank() == root:
        arrays = [np.ascontiguousarray(a) for a in arrays]
        header = (meta, [(a.shape, a.dtype.str) for a in arrays])
    else:
        header = None
    if comm.Get_size() == 1:
        return meta, arrays
    meta, layout = comm.bcast(header, root=root)
    if comm.Get_rank() != root:
        arrays = [np.empty(shape, dtype=np.dtype(dt)) for shape, dt in layout]
    for a in arrays:
        bcast_inplace(comm, a, root=root, max_bytes=max_bytes)
    return meta, arrays


def send_array(comm, array, dest, tag, max_bytes=None):
    """Send one array to ``dest`` (shape and dtype pickled, the data as buffers in chunks, all under
    ``tag``; MPI keeps them in order).  Pair with :func:`recv_array`."""
    array = np.ascontiguousarray(array)
    comm.send((array.shape, array.dtype.str), dest=dest, tag=tag)
    for c in _chunks(array, max_bytes):
        comm.Send(c, dest=dest, tag=tag)


def recv_array(comm, source, tag, max_bytes=None, check=None):
    """Receive the array of :func:`send_array`, waiting politely (:func:`polite_recv`, ``check``
    called every 0.5 s while waiting)."""
    shape, dt = polite_recv(comm, source, tag, check=check)
    out = np.empty(shape, dtype=np.dtype(dt))
    for c in _chunks(out, max_bytes):
        comm.Recv(c, source=source, tag=tag)
    return out


def polite_barrier(comm, interval=0.005):
    """A barrier that sleeps between tests instead of spinning on a core (ranks waiting for the
    leader's M-step must not take CPU from it)."""
    import time

    if comm.Get_size() == 1:
        return
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(interval)


def reduce_sum(comm, array, root=0):
    """Sum ``array`` over all ranks onto ``root`` in place (buffer-based, chunked); returns it on
    root, None elsewhere."""
    if comm.Get_size() == 1:
        return array
    array = np.ascontiguousarray(array)
    reduce_inplace(comm, array, root=root)
    return array if comm.Get_rank() == root else None


_MONITOR_CODE = r"""
import os, select, sys
names = {names!r}
pids = {pids!r}
fds = {{}}
for rank, pid in pids.items():
    try:
        fds[os.pidfd_open(pid)] = rank
    except OSError:
        pass
poller = select.poll()
for fd in fds:
    poller.register(fd, select.POLLIN)
poller.register(0, select.POLLIN)
events = poller.poll()
ready = [fd for fd, _ in events]
if 0 in ready:
    data = os.read(0, 16)
    if data.startswith(b"done"):
        sys.exit(0)
dead = sorted(fds[fd] for fd in ready if fd in fds)
control = {control!r}
if dead:
    rank = dead[0]
    ended = [os.path.join(control, f) for f in ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE",
                                                "RELION_JOB_EXIT_ABORTED")] if control else []
    if not any(os.path.exists(f) for f in ended):  # a rank that raised has already said why
        sys.stderr.write("ERROR: {prog}: MPI rank %d (pid %d on %s) ended before the job finished (killed or "
                         "crashed); the whole job is stopped\n" % (rank, pids[rank], names[rank]))
        sys.stderr.flush()
        if control:
            try:
                os.makedirs(control, exist_ok=True)
                open(ended[1], "w").close()
            except OSError as err:
                sys.stderr.write("ERROR: {prog}: cannot write %s: %s\n" % (ended[1], err.strerror))
"""


class RankMonitor:
    """Names the rank that dies: one small watcher process per node.

    The watcher (outside the MPI job, so the launcher's clean-up does not kill it) waits on
    the pidfds of the ranks of its node and, if one ends before the job said it finished,
    prints one line naming that rank and, with a pipeline-control directory
    (``--pipeline_control``), writes ``RELION_JOB_EXIT_FAILURE`` there, so RELION's GUI and
    pipeliners see a killed job as failed (unless a rank already wrote an exit file).
    :meth:`finish` tells it the job ended normally.
    """

    def __init__(self, comm, prog, control_dir=None):
        self.proc = None
        self.comm = comm
        if comm.Get_size() == 1 or not hasattr(os, "pidfd_open"):
            return
        host = socket.gethostname()
        info = comm.allgather((host, os.getpid()))
        local = [r for r, (h, _) in enumerate(info) if h == host]
        if comm.Get_rank() != local[0]:
            return
        pids = {r: info[r][1] for r in local}
        names = {r: host for r in local}
        control = os.path.abspath(control_dir) if control_dir else None
        code = _MONITOR_CODE.format(names=names, pids=pids, prog=prog, control=control)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                         start_new_session=True)
        except OSError as err:  # monitoring is best effort
            log.debug("rank monitor not started: %s", err)

    def finish(self):
        """Tell the watcher that the job ended normally (call on every rank before exit)."""
        self.comm.Barrier()
        if self.proc is not None:
            try:
                self.proc.stdin.write(b"done\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self.comm.Barrier()
