"""FFT engines behind one small interface.

Normalisation convention: all engines use NumPy's default ("backward"): the forward
transform is unnormalised and the inverse divides by N.  RELION's "centred" 1/sqrt(N)
transforms are built on top of this in :mod:`sta.kernels.fourier`.

Engines: ``numpy`` (always), ``pyfftw`` (plans cached by pyFFTW's interface cache,
``threads`` honoured), ``cupy`` (cuFFT; plans cached by CuPy).
"""

import contextlib
import functools
import os

import numpy as np

from sta.backend.config import pyfftw_available

_THREADS = [1]
_OVERRIDE = [None]


@contextlib.contextmanager
def use_fft_engine(name):
    """Temporarily make ``name`` the NumPy-array FFT engine (e.g. "numpy" where results must
    be bit-identical from run to run: pyFFTW's plans may differ in the last bit)."""
    old = _OVERRIDE[0]
    _OVERRIDE[0] = name
    try:
        yield
    finally:
        _OVERRIDE[0] = old


def set_fft_threads(n):
    """Threads used by the pyFFTW engine (``--j``)."""
    _THREADS[0] = max(1, int(n))


class NumpyFFT:
    name = "numpy"

    def rfftn(self, a, s=None, axes=None):
        return np.fft.rfftn(a, s=s, axes=axes)

    def irfftn(self, a, s=None, axes=None):
        if s is not None and axes is None:
            axes = tuple(range(-len(s), 0))
        return np.fft.irfftn(a, s=s, axes=axes)

    def fftn(self, a, axes=None):
        return np.fft.fftn(a, axes=axes)

    def ifftn(self, a, axes=None):
        return np.fft.ifftn(a, axes=axes)


class PyFFTW:
    name = "pyfftw"

    def __init__(self):
        import pyfftw
        import pyfftw.interfaces.cache
        import pyfftw.interfaces.numpy_fft as nfft

        pyfftw.interfaces.cache.enable()
        pyfftw.interfaces.cache.set_keepalive_time(30)
        self._fft = nfft

    def _kw(self):
        return {"threads": _THREADS[0], "planner_effort": "FFTW_ESTIMATE"}

    def rfftn(self, a, s=None, axes=None):
        if s is not None and axes is None:
            axes = tuple(range(-len(s), 0))
        return self._fft.rfftn(a, s=s, axes=axes, **self._kw())

    def irfftn(self, a, s=None, axes=None):
        if s is not None and axes is None:
            axes = tuple(range(-len(s), 0))
        return self._fft.irfftn(a, s=s, axes=axes, **self._kw())

    def fftn(self, a, axes=None):
        return self._fft.fftn(a, axes=axes, **self._kw())

    def ifftn(self, a, axes=None):
        return self._fft.ifftn(a, axes=axes, **self._kw())


class CupyFFT:
    name = "cupy"

    def __init__(self):
        import cupy

        self._fft = cupy.fft

    def rfftn(self, a, s=None, axes=None):
        return self._fft.rfftn(a, s=s, axes=axes)

    def irfftn(self, a, s=None, axes=None):
        return self._fft.irfftn(a, s=s, axes=axes)

    def fftn(self, a, axes=None):
        return self._fft.fftn(a, axes=axes)

    def ifftn(self, a, axes=None):
        return self._fft.ifftn(a, axes=axes)


FFT_ENGINES = {"numpy": NumpyFFT, "pyfftw": PyFFTW, "cupy": CupyFFT}


@functools.lru_cache(maxsize=None)
def _engine(name):
    return FFT_ENGINES[name]()


def get_fft(xp=np, name=None):
    """FFT engine for the array module ``xp``.

    For NumPy arrays the default is pyFFTW when installed (override with ``name`` or the
    environment variable ``STA_FFT=numpy``); for CuPy arrays it is cuFFT.
    """
    if xp is not np:
        return _engine("cupy")
    if name is None:
        name = _OVERRIDE[0] or os.environ.get("STA_FFT") or ("pyfftw" if pyfftw_available() else "numpy")
    if name not in ("numpy", "pyfftw"):
        raise ValueError(f"unknown FFT engine {name!r} for NumPy arrays (expected numpy or pyfftw)")
    return _engine(name)
