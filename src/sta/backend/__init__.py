"""Array-module and FFT-engine selection (NumPy / pyFFTW / CuPy).

Kernels are written once against an array module ``xp`` obtained from their inputs with
:func:`get_array_module`; CuPy is imported lazily and only when asked for, so everything
works without it.
"""

from sta.backend.config import cupy_available, pyfftw_available  # noqa: F401
from sta.backend.arrays import get_array_module, to_device, to_host, require_gpu  # noqa: F401
from sta.backend.fft import get_fft, set_fft_threads, FFT_ENGINES  # noqa: F401
