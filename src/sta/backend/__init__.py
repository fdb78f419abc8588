"""Array-module and FFT-engine selection (NumPy / pyFFTW / CuPy).

Kernels are written once against an array module ``xp`` obtained from their inputs with
:func:`get_array_module`; CuPy is imported lazily and only when asked for, so everything
works without it.
"""

from sta.backend.arrays import get_array_module, require_gpu, to_device, to_host
from sta.backend.config import cupy_available, pyfftw_available
from sta.backend.fft import FFT_ENGINES, get_fft, set_fft_threads

__all__ = ["FFT_ENGINES", "cupy_available", "get_array_module", "get_fft", "pyfftw_available", "require_gpu",
           "set_fft_threads", "to_device", "to_host"]
