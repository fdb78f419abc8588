"""Ground-truth densities for simulation: atomic models via gemmi, or a chiral phantom.

Maps are (z, y, x) float arrays with the molecule centred on voxel ``box//2`` and
protein positive.
"""

import bz2
import os

import numpy as np

from sta.errors import InputError
from sta.kernels.filters import raised_cosine_sphere
from sta.kernels.grid import cosine_edge, freq_radius


def read_atoms(path):
    """Atom positions (Å, (n, 3) as x, y, z) and atomic numbers from a PDB/mmCIF file via gemmi."""
    import gemmi

    if not os.path.exists(path):
        raise InputError(f"{path}: atomic model not found")
    try:
        if path.endswith(".bz2"):
            with bz2.open(path, "rt") as fh:
                text = fh.read()
            st = gemmi.read_pdb_string(text) if ".pdb" in path else gemmi.cif.read_string(text)
            if not isinstance(st, gemmi.Structure):
                st = gemmi.make_structure_from_block(st.sole_block())
        else:
            st = gemmi.read_structure(path)
    except Exception as err:  # gemmi raises RuntimeError/ValueError on bad files
        raise InputError(f"{path}: cannot read atomic model ({err})") from err
    pos, z = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if atom.element.atomic_number > 1:
                    pos.append(atom.pos.tolist())
                    z.append(atom.element.atomic_number)
    if not pos:
        raise InputError(f"{path}: atomic model has no atoms")
    return np.asarray(pos, dtype=float), np.asarray(z, dtype=float)


def splat_points(points_xyz, weights, box, pixel_size, centre_xyz):
    """Trilinear spreading of weighted points into a (box, box, box) grid.

    ``centre_xyz`` (Å) lands on voxel ``box//2``.
    """
    vol = np.zeros((box, box, box))
    g = (np.asarray(points_xyz) - np.asarray(centre_xyz)) / pixel_size + box // 2
    i0 = np.floor(g).astype(int)
    f = g - i0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (weights * np.where(dx, f[:, 0], 1 - f[:, 0]) * np.where(dy, f[:, 1], 1 - f[:, 1])
                     * np.where(dz, f[:, 2], 1 - f[:, 2]))
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (ix >= 0) & (ix < box) & (iy >= 0) & (iy < box) & (iz >= 0) & (iz < box)
                np.add.at(vol, (iz[ok], iy[ok], ix[ok]), w[ok])
    return vol


def lowpass(volume, pixel_size, resolution, edge_shells=2.0):
    """Raised-cosine low-pass at ``resolution`` Å (edge ``edge_shells`` wide)."""
    box = volume.shape[0]
    shell = box * pixel_size / resolution
    filt = cosine_edge(freq_radius(volume.shape), shell - edge_shells / 2, shell + edge_shells / 2)
    ft = np.fft.rfftn(np.fft.ifftshift(volume))
    return np.fft.fftshift(np.fft.irfftn(ft * filt, s=volume.shape, axes=(0, 1, 2)))


def symmetrize(volume, group):
    """Average ``volume`` over the rotations of a symmetry group (cubic interpolation)."""
    from scipy.ndimage import affine_transform

    box = volume.shape[0]
    c = np.full(3, box // 2, dtype=float)
    acc = np.zeros_like(volume)
    for m in group.matrices:
        # volume axes are (z, y, x): permute the xyz matrix accordingly
        mz = m[::-1, ::-1]
        acc += affine_transform(volume, mz, offset=c - mz @ c, order=3, mode="constant")
    return acc / len(group.matrices)


def atomic_model_map(path, box, pixel_size, resolution, centre="auto", symmetry=None, radius=None):
    """Density of an atomic model: atoms weighted by atomic number, band-limited.

    Parameters
    ----------
    path : str
        PDB or mmCIF (optionally .bz2).
    box : int
        Output box (voxels).
    pixel_size : float
        Å per voxel.
    resolution : float
        Low-pass cut-off (Å); use 2·pixel_size for a map band-limited at Nyquist.
    centre : "auto" or (3,) Å
        Model point put at the box centre ("auto" = centre of mass).
    symmetry : SymmetryGroup or None
        Symmetrise about the box centre (the model's symmetry axis must be on z).
    radius : float or None
        Soft spherical support radius (Å); default: box/2 - 3 voxels.

    Returns
    -------
    ndarray (box, box, box), max value 1.
    """
    pos, z = read_atoms(path)
    c = pos.mean(axis=0) if isinstance(centre, str) else np.asarray(centre, dtype=float)
    vol = splat_points(pos, z, box, pixel_size, c)
    vol = lowpass(vol, pixel_size, resolution)
    if symmetry is not None and len(symmetry.matrices) > 1:
        vol = symmetrize(vol, symmetry)
    rad = (box / 2 - 3) if radius is None else radius / pixel_size
    vol *= raised_cosine_sphere((box,) * 3, rad - 2, rad + 1)
    vol = lowpass(vol, pixel_size, resolution)
    return vol / np.abs(vol).max()


def chiral_phantom(box, pixel_size, resolution=None):
    """Built-in chiral phantom: Gaussian blobs on a left-handed helical arrangement.

    Blobs of different size and weight make every orientation and the hand unique.
    """
    rng = np.random.default_rng(12345)
    extent = 0.2 * box * pixel_size
    t = np.linspace(0, 1.6 * np.pi, 9)
    pts = np.stack([extent * np.cos(t), extent * np.sin(t), extent * (t / t[-1] - 0.5) * 1.2], 1)
    pts = np.vstack([pts, [[0.5 * extent, -0.4 * extent, 0.45 * extent]]])
    weights = np.linspace(1.0, 2.0, len(pts))
    sig = np.full(len(pts), 2.5 * pixel_size) * (1 + 0.3 * rng.random(len(pts)))
    c = box // 2
    z, y, x = np.ogrid[:box, :box, :box]
    vol = np.zeros((box, box, box))
    for p, w, s in zip(pts, weights, sig):
        px, py, pz = p / pixel_size + c
        vol += w * np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) * pixel_size ** 2 / (2 * s * s))
    if resolution:
        vol = lowpass(vol, pixel_size, resolution)
    vol *= raised_cosine_sphere((box,) * 3, box / 2 - 4, box / 2 - 1)
    return vol / np.abs(vol).max()
