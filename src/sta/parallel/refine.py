"""Distribution of the refinement's E-step over MPI ranks and threads (spec §6.8).

* One rank: both half sets in turn, in this process.
* N ≥ 3 ranks: rank 0 is the leader and holds no images; followers are split into two
  half-set groups (odd ranks half 1, even ranks half 2).  Each half has a communicator of the
  leader and its followers (:class:`RefineRanks`).  The leader hands out batches of that
  half's particles (a shared counter it owns), receives every follower's pose results, and
  the followers' sums are reduced onto it in place over the half's communicator; it never
  mixes the halves' sums (the loop's M-step reconstructs each half from its own).  After the
  M-step it broadcasts the poses to all and each half's model to that half's followers.
* ``--j N``: N threads per rank take batches of the rank's half (particles in parallel; the
  kernels release the GIL), each with its own engine and sums, added at the end.

The interface to the loop (:mod:`sta.workflows.refine.loop`) is narrow: :func:`expectation`
takes an E-step job (``halves``: particle indices per half; ``new_sums(h)``: zeroed sums with
``arrays()``/``set_arrays()``/``add_()``; ``worker(h)``: a per-thread object with ``sums``
and ``expect(indices, tick) -> result rows``) and returns the sums per half and the result
rows; :func:`publish` moves the poses and models.  Arrays travel as MPI buffers
(:mod:`sta.parallel.mpi`, chunked), only small metadata is pickled.
"""

import threading

import numpy as np

from sta.errors import InputError
from sta.parallel import mpi
from sta.parallel.batches import fault_injection, make_batches

_TAG_RESULTS = 21


def check_ranks(comm):
    size = comm.Get_size()
    if size == 2:
        raise InputError("sta_refine --auto_refine --split_random_halves needs 1 or at least 3 MPI ranks "
                         "(a leader and one follower per half set); got 2")


def half_of_rank(rank):
    """Half set (0/1) of a follower: odd ranks half 1, even ranks half 2 (RELION)."""
    return 0 if rank % 2 == 1 else 1


class RefineRanks:
    """The roles and communicators of a refinement, made once per run (collective).

    ``serial``: one rank doing everything; else ``is_leader`` (rank 0) or a follower of
    ``half``.  ``half_comm[h]``: the leader (its rank 0) and the followers of half ``h``;
    None on ranks outside it.
    """

    def __init__(self, comm):
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.serial = self.size == 1
        self.is_leader = not self.serial and self.rank == 0
        self.half = None if self.serial or self.is_leader else half_of_rank(self.rank)
        self.half_comm = [None, None]
        if self.serial:
            return
        group = comm.Get_group()
        for h in range(2):
            members = [0] + [r for r in range(1, self.size) if half_of_rank(r) == h]
            sub_group = group.Incl(members)
            sub = comm.Create(sub_group)
            sub_group.Free()
            if self.rank in members:
                self.half_comm[h] = sub
        group.Free()

    def holds(self, h):
        """Does this rank keep half ``h``'s model?  (The leader and a single rank: both halves.)"""
        return self.half is None or self.half == h

    def free(self):
        for c in self.half_comm:
            if c is not None:
                c.Free()
        self.half_comm = [None, None]


# ---------------------------------------------------------------------- E-step
def expectation(ranks, job, n_threads=1, check_abort=None, progress=None):
    """E-step of every particle.  Returns ``(sums, rows)``: on the leader and on a single rank the
    sums of each half (``[half 1, half 2]``) and the result rows of all particles; on followers
    ``(None, None)``."""
    if ranks.serial:
        return _serial(job, n_threads, check_abort, progress)
    if ranks.is_leader:
        return _leader(ranks, job, check_abort)
    _follower(ranks, job, n_threads)
    return None, None


def _serial(job, n_threads, check_abort, progress):
    total = sum(len(i) for i in job.halves)
    bar = progress(total, "Expectation") if progress is not None else None
    done = [0]
    lock = threading.Lock()

    def tick():
        with lock:
            done[0] += 1
            if bar is not None:
                bar.update(done[0])
        if check_abort is not None:  # the pipeline's abort flag, after every particle
            check_abort()

    sums, rows = [], []
    for h in range(2):
        idx = job.halves[h]
        batches = make_batches({"half": idx}, n_threads, min_size=1, max_size=8) if n_threads > 1 else [("half", idx)]
        counter = _LocalCounter()
        s, r = _threaded_half(job, h, batches, counter.next, n_threads, tick)
        sums.append(s)
        rows.append(r)
    if bar is not None:
        bar.finish()
    return sums, np.concatenate(rows)


class _LocalCounter:
    def __init__(self):
        self.value = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            v = self.value
            self.value += 1
            return v


class _Stopped(Exception):
    """Another thread failed: stop taking work."""


def _threaded_half(job, h, batches, take, n_threads, tick=None, after_batch=None):
    """Run the batches of half ``h`` on ``n_threads`` threads (each its own worker); returns the
    sums of all threads (added into the first) and the result rows."""
    errors = []

    def work():
        worker = None   # made at the first batch: a thread that gets none holds no sums
        rows = []
        while not errors:
            b = take()
            if b >= len(batches):
                break
            if worker is None:
                worker = job.worker(h)
            rows.append(worker.expect(batches[b][1], tick))
            if after_batch is not None:
                after_batch()
        return (worker.sums if worker is not None else None), rows

    if n_threads <= 1:
        outs = [work()]
    else:
        outs = [None] * n_threads

        def run(k):
            try:
                outs[k] = work()
            except BaseException as exc:  # noqa: B036 - re-raised in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,), name=f"sta-estep-{k}") for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    made = [s for s, _ in outs if s is not None]
    sums = made[0] if made else job.new_sums(h)
    for other in made[1:]:
        sums.add_(other)   # in place: one thread's accumulators at a time on top of the first
    rows = [r for _, rs in outs for r in rs]
    return sums, np.concatenate(rows) if rows else np.empty((0, 0))


def _follower(ranks, job, n_threads):
    h = ranks.half
    hc = ranks.half_comm[h]
    world = ranks.comm
    idx = job.halves[h]
    n_workers = (hc.Get_size() - 1) * n_threads
    batches = make_batches({"half": idx}, n_workers, min_size=1, max_size=8)
    counter = mpi.DynamicCounter(hc)   # on the leader (rank 0 of the half's communicator)
    lock = threading.Lock()

    def take():
        with lock:
            return counter.next()

    fault_injection(world, "start")
    sums, rows = _threaded_half(job, h, batches, take, n_threads,
                                after_batch=lambda: fault_injection(world, "batch"))
    fault_injection(world, "end")
    if rows.size == 0:
        rows = np.empty((0, 0))
    mpi.send_array(world, rows, dest=0, tag=_TAG_RESULTS)
    arrays = sums.arrays()
    mpi.polite_barrier(hc)   # the half's other followers may still compute: wait without spinning
    for a in arrays:
        mpi.reduce_inplace(hc, a, root=0)
    counter.free()


def _leader(ranks, job, check_abort):
    world = ranks.comm
    counters = [mpi.DynamicCounter(ranks.half_comm[h]) for h in range(2)]
    rows = []
    for source in range(1, world.Get_size()):   # waits politely, checking the abort flag
        r = mpi.recv_array(world, source, _TAG_RESULTS, check=check_abort)
        if r.size:
            rows.append(r)
    sums = []
    for h in range(2):
        s = job.new_sums(h)
        arrays = s.arrays()
        mpi.polite_barrier(ranks.half_comm[h])
        for a in arrays:
            mpi.reduce_inplace(ranks.half_comm[h], a, root=0)
        s.set_arrays(arrays)
        sums.append(s)
    for c in counters:
        c.free()
    return sums, np.concatenate(rows) if rows else np.empty((0, 0))


# ---------------------------------------------------------------------- model
def publish(ranks, model_message, receive_model, pose_arrays):
    """After the leader's M-step: the poses to every rank, each half's model to its followers.

    ``model_message(h) -> (meta, arrays)`` on the leader, ``receive_model(h, meta, arrays)`` on
    followers; ``pose_arrays``: arrays updated in place on followers.  Followers wait for the
    leader politely (sleeping, not spinning on a core)."""
    if ranks.serial:
        return
    world = ranks.comm
    if not ranks.is_leader:
        fault_injection(world, "model")  # test hook: a follower dies while the leader writes
    mpi.polite_barrier(world)
    for a in pose_arrays:
        mpi.bcast_inplace(world, a, root=0)
    for h in range(2):
        hc = ranks.half_comm[h]
        if hc is None:
            continue
        if ranks.is_leader:
            meta, arrays = model_message(h)
            mpi.bcast_arrays(hc, arrays, root=0, meta=meta)
        else:
            meta, arrays = mpi.bcast_arrays(hc, None, root=0)
            receive_model(h, meta, arrays)
