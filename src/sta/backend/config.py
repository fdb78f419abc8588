"""One probe of the optional packages (no import of CuPy at module import time)."""

import functools
import importlib.util


@functools.lru_cache(maxsize=None)
def pyfftw_available():
    """True when pyFFTW can be imported."""
    return importlib.util.find_spec("pyfftw") is not None


@functools.lru_cache(maxsize=None)
def cupy_available():
    """True when CuPy imports and sees at least one CUDA device."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA/driver failure means "no GPU"
        return False
