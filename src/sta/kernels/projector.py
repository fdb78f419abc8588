"""Fourier-slice projector (central-slice theorem with trilinear interpolation), against ``xp``.

Convention: :meth:`FourierProjector.project_slices` returns the *unnormalised* 2D DFT
(NumPy ``rfft2`` convention, real-space origin at pixel ``box//2``) of the ray-sum
projection ``Σ_z V`` of the rotated map; :func:`slices_to_images` turns such spectra into
real-space projection images.

A rotation ``B`` (3x3, reference -> image frame) samples the reference at ``B^T k`` for
the image frequency ``k = (kx, ky, 0)`` (spec §2.4/§2.5).
"""

from sta.backend import get_array_module, get_fft


def _sinc2_separable(n, p, xp):
    """sinc²(i/p) along one axis of length n, centred at n//2 (trilinear gridding kernel)."""
    i = (xp.arange(n) - n // 2) / p
    return xp.sinc(i) ** 2


class FourierProjector:
    """Padded 3D Fourier transform of a map, ready for slicing.

    Parameters
    ----------
    volume : (n, n, n) array (z, y, x), origin at voxel ``n//2``
    pad : int
        Padding factor (2 is RELION's default).
    """

    def __init__(self, volume, pad=2):
        xp = get_array_module(volume)
        n = volume.shape[0]
        p = int(pad * n)
        corr = _sinc2_separable(n, p, xp)
        vol = volume / (corr[:, None, None] * corr[None, :, None] * corr[None, None, :])
        big = xp.zeros((p, p, p), dtype=xp.float64)
        o = p // 2 - n // 2
        big[o:o + n, o:o + n, o:o + n] = vol
        self.ft = get_fft(xp).rfftn(xp.fft.ifftshift(big))
        self.n = n
        self.padded = p
        self.xp = xp

    def sample(self, coords):
        """Trilinear sample of the padded FT at (..., 3) coordinates (x, y, z) in padded-grid units."""
        return trilinear_half_complex(self.ft, coords)

    def project_slices(self, matrices, box):
        """Half-grid 2D spectra (…, box, box//2+1) of projections at box ``box``.

        ``matrices`` (..., 3, 3) rotate the reference into the image frame.  The image
        pixel size equals the map pixel size.
        """
        xp = self.xp
        m = xp.asarray(matrices, dtype=float)
        ky = xp.fft.fftfreq(box, 1.0 / box).reshape(-1, 1)
        kx = xp.fft.rfftfreq(box, 1.0 / box).reshape(1, -1)
        scale = self.padded / box
        # reference coordinate = B^T (kx, ky, 0): components B[0,j] kx + B[1,j] ky
        cx = (m[..., 0, 0, None, None] * kx + m[..., 1, 0, None, None] * ky) * scale
        cy = (m[..., 0, 1, None, None] * kx + m[..., 1, 1, None, None] * ky) * scale
        cz = (m[..., 0, 2, None, None] * kx + m[..., 1, 2, None, None] * ky) * scale
        out = self.sample(xp.stack([cx, cy, cz], axis=-1))
        # the padded FT is of a p³ grid: one box-pixel of frequency = scale padded pixels; the
        # unnormalised DFT of the b-box projection equals the padded DFT at these points.
        return out


def trilinear_half_complex(ft, coords):
    """Trilinear interpolation of a Hermitian half-grid FT (shape (p, p, p//2+1)).

    ``coords`` (..., 3) are (x, y, z) frequencies in grid units; points with x < 0 use the
    conjugate at −coords.  Frequencies beyond the grid return 0.
    """
    xp = get_array_module(ft)
    p = ft.shape[0]
    x, y, z = coords[..., 0], coords[..., 1], coords[..., 2]
    neg = x < 0
    x = xp.where(neg, -x, x)
    y = xp.where(neg, -y, y)
    z = xp.where(neg, -z, z)
    x0 = xp.floor(x).astype(xp.int64)
    y0 = xp.floor(y).astype(xp.int64)
    z0 = xp.floor(z).astype(xp.int64)
    fx, fy, fz = x - x0, y - y0, z - z0
    half = p // 2
    inside = (x0 + 1 < ft.shape[2]) & (xp.abs(y) < half - 1) & (xp.abs(z) < half - 1)
    out = xp.zeros(x.shape, dtype=ft.dtype)
    for dz in (0, 1):
        wz = fz if dz else 1 - fz
        iz = (z0 + dz) % p
        for dy in (0, 1):
            wy = fy if dy else 1 - fy
            iy = (y0 + dy) % p
            for dx in (0, 1):
                wx = fx if dx else 1 - fx
                ix = xp.minimum(x0 + dx, ft.shape[2] - 1)
                out = out + (wx * wy * wz) * ft[iz, iy, ix]
    out = xp.where(inside, out, 0)
    return xp.where(neg, xp.conj(out), out)


def slices_to_images(spectra, box):
    """Real-space projection images (…, box, box) from unnormalised half spectra, origin at box//2."""
    xp = get_array_module(spectra)
    img = get_fft(xp).irfftn(spectra, s=(box, box), axes=(-2, -1))
    return xp.fft.fftshift(img, axes=(-2, -1))
