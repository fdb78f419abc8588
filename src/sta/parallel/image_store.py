"""Where sta_refine's followers read particle images from (``--preread_images``, ``--scratch_dir``).

* default: the original ``.mrcs`` stacks, read again every iteration;
* ``--preread_images``: read once into RAM; under MPI one copy per node, shared by that node's
  followers through an MPI shared-memory window (RELION keeps one copy per rank);
* ``--scratch_dir DIR``: one copy per node in ``DIR/relion_volatile/particles.h5`` (float16
  stacks stay float16), written by the node's first follower while the others wait, wiped at
  the start and removed at the end (``--keep_scratch`` keeps it, ``--reuse_scratch`` reuses a
  complete copy); when the disk would keep less than ``--keep_free_scratch`` GB free, or
  fills up while copying, the original files are used.

The leader (rank 0 of a multi-rank job) never holds images.  Every mode returns the same
float32 values as reading the original files.
"""

import logging
import os
import shutil
import time

import numpy as np

from sta.errors import InputError
from sta.io.mrc import read_header
from sta.parallel.shm import NodeSharedArray, follower_node_comm

log = logging.getLogger("sta.refine")
SCRATCH_SUBDIR = "relion_volatile"
SCRATCH_FILE = "particles.h5"


def _mem_available():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ImageStore:
    """Images of the refinement's particles, by :class:`~sta.workflows.refine.data.StackParticle`."""

    def __init__(self, sps, resolve, comm, preread=False, scratch_dir="", keep_free_gb=10.0, reuse=False,
                 keep=False):
        self.sps = sps
        self.resolve = resolve
        self.comm = comm
        self.mode = "disk"
        self._shared = None
        self._h5 = None
        self._scratch_path = None
        self._keep = keep
        self.offsets = {}
        total = 0
        for sp in sps:
            self.offsets[sp.index] = total
            total += sp.n_img
        self.total = total
        self.box = sps[0].box if sps else 0
        if not (preread or scratch_dir):
            return
        self.dtype = self._dtype()
        self.nbytes = total * self.box * self.box * self.dtype.itemsize
        self.node = follower_node_comm(comm)
        holds = comm.Get_size() == 1 or comm.Get_rank() > 0
        t0 = time.time()
        if preread:
            if scratch_dir:
                log.warning(" WARNING: --preread_images given: --scratch_dir %s is not used", scratch_dir)
            if holds:
                self._preread()
            self.mode = "ram"
        else:
            self.mode = self._scratch(scratch_dir, keep_free_gb, reuse) if holds else "scratch"
        stats = comm.gather((self.mode, time.time() - t0), root=0) if comm.Get_size() > 1 else [(self.mode, 0.0)]
        if comm.Get_rank() == 0:
            modes = sorted({m for m, _ in stats[1:] or stats})
            what = (f"{len(sps)} volumes of {self.box}^3 voxels" if sps and sps[0].volume
                    else f"{total} images of {self.box} pixels")
            log.info(" Particle images: %s (%s, %.1f MB per node copy) held in %s; %.1f s", what,
                     self.dtype.name, self.nbytes / 1e6, "/".join(modes), max(t for _, t in stats))

    # ------------------------------------------------------------------ set-up
    def _dtype(self):
        modes = {read_header(self.resolve(p))[2] for p in sorted({sp.image_path for sp in self.sps})}
        return np.dtype(np.float16 if modes == {12} else np.float32)

    def _node_rank(self):
        return 0 if self.node is None else self.node.Get_rank()

    def _node_size(self):
        return 1 if self.node is None else self.node.Get_size()

    def _node_bcast(self, obj):
        return obj if self.node is None else self.node.bcast(obj, root=0)

    def _preread(self):
        need = self.nbytes
        problem = None
        if self._node_rank() == 0:
            avail = _mem_available()
            if avail is not None and need > 0.9 * avail:
                problem = (f"--preread_images needs {need / 1e9:.2f} GB of RAM per node but only "
                           f"{avail / 1e9:.2f} GB are available: run without it (or with --scratch_dir)")
        problem = self._node_bcast(problem)
        if problem:
            raise InputError(problem)
        self._shared = NodeSharedArray(self.node, (self.total, self.box, self.box), self.dtype)
        arr = self._shared.array
        for k, sp in enumerate(self.sps):
            if k % self._node_size() == self._node_rank():
                o = self.offsets[sp.index]
                arr[o:o + sp.n_img] = self._read_original(sp, self.dtype)
        if self.node is not None:
            self.node.Barrier()

    def _scratch(self, scratch_dir, keep_free_gb, reuse):
        import h5py

        folder = os.path.join(scratch_dir, SCRATCH_SUBDIR)
        path = os.path.join(folder, SCRATCH_FILE)
        status = None
        if self._node_rank() == 0:
            status = self._write_scratch(folder, path, keep_free_gb, reuse)
        status = self._node_bcast(status)
        if status != "scratch":
            if self._node_rank() == 0:
                log.warning(" WARNING: %s: using the original particle files", status)
            return "disk"
        self._scratch_path = path
        self._h5 = h5py.File(path, "r")
        return "scratch"

    def _write_scratch(self, folder, path, keep_free_gb, reuse):
        import h5py

        if reuse and self._complete(path):
            return "scratch"
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.makedirs(folder, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            return f"--scratch_dir {folder} is not writable ({exc.strerror})"
        if free - self.nbytes < keep_free_gb * 1e9:
            shutil.rmtree(folder, ignore_errors=True)
            return (f"--scratch_dir {folder}: {self.nbytes / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free and "
                    f"--keep_free_scratch {keep_free_gb:g} GB must stay free")
        tmp = path + ".part"
        try:
            with h5py.File(tmp, "w") as h5:
                ds = h5.create_dataset("images", (self.total, self.box, self.box), dtype=self.dtype)
                for sp in self.sps:
                    o = self.offsets[sp.index]
                    ds[o:o + sp.n_img] = self._read_original(sp, self.dtype)
                h5.attrs["complete"] = self.total
            os.replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return f"--scratch_dir {folder}: copying the particles failed ({exc})"
        return "scratch"

    def _complete(self, path):
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                ds = h5["images"]
                return (int(h5.attrs.get("complete", -1)) == self.total and ds.shape == (self.total, self.box,
                                                                                         self.box)
                        and ds.dtype == self.dtype)
        except (OSError, KeyError):
            return False

    def _read_original(self, sp, dtype=np.float32):
        return sp.read_images(self.resolve, dtype)

    # ------------------------------------------------------------------ use
    def read(self, sp):
        """(n_img, box, box) float32 images of one particle."""
        if self.mode == "ram":
            o = self.offsets[sp.index]
            return self._shared.array[o:o + sp.n_img].astype(np.float32)
        if self.mode == "scratch" and self._h5 is not None:
            o = self.offsets[sp.index]
            return self._h5["images"][o:o + sp.n_img].astype(np.float32)
        return self._read_original(sp)

    def close(self):
        """Release the shared memory and remove the scratch copy (collective over the node)."""
        if self._shared is not None:
            self._shared.free()
            self._shared = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            if self.node is not None:
                self.node.Barrier()
            if self._node_rank() == 0 and not self._keep:
                shutil.rmtree(os.path.dirname(self._scratch_path), ignore_errors=True)
        if getattr(self, "node", None) is not None:
            self.node.Free()
            self.node = None
