"""MRC maps and stacks through ``mrcfile`` (float32 mode 2, float16 mode 12).

Paths may carry RELION's type suffix (``map.mrc:mrc``, ``stack.mrc:mrcs``; see
:mod:`sta.io.image_name`); every MRC file is read whatever its extension.
Arrays are returned in MRC order ``(z, y, x)`` (a 2D image is ``(y, x)``; a stack of 2D
images is ``(n, y, x)``).  Pixel sizes are in Å.  Every problem with a file becomes an
:class:`~sta.errors.InputError` naming the file.
"""

import os
import warnings

import mrcfile
import numpy as np

from sta.errors import FormatError, InputError
from sta.io.atomic import atomic_path
from sta.io.image_name import map_file


def _check_exists(path):
    """The file of ``path[:mrc|:mrcs]`` (RELION's type suffix removed); an error when absent."""
    path = map_file(os.fspath(path))
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found (expected an MRC file)")
    return path


def _open(path, header_only=False):
    path = _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.open(path, mode="r", permissive=False, header_only=header_only)
    except Exception as err:  # mrcfile raises ValueError / OSError variants
        raise FormatError(f"{path}: not a readable MRC file ({err})") from err


def read_mrc(path, dtype=np.float32):
    """Read an MRC file; returns ``(data, pixel_size)``.

    ``data`` is converted to ``dtype`` (None keeps the stored type, e.g. float16).
    NaN or infinite values are an error.
    """
    with _open(path) as mrc:
        data = np.asarray(mrc.data)
        if data.size == 0:
            raise FormatError(f"{path}: MRC file holds no data")
        px = float(mrc.voxel_size.x)
        out = data if dtype is None else data.astype(dtype, copy=True)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{path}: MRC data contain NaN or infinite values")
    return out, px


def read_header(path):
    """``(shape_zyx, pixel_size, mode)`` without reading the data."""
    with _open(path, header_only=True) as mrc:
        h = mrc.header
        shape = (int(h.nz), int(h.ny), int(h.nx))
        return shape, float(mrc.voxel_size.x), int(h.mode)


def read_stack_images(path, indices=None, dtype=np.float32):
    """Read some 2D images of a stack (memory-mapped; ``indices`` None = all)."""
    path = _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=False)
    except Exception as err:
        raise FormatError(f"{path}: not a readable MRC file ({err})") from err
    with mrc:
        data = mrc.data
        if data.ndim == 2:
            data = data[None]
        if indices is None:
            out = np.array(data, dtype=dtype)
        else:
            idx = np.asarray(indices)
            if idx.size and (idx.max() >= data.shape[0] or idx.min() < 0):
                raise InputError(f"{path}: image index {int(idx.max()) + 1} requested but the stack "
                                 f"holds {data.shape[0]} images")
            out = np.array(data[idx], dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{path}: MRC data contain NaN or infinite values")
    return out


def write_mrc(path, data, pixel_size, float16=False, stack=None):
    """Write ``data`` atomically with header pixel size ``pixel_size`` (Å).

    ``float16`` writes MRC mode 12.  ``stack`` marks a 3D array as a stack of 2D images
    (ispg 0, default for ``.mrcs``) rather than a volume (ispg 1).
    """
    arr = np.asarray(data)
    arr = arr.astype(np.float16 if float16 else np.float32, copy=False)
    if stack is None:
        stack = str(path).endswith(".mrcs")
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(arr)
                if arr.ndim == 3 and stack:
                    mrc.set_image_stack()
                mrc.voxel_size = float(pixel_size)
                if arr.ndim == 3 and stack:
                    # RELION's stacks: mz = nz, so the z spacing is 1.0 (x/y carry the pixel size)
                    mrc.header.mz = arr.shape[0]
                    mrc.header.cella.z = float(arr.shape[0])
                mrc.update_header_stats()
