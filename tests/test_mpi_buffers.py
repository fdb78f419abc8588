"""sta.parallel.mpi's array helpers: buffers in chunks (reduce, allreduce, bcast, send/recv), under
``mpirun -n 3`` with a chunk size forced down to a few elements."""

import subprocess
import sys
import textwrap

import numpy as np

from sta.parallel import mpi
from tests.conftest import requires_mpirun

SCRIPT = textwrap.dedent(r'''
    import math
    import numpy as np
    from sta.parallel import mpi

    LIMIT = 40            # bytes: 2 complex128, 5 float64 per message


    class Counting:
        """The communicator, recording the size of every buffer message."""

        def __init__(self, comm):
            self.comm = comm
            self.sizes = []

        def __getattr__(self, name):
            attr = getattr(self.comm, name)
            if name in ("Reduce", "Allreduce", "Bcast", "Send", "Recv"):
                def call(*args, **kw):
                    buf = next(a for a in args if isinstance(a, np.ndarray))
                    self.sizes.append(buf.nbytes)
                    return attr(*args, **kw)
                return call
            return attr


    world = mpi.world()
    rank, size = world.Get_rank(), world.Get_size()
    assert size == 3
    comm = Counting(world)

    def data(r):
        rng = np.random.default_rng(r)
        return {"c": (rng.normal(size=37) + 1j * rng.normal(size=37)).astype(np.complex128),
                "f": rng.normal(size=(5, 7)), "i": rng.integers(-9, 9, 11)}

    everyone = [data(r) for r in range(size)]
    total = {k: sum(d[k] for d in everyone) for k in everyone[0]}

    # reduce onto rank 2, in place; the others keep their arrays
    mine = data(rank)
    for k, a in mine.items():
        mpi.reduce_inplace(comm, a, root=2, max_bytes=LIMIT)
        if rank == 2:
            assert np.allclose(a, total[k], rtol=1e-13, atol=1e-13), k
        else:
            assert np.array_equal(a, everyone[rank][k]), k
    # allreduce
    mine = data(rank)
    for k, a in mine.items():
        mpi.allreduce_inplace(comm, a, max_bytes=LIMIT)
        assert np.allclose(a, total[k], rtol=1e-13, atol=1e-13), k
    # bcast from rank 1
    mine = data(rank)
    for k, a in mine.items():
        mpi.bcast_inplace(comm, a, root=1, max_bytes=LIMIT)
        assert np.array_equal(a, everyone[1][k]), k
    # a list of arrays of other shapes and dtypes, with picklable metadata
    sent = [everyone[0]["c"].reshape(37, 1), everyone[0]["f"], np.zeros((0, 3)), np.arange(7, dtype=np.int32)]
    meta, got = mpi.bcast_arrays(comm, sent if rank == 0 else None, root=0, meta={"n": 4} if rank == 0 else None,
                                 max_bytes=LIMIT)
    assert meta == {"n": 4} and len(got) == 4
    for a, b in zip(got, sent):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    # point to point: ranks 1 and 2 send to rank 0 (an empty array too)
    if rank == 0:
        for src in (1, 2):
            a = mpi.recv_array(comm, src, 5, max_bytes=LIMIT)
            assert np.array_equal(a, everyone[src]["f"]) and a.dtype == np.float64
            e = mpi.recv_array(comm, src, 5, max_bytes=LIMIT)
            assert e.shape == (0, 13)
    else:
        mpi.send_array(comm, everyone[rank]["f"], 0, 5, max_bytes=LIMIT)
        mpi.send_array(comm, np.empty((0, 13)), 0, 5, max_bytes=LIMIT)
    # no message above the limit, and each array went in ceil(nbytes / chunk) messages
    assert comm.sizes and max(comm.sizes) <= LIMIT, max(comm.sizes)
    assert comm.sizes.count(32) >= 18 * 3      # 37 complex128 in chunks of 2: 18 full + 1 of 1, per call
    mpi.polite_barrier(world)
    done = world.gather((rank, len(comm.sizes)), root=0)   # one line from rank 0 (ranks' prints may interleave)
    if rank == 0:
        print("ranks ok:", " ".join(str(r) for r, _ in sorted(done)), "messages:", sum(n for _, n in done))
''')


def test_chunks_split_at_the_limit_without_copies():
    a = np.arange(10, dtype=np.complex128)
    parts = mpi._chunks(a, 40)               # 40 bytes: 2 complex128 (16 bytes each)
    assert [len(p) for p in parts] == [2, 2, 2, 2, 2]
    assert all(np.shares_memory(p, a) for p in parts)
    assert [len(p) for p in mpi._chunks(np.zeros(5), 1)] == [1] * 5    # never an empty chunk
    assert mpi._chunks(np.zeros((0, 3)), 40) == []
    assert 0 < mpi.MAX_MESSAGE_BYTES < 2 ** 31
    try:
        mpi._chunks(np.zeros((4, 4))[:, ::2], 40)
    except ValueError:
        pass
    else:
        raise AssertionError("a non-contiguous array must be refused (a copy would not be updated in place)")


def test_serial_helpers_are_identities():
    comm = mpi.SerialComm()
    a = np.arange(6.0)
    assert mpi.reduce_inplace(comm, a) is a and mpi.allreduce_inplace(comm, a) is a and mpi.bcast_inplace(comm, a) is a
    meta, arrays = mpi.bcast_arrays(comm, [a], meta={"k": 1})
    assert meta == {"k": 1} and arrays[0] is a
    mpi.polite_barrier(comm)


@requires_mpirun
def test_chunked_buffers_under_three_ranks(tmp_path):
    script = tmp_path / "buffers.py"
    script.write_text(SCRIPT)
    res = subprocess.run(["mpirun", "-np", "3", sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "ranks ok: 0 1 2 messages:" in res.stdout, res.stdout


def test_worker_threads_capped_at_cores_per_rank(monkeypatch):
    """--j E-step threads never exceed the cores per rank on the node (MPI_LOCALNRANKS)."""
    from sta.parallel import threads

    monkeypatch.delenv("STA_TEST_OVERSUBSCRIBE", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "5")
    assert threads.cores_per_rank() == 1 and threads.worker_threads(8) == (1, True)
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert threads.worker_threads(8) == (4, True) and threads.worker_threads(3) == (3, False)
    monkeypatch.delenv("MPI_LOCALNRANKS")
    assert threads.worker_threads(8) == (8, False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "5")
    monkeypatch.setenv("STA_TEST_OVERSUBSCRIBE", "1")
    assert threads.worker_threads(8) == (8, False)
