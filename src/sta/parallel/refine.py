"""Distribution of the refinement's expectation over MPI ranks (spec §6.8).

* One rank: both half sets in turn, in this process.
* N ≥ 3 ranks: rank 0 is the leader and holds no images; followers are split into two
  half-set groups (odd ranks half 1, even ranks half 2) with their own communicators.  Each
  group takes batches of its own half's particles through a shared counter, sums its
  weighted back-projections, noise and prior statistics inside the group, and the group's
  first rank sends the sums to the leader.  The leader reconstructs each half from its own
  sums only (the halves meet only in the FSC), writes every file, and broadcasts the new
  model and poses.
"""

import numpy as np

from sta.errors import InputError
from sta.parallel.batches import fault_injection, make_batches
from sta.parallel.mpi import DynamicCounter, polite_recv

_TAG_SUMS = 11
_TAG_RESULTS = 21


def check_ranks(comm):
    size = comm.Get_size()
    if size == 2:
        raise InputError("sta_refine --auto_refine --split_random_halves needs 1 or at least 3 MPI ranks "
                         "(a leader and one follower per half set); got 2")


def expectation_all(run):
    """E-step of every particle; returns ``[sums_half1, sums_half2]`` on the leader (and on a
    single rank), None on followers.  Poses are updated everywhere."""
    comm = run.comm
    if comm.Get_size() == 1:
        return _serial(run)
    return _mpi(run)


def _serial(run):
    out = []
    total = len(run.state.half)
    progress = run.progress(total, "Expectation")
    done = [0]
    for h in range(2):
        idx = np.flatnonzero(run.state.half == h)
        sums = run.new_sums(h)

        def tick(k, base=done[0]):
            progress.update(base + k)
            if run.check_abort is not None:  # the pipeline's abort flag, after every particle
                run.check_abort()

        results = run.expect_particles(h, idx, sums, tick)
        done[0] += len(idx)
        run.apply_results(results)
        out.append(sums)
    progress.finish()
    return out


def _half_of_rank(rank):
    return 0 if rank % 2 == 1 else 1


def _mpi(run):
    comm = run.comm
    rank = comm.Get_rank()
    color = 0 if rank == 0 else 1 + _half_of_rank(rank)
    sub = comm.Split(color, rank)
    try:
        results = {}
        sums_out = None
        if rank == 0:
            sums_out = _leader_receive(run, comm)
        else:
            h = _half_of_rank(rank)
            idx = np.flatnonzero(run.state.half == h)
            batches = make_batches({"half": idx}, sub.Get_size(), min_size=1, max_size=8)
            counter = DynamicCounter(sub)
            sums = run.new_sums(h)
            fault_injection(comm, "start")
            while True:
                b = counter.next()
                if b >= len(batches):
                    break
                results.update(run.expect_particles(h, batches[b][1], sums))
                fault_injection(comm, "batch")
            fault_injection(comm, "end")
            counter.free()
            arrays = sums.arrays()
            from mpi4py import MPI

            for a in arrays:
                buf = np.ascontiguousarray(a)
                if sub.Get_rank() == 0:
                    sub.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=0)
                else:
                    sub.Reduce(buf, None, op=MPI.SUM, root=0)
                a[...] = buf
            if sub.Get_rank() == 0:
                comm.send(arrays, dest=0, tag=_TAG_SUMS + h)
            comm.send(results, dest=0, tag=_TAG_RESULTS)
        if rank == 0:
            merged = {}
            for source in range(1, comm.Get_size()):
                merged.update(polite_recv(comm, source, _TAG_RESULTS, check=run.check_abort))
            run.apply_results(merged)
        _broadcast_state(run, comm)
        return sums_out
    finally:
        sub.Free()


def _leader_receive(run, comm):
    """The followers' sums of each half; the leader checks the abort flag while it waits."""
    out = []
    for h in range(2):
        arrays = polite_recv(comm, 1 + h, _TAG_SUMS + h, check=run.check_abort)
        sums = run.new_sums(h)
        sums.set_arrays(arrays)
        out.append(sums)
    return out


def _broadcast_state(run, comm):
    st = run.state
    for name in ("angles", "offsets", "pmax", "nsig", "logl", "spread", "acc_rot", "acc_trans"):
        arr = np.ascontiguousarray(getattr(st, name))
        comm.Bcast(arr, root=0)
        setattr(st, name, arr)


def broadcast_model(run):
    """After the leader's M-step: send maps, noise, priors and schedule to every rank."""
    comm = run.comm
    if comm.Get_size() == 1:
        return
    payload = None
    if comm.Get_rank() == 0:
        payload = {
            "maps": [m.volume for m in run.models],
            "sigma2": [m.sigma2 for m in run.models],
            "sigma2_offset": [m.sigma2_offset for m in run.models],
            "pdf": [m.pdf_direction for m in run.models],
            "scales": [m.scales for m in run.models],
            "ssnr": [m.ssnr for m in run.models],
            "fsc": run.fsc, "current_size": run.current_size, "current_resolution": run.current_resolution,
            "samp": run.samp, "auto": run.auto, "final": run.final,
        }
    if comm.Get_rank() != 0:
        fault_injection(comm, "model")  # test hook: a follower dies while the leader writes
    payload = comm.bcast(payload, root=0)
    if comm.Get_rank() != 0:
        for h, m in enumerate(run.models):
            m.set_map(payload["maps"][h])
            m.sigma2 = payload["sigma2"][h]
            m.sigma2_offset = payload["sigma2_offset"][h]
            m.pdf_direction = payload["pdf"][h]
            m.scales = payload["scales"][h]
            m.ssnr = payload["ssnr"][h]
        run.fsc = payload["fsc"]
        run.current_size = payload["current_size"]
        run.current_resolution = payload["current_resolution"]
        run.samp = payload["samp"]
        run.auto = payload["auto"]
        run.final = payload["final"]
