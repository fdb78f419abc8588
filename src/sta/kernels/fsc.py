"""Fourier shell correlation and phase randomisation, written against an array module ``xp``.

Conventions (RELION's ``getFSC`` / ``randomizePhasesBeyond`` in ``src/fftw.cpp``):

* Volumes are ``(z, y, x)`` arrays; spectra are the rfft half grids ``(z, y, x//2 + 1)``
  with the real-space origin at the array corner (phases do not matter for anything here).
* The shell of a Fourier component is ``round(|k|)`` with ``k`` in pixels (cycles per box).
  Every element of the half grid counts once, so both mirror copies on the ``kx = 0`` plane
  are summed, as RELION does.  Shells run ``0 .. x//2``; corner components beyond that are
  ignored.
* ``FSC(i) = Σ Re(F1* F2) / sqrt(Σ|F1|² Σ|F2|²)`` over shell ``i``.

Curve helpers (corrected FSC, resolution at a threshold, cisTEM-like part FSC) operate on
1D NumPy arrays of length ``x//2 + 1``.
"""

import functools

import numpy as np

from sta.backend import get_array_module, get_fft, to_device
from sta.kernels.grid import freq_squared, shell_index, shell_sums


def n_shells(shape):
    """Number of FSC shells of a ``(z, y, x)`` volume: ``x//2 + 1``."""
    return shape[-1] // 2 + 1


def fsc_spectra(f1, f2, idx=None, nshell=None):
    """FSC of two half-grid spectra.

    Parameters
    ----------
    f1, f2 : complex arrays ``(z, y, x//2 + 1)``
    idx : int array of the same shape, optional
        Shell index (:func:`sta.kernels.grid.shell_index`); computed for an even box ``x`` when omitted
        (pass it for odd boxes).
    nshell : int, optional
        Number of shells (default ``x//2 + 1`` of the real-space box).

    Returns
    -------
    ndarray (nshell,), float64 on the host; shells with no power are 0.
    """
    xp = get_array_module(f1)
    shape = f1.shape[:-1] + (2 * (f1.shape[-1] - 1),)
    if idx is None:
        idx = shell_index(shape, xp)
    if nshell is None:
        nshell = f1.shape[-1]
    num = shell_sums(f1.real * f2.real + f1.imag * f2.imag, idx, nshell)
    d1 = shell_sums(f1.real * f1.real + f1.imag * f1.imag, idx, nshell)
    d2 = shell_sums(f2.real * f2.real + f2.imag * f2.imag, idx, nshell)
    den = xp.sqrt(d1 * d2)
    out = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)
    return np.asarray(out.get() if hasattr(out, "get") else out, dtype=np.float64)


def fsc(map1, map2, idx=None):
    """FSC of two real ``(z, y, x)`` volumes (computed in float64).

    Returns
    -------
    ndarray (x//2 + 1,), float64
    """
    xp = get_array_module(map1, map2)
    if map1.shape != map2.shape:
        raise ValueError(f"fsc: shapes differ {map1.shape} vs {map2.shape}")
    fft = get_fft(xp)
    f1 = fft.rfftn(xp.asarray(map1, dtype=np.float64))
    f2 = fft.rfftn(xp.asarray(map2, dtype=np.float64))
    if idx is None:
        idx = shell_index(map1.shape, xp)
    return fsc_spectra(f1, f2, idx, n_shells(map1.shape))


def randomize_phases_beyond(volume, shell, rng):
    """Replace the phases of all components with ``|k|² >= shell²`` by uniform random ones.

    Amplitudes are kept.  The random phases are drawn from ``rng`` in C order over the
    half grid (RELION's loop order), so a seed gives a reproducible result on every
    backend, and :class:`RelionRandom` gives RELION's phases.

    Parameters
    ----------
    volume : real array ``(z, y, x)``
    shell : int
        First randomised shell (pixels).
    rng : object with ``uniform(low, high, size)``
        :class:`RelionRandom` or a NumPy ``Generator``.

    Returns
    -------
    real array ``(z, y, x)``, float64
    """
    xp = get_array_module(volume)
    fft = get_fft(xp)
    spec = fft.rfftn(xp.asarray(volume, dtype=np.float64))
    sel = freq_squared(volume.shape, xp) >= int(shell) * int(shell)
    count = int(sel.sum())
    phases = to_device(rng.uniform(0.0, 2.0 * np.pi, count), xp)
    spec[sel] = xp.abs(spec[sel]) * xp.exp(1j * phases)
    return fft.irfftn(spec, s=volume.shape, axes=tuple(range(volume.ndim)))


# ------------------------------------------------------------------ RELION's random numbers


@functools.lru_cache(maxsize=2)
def _lag_matrix(block):
    """Coefficients (mod 2³²) of ``block`` new glibc TYPE_3 words in terms of the last 31.

    glibc's additive generator is ``r[i] = r[i-3] + r[i-31] (mod 2³²)``, linear in the
    previous 31 words, so a whole block is one integer matrix-vector product.
    """
    rows = [np.eye(1, _LAG, t, dtype=np.uint32)[0] for t in range(_LAG)]
    for _ in range(block):
        rows.append(rows[-3] + rows[-_LAG])
    return np.ascontiguousarray(np.array(rows[_LAG:], dtype=np.uint32))


_LAG = 31


class RelionRandom:
    """RELION's random numbers: glibc ``srand(seed)``/``rand()`` and ``rnd_unif``.

    ``relion_postprocess --random_seed S`` calls ``srand(S)`` and draws every random phase
    with ``rnd_unif(0, 2π)``, i.e. ``(float)rand() / (float)(RAND_MAX / (float)2π)`` in
    single precision.  Emulating glibc's TYPE_3 additive feedback generator (the default
    of ``srand``; seed 0 behaves as 1) reproduces RELION's phase-randomised FSC exactly on
    Linux.  Any object with a ``uniform(low, high, size)`` method (e.g. a NumPy
    ``Generator``) can be used instead where RELION compatibility is not wanted.

    Parameters
    ----------
    seed : int
        ``srand`` seed (taken modulo 2³²).
    """

    RAND_MAX = 2147483647
    _BLOCK = 4096

    def __init__(self, seed=0):
        seed = int(seed) & 0xFFFFFFFF
        if seed == 0:
            seed = 1
        word = seed - (1 << 32) if seed >= (1 << 31) else seed
        r = [word]
        for _ in range(1, 31):
            hi = int(word / 127773)  # C division truncates towards zero
            lo = word - hi * 127773
            word = 16807 * lo - 2836 * hi
            if word < 0:
                word += 2147483647
            r.append(word)
        r += r[:3]
        self._state = np.array([v & 0xFFFFFFFF for v in r[-_LAG:]], dtype=np.uint32)
        self._words(310)  # glibc discards the first 10 x 31 outputs

    def _words(self, n):
        out = np.empty(n, dtype=np.uint32)
        done = 0
        state = self._state
        while done < n:
            m = min(self._BLOCK, n - done)
            block = _lag_matrix(self._BLOCK)[:m] @ state
            out[done:done + m] = block
            state = np.concatenate([state, block])[-_LAG:]
            done += m
        self._state = state
        return out

    def rand(self, n):
        """The next ``n`` values of C ``rand()`` (int64, 0 .. RAND_MAX)."""
        return (self._words(int(n)) >> 1).astype(np.int64)

    def uniform(self, low=0.0, high=1.0, size=1):
        """``size`` values of RELION's ``rnd_unif(low, high)`` (float32 arithmetic), as float64."""
        a = np.float32(low)
        b = np.float32(high)
        if a == b:
            return np.full(int(size), float(a))
        denom = np.float32(np.float32(self.RAND_MAX) / (b - a))
        vals = a + self.rand(size).astype(np.float32) / denom
        return vals.astype(np.float64)


# ------------------------------------------------------------------ 1D curve helpers


def randomisation_shell(fsc_unmasked, box, angpix, randomize_at_fsc=0.8, randomize_at_A=-1.0):
    """Shell from which phases are randomised (RELION's ``randomize_at``).

    ``int(angpix·box / randomize_at_A)`` when ``randomize_at_A > 0``, else the first shell
    ``i > 0`` where ``fsc_unmasked`` drops below ``randomize_at_fsc``; -1 if never.
    """
    if randomize_at_A > 0:
        return int(angpix * box / randomize_at_A)
    below = np.flatnonzero(np.asarray(fsc_unmasked)[1:] < randomize_at_fsc)
    return int(below[0]) + 1 if below.size else -1


def fix_origin(curve):
    """RELION sets a non-positive FSC at shell 0 to 1 ("FSC at origin becomes -1")."""
    out = np.array(curve, dtype=np.float64)
    if out.size and out[0] <= 0:
        out[0] = 1.0
    return out


def corrected_fsc(fsc_masked, fsc_random, randomize_at):
    """Phase-randomisation corrected FSC (Chen et al. 2013, RELION's ``calculateFSCtrue``).

    ``FSC_masked`` for shells ``i < randomize_at + 2``, else
    ``(FSC_masked - FSC_rand) / (1 - FSC_rand)``.
    """
    fm = np.asarray(fsc_masked, dtype=np.float64)
    fr = np.asarray(fsc_random, dtype=np.float64)
    out = fm.copy()
    i = np.arange(fm.size)
    hi = i >= randomize_at + 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out[hi] = (fm[hi] - fr[hi]) / (1.0 - fr[hi])
    return out


def solvent_corrected_fsc(map1, map2, mask, rng, randomize_at_fsc=0.8):
    """Gold-standard FSC of two unregularised half maps inside a solvent mask, corrected by
    phase randomisation (relion_refine ``--solvent_correct_fsc``).

    Phases beyond the first shell where the unmasked FSC drops below ``randomize_at_fsc``
    are randomised in both maps; shells from ``randomize_at + 2`` on become
    ``(FSC_masked − FSC_rand)/(1 − FSC_rand)``, and 0 where ``FSC_rand > FSC_masked``.
    When the unmasked FSC never drops below the threshold it is returned unchanged.

    Returns ``(fsc, fsc_unmasked, randomize_at)``.
    """
    fsc_unmasked = fsc(map1, map2)
    shell = randomisation_shell(fsc_unmasked, map1.shape[0], 1.0, randomize_at_fsc)
    if shell <= 0:
        return fsc_unmasked, fsc_unmasked, -1
    fsc_masked = fsc(map1 * mask, map2 * mask)
    r1 = randomize_phases_beyond(map1, shell, rng)
    r2 = randomize_phases_beyond(map2, shell, rng)
    fsc_random = fsc(r1 * mask, r2 * mask)
    out = corrected_fsc(fsc_masked, fsc_random, shell)
    hi = (np.arange(out.size) >= shell + 2) & (fsc_random > fsc_masked)
    out[hi] = 0.0
    return out, fsc_unmasked, shell


def part_fsc(fsc_unmasked, fraction):
    """cisTEM-like part FSC: ``f·FSC / (1 + (f - 1)·FSC)``."""
    f = np.asarray(fsc_unmasked, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fraction * f / (1.0 + (fraction - 1.0) * f)


def resolution_shell(curve, threshold=0.143):
    """Last shell before ``curve`` first drops below ``threshold`` (0 if it starts below)."""
    c = np.asarray(curve)
    below = np.flatnonzero(c < threshold)
    if below.size == 0:
        return c.size - 1
    return max(int(below[0]) - 1, 0)


def fractional_resolution_shell(curve, shell, threshold=0.143):
    """Linear interpolation of the threshold crossing after ``shell`` (RELION ``--interpolate``)."""
    c = np.asarray(curve, dtype=np.float64)
    if shell >= c.size - 1:
        return float(shell)
    v0 = c[shell] - threshold
    v1 = c[shell + 1] - threshold
    if v0 == v1:
        return float(shell)
    return shell + v0 / (v0 - v1)


def shell_resolution(box, angpix, shell):
    """Resolution (Å) of shell ``i``: ``box·angpix / i`` (999 for shell 0)."""
    return box * angpix / shell if shell > 0 else 999.0
