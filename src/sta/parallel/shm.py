"""Per-node communicators and node-shared arrays (MPI-3 shared-memory windows).

Followers on one node can hold a single copy of read-only data (e.g. pre-read particle
images) instead of one copy per rank.  Without MPI, or for a rank alone on its node, the
array is ordinary process memory.
"""

import numpy as np


def follower_node_comm(comm):
    """Communicator of the followers (ranks > 0) that share this rank's node.

    Returns None on the leader of a multi-rank job (it holds no data) and None for a
    single-rank job (the process is its own node group).
    """
    if comm.Get_size() == 1:
        return None
    from mpi4py import MPI

    followers = comm.Split(0 if comm.Get_rank() > 0 else MPI.UNDEFINED, comm.Get_rank())
    if followers == MPI.COMM_NULL:
        return None
    node = followers.Split_type(MPI.COMM_TYPE_SHARED, key=followers.Get_rank())
    followers.Free()
    return node


class NodeSharedArray:
    """A NumPy array shared by the ranks of ``node`` (allocated once, on the node's rank 0).

    Every rank of ``node`` must create it together (collective) and :meth:`free` it together.
    """

    def __init__(self, node, shape, dtype):
        self.win = None
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if node is None or node.Get_size() == 1:
            self.array = np.empty(shape, dtype)
            return
        from mpi4py import MPI

        nbytes = count * dtype.itemsize if node.Get_rank() == 0 else 0
        self.win = MPI.Win.Allocate_shared(nbytes, dtype.itemsize, comm=node)
        buf, _ = self.win.Shared_query(0)
        self.array = np.ndarray(shape, dtype=dtype, buffer=buf)

    def free(self):
        self.array = None
        if self.win is not None:
            self.win.Free()
            self.win = None
