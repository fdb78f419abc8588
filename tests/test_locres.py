"""sta_local_resolution (= relion_postprocess --locres) on half maps with known, spatially
varying noise."""

import math

import mrcfile
import numpy as np
import pytest

from sta.commands import local_resolution, postprocess
from sta.io.mrc import write_mrc
from sta.io.star import read_star
from sta.kernels import filters
from sta.workflows.locres import window_centres

BOX, ANGPIX = 32, 4.0


def _truth(rng):
    pts = rng.uniform(-1, 1, (2000, 3))
    pts = pts[np.linalg.norm(pts, axis=1) < 1][:600] * (0.4 * BOX) + BOX // 2
    vol = np.zeros((BOX,) * 3)
    idx = np.rint(pts).astype(int)
    np.add.at(vol, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)
    spec = np.fft.rfftn(vol)
    filters.bfactor_spectrum(spec, BOX, 800.0, ANGPIX)
    return np.fft.irfftn(spec, s=vol.shape, axes=(0, 1, 2))


@pytest.fixture
def noisy_halves(tmp_path):
    """Half maps whose noise is 8x stronger for x >= BOX/2 than for x < BOX/2."""
    rng = np.random.default_rng(1)
    truth = _truth(rng)
    x = np.arange(BOX)[None, None, :]
    envelope = np.where(x < BOX // 2, 0.5, 4.0) * truth.std()
    for k in (1, 2):
        write_mrc(tmp_path / f"h_half{k}.mrc", truth + rng.normal(0, 1, truth.shape) * envelope, ANGPIX)
    write_mrc(tmp_path / "mask.mrc", filters.raised_cosine_sphere((BOX,) * 3, 11, 13), ANGPIX)
    return tmp_path


def test_local_resolution_follows_the_noise(noisy_halves, capsys):
    root = noisy_halves / "LocRes" / "relion"
    assert local_resolution.main(["--i", str(noisy_halves / "h_half1.mrc"), "--o", str(root), "--angpix", "4",
                                  "--adhoc_bfac", "-100", "--mask", str(noisy_halves / "mask.mrc")]) == 0
    captured = capsys.readouterr()
    assert "--mask is used only to make a histogram" in captured.err
    with mrcfile.open(f"{root}_locres.mrc") as m:
        locres = m.data.astype(np.float64)
        assert m.voxel_size.x == pytest.approx(ANGPIX)
    with mrcfile.open(f"{root}_locres_filtered.mrc") as m:
        filtered = m.data.astype(np.float64)
    z, y, x = np.indices(locres.shape)
    c = BOX // 2
    inner = (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 < (0.35 * BOX) ** 2
    left = np.median(locres[inner & (x < c - 2)])
    right = np.median(locres[inner & (x > c + 2)])
    with capsys.disabled():
        print(f"\nlocres: median local resolution {left:.2f} Å (low noise) vs {right:.2f} Å (8x noise)")
    shell_left, shell_right = BOX * ANGPIX / left, BOX * ANGPIX / right
    assert shell_left - shell_right >= 2  # at least two shells better where the noise is low
    covered = locres > 0
    assert locres[covered].min() >= 2 * ANGPIX - 1e-6 and locres.max() <= 50.0 + 1e-6
    assert np.all(np.isfinite(filtered)) and filtered[inner].std() > 0
    tables = read_star(f"{root}_locres_fscs.star")
    centres = window_centres(BOX, round(25 / ANGPIX), round(12.5 / ANGPIX))
    assert len(tables) == len(centres) and all(len(t) == BOX // 2 + 1 for t in tables.values())
    assert (noisy_halves / "LocRes" / "relion_histogram.png").stat().st_size > 0
    assert (noisy_halves / "LocRes" / "histogram.pdf").read_bytes().startswith(b"%PDF")


def test_postprocess_locres_delegates(noisy_halves):
    common = ["--i", str(noisy_halves / "h_half1.mrc"), "--angpix", "4", "--adhoc_bfac", "-100",
              "--locres_sampling", "30"]
    assert local_resolution.main(common + ["--o", str(noisy_halves / "a" / "x")]) == 0
    assert postprocess.main(common + ["--locres", "--o", str(noisy_halves / "b" / "x")]) == 0
    for suffix in ("_locres.mrc", "_locres_filtered.mrc"):
        a = mrcfile.read(noisy_halves / "a" / f"x{suffix}")
        b = mrcfile.read(noisy_halves / "b" / f"x{suffix}")
        np.testing.assert_array_equal(a, b)


def test_window_grid_is_relions():
    # RELION: points from -box/2 every step voxels with distance < box/2 - maskrad
    step, maskrad = 6, 3
    centres = window_centres(BOX, step, maskrad)
    coords = range(-(BOX // 2), BOX // 2, step)
    brute = [(z, y, x) for z in coords for y in coords for x in coords
             if math.sqrt(z * z + y * y + x * x) < BOX // 2 - maskrad]
    assert centres == brute and (0, 0, 0) not in centres and (-16, -16, -16) not in centres


def test_locres_errors_one_line(noisy_halves, capsys):
    assert postprocess.main(["--i", str(noisy_halves / "h_half1.mrc"), "--locres", "--auto_bfac",
                             "--angpix", "4", "--o", str(noisy_halves / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR:") and "--adhoc_bfac" in err[0]
    assert local_resolution.main(["--i", str(noisy_halves / "nothing_half1.mrc"), "--angpix", "4",
                                  "--o", str(noisy_halves / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR:") and "nothing_half1.mrc" in err[0]
