"""Particle batches handed out dynamically to MPI ranks and threads.

Work is split by tomogram into batches of particles, so ranks beyond the number of
tomograms still help.  Every rank computes the same batch list from the metadata; a
:class:`~sta.parallel.mpi.DynamicCounter` on rank 0 hands out batch indices to the other
ranks (rank 0 only serves the counter and reports progress: passive-target RMA needs its
owner to keep entering MPI), and a lock makes it safe for the threads of one rank.  With
one rank that rank does all the work.  Tilt series are cached per rank (one copy shared by
its threads).
"""

import collections
import concurrent.futures
import os
import signal
import threading
import time

import numpy as np

from sta.parallel.mpi import DynamicCounter
from sta.parallel.progress import Progress


def make_batches(indices_by_tomogram, n_workers, batch_size=None, min_size=2, max_size=32):
    """List of ``(tomo_name, particle_indices)``, tomogram by tomogram.

    The default batch size aims at ≥ 4 batches per worker, within [min_size, max_size].
    """
    total = sum(len(v) for v in indices_by_tomogram.values())
    if batch_size is None:
        batch_size = int(np.clip(np.ceil(total / max(4 * n_workers, 1)), min_size, max_size))
    out = []
    for name, idx in indices_by_tomogram.items():
        idx = np.asarray(idx)
        for start in range(0, len(idx), batch_size):
            out.append((name, idx[start:start + batch_size]))
    return out


class TiltCache:
    """Thread-safe cache of the tilt series loaded on this rank (most recent ``keep``)."""

    def __init__(self, loader, keep=2):
        self.loader = loader
        self.keep = keep
        self._items = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading = {}

    def get(self, name):
        with self._lock:
            if name in self._items:
                self._items.move_to_end(name)
                return self._items[name]
            event = self._loading.get(name)
            owner = event is None
            if owner:
                event = self._loading[name] = threading.Event()
        if not owner:
            event.wait()
            return self.get(name)
        try:
            value = self.loader(name)
            with self._lock:
                self._items[name] = value
                while len(self._items) > self.keep:
                    self._items.popitem(last=False)
        finally:
            with self._lock:
                del self._loading[name]
            event.set()
        return value


def run_batches(comm, batches, process, make_state, n_threads=1, label="Particles", check_abort=None,
                is_leader=True):
    """Process ``batches`` on all ranks and threads; returns this rank's list of states.

    ``process(state, batch)`` does the work of one batch into a thread-private ``state``
    made by ``make_state()``.  ``check_abort()`` is called between batches.
    """
    counter = DynamicCounter(comm)
    lock = threading.Lock()
    total = sum(len(b[1]) for b in batches)
    starts = np.cumsum([0] + [len(b[1]) for b in batches])
    progress = Progress(total, label, "particles", enabled=is_leader)
    errors = []

    def take():
        with lock:
            return counter.next()

    def worker():
        state = make_state()
        fault_injection(comm, "start")
        while not errors:
            i = take()
            if i >= len(batches):
                break
            if check_abort is not None:
                check_abort()
            process(state, batches[i])
            fault_injection(comm, "batch")
            if is_leader:
                with lock:
                    progress.update(starts[min(i + 1, len(batches))])
        fault_injection(comm, "end")
        return state

    if comm.Get_size() > 1 and comm.Get_rank() == 0:
        # the leader hands out batches: it keeps the shared counter progressing and reports
        n_workers = (comm.Get_size() - 1) * n_threads

        def report(value):
            if is_leader:
                progress.update(starts[min(value, len(batches))])

        counter.serve(len(batches) + n_workers, report)
        states = [make_state()]
    elif n_threads <= 1:
        states = [worker()]
    else:
        with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
            futures = [pool.submit(worker) for _ in range(n_threads)]
            states = []
            for fut in futures:
                try:
                    states.append(fut.result())
                except BaseException as exc:  # stop the other threads, re-raise below
                    errors.append(exc)
        if errors:
            raise errors[0]
    counter.free()
    if is_leader:
        progress.finish()
    return states


def fault_injection(comm, point="batch"):
    """Test hook: ``STA_TEST_KILL_RANK=r`` makes rank r die (SIGKILL) at ``point``, to check
    that a dead follower takes the job down instead of hanging it or leaving mixed outputs.

    ``STA_TEST_KILL_AT`` picks the point (default ``batch``: after the rank's first batch;
    ``start``: before its first batch; ``end``: after its last batch, before the results
    are summed; ``model``: sta_refine, while the leader computes and writes the iteration).
    ``STA_TEST_KILL_STAMP=FILE`` records the time of the kill (seconds since the epoch).
    """
    target = os.environ.get("STA_TEST_KILL_RANK")
    if target is None or target != str(comm.Get_rank()) or os.environ.get("STA_TEST_KILL_AT", "batch") != point:
        return
    stamp = os.environ.get("STA_TEST_KILL_STAMP")
    if stamp:
        with open(stamp, "w") as fh:
            fh.write(f"{time.time():.6f}\n")
    os.kill(os.getpid(), signal.SIGKILL)
