"""Array-module helpers: one code path for NumPy and CuPy arrays."""

import numpy as np

from sta.backend.config import cupy_available
from sta.errors import InputError


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def require_gpu():
    """Import CuPy or fail with one clear line (used by ``--gpu``)."""
    if not cupy_available():
        raise InputError("--gpu was given but CuPy with a CUDA device is not available "
                         "(install the 'gpu' extra: pip install sta-tomo[gpu])")
    import cupy

    return cupy


def to_device(array, xp):
    """Copy a host array onto the module ``xp`` (no-op for NumPy)."""
    if xp is np:
        return np.asarray(array)
    return xp.asarray(array)


def to_host(array):
    """NumPy copy of any array (no-op for NumPy arrays)."""
    if isinstance(array, np.ndarray):
        return array
    get = getattr(array, "get", None)
    return get() if get is not None else np.asarray(array)
