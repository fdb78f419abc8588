"""sta_mask_create against RELION's masks (conformance data) and on synthetic maps."""

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from sta.commands.mask_create import main
from sta.io.mrc import write_mrc
from tests.conftest import need, one_error_line

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "relion-reference" / "conformance"

# the README's command lines (program name replaced)
README_COMMANDS = {
    "mask_bin1": "--i Reconstruct/bin1_C6/merged.mrc --o MaskCreate/mask_bin1.mrc --lowpass 15 "
                 "--ini_threshold 1.0 --extend_inimask 3 --width_soft_edge 3 --j 2",
    "mask_bin2": "--i Reconstruct/bin2_C6/merged.mrc --o MaskCreate/mask_bin2.mrc --lowpass 15 "
                 "--ini_threshold 0.5 --extend_inimask 2 --width_soft_edge 2 --j 2",
}


def _conformance():
    need(CONFORMANCE / "MaskCreate")
    return CONFORMANCE


@pytest.mark.parametrize("name", sorted(README_COMMANDS))
def test_mask_equals_relion(name, tmp_path, monkeypatch, capsys):
    ref_dir = _conformance()
    monkeypatch.chdir(tmp_path)
    os.symlink(ref_dir / "Reconstruct", "Reconstruct")
    assert main(README_COMMANDS[name].split()) == 0
    with mrcfile.open(tmp_path / "MaskCreate" / f"{name}.mrc") as ours, \
            mrcfile.open(ref_dir / "MaskCreate" / f"{name}.mrc") as ref:
        a, b = ours.data.astype(np.float64), ref.data.astype(np.float64)
        assert ours.voxel_size.x == pytest.approx(ref.voxel_size.x)
        assert ours.header.mode == ref.header.mode == 2
    dice = 2 * np.sum((a > 0.5) & (b > 0.5)) / (np.sum(a > 0.5) + np.sum(b > 0.5))
    max_diff = np.abs(a - b).max()
    # the pixel-size warning goes to stderr as in RELION
    assert "The value in the input image header (= " in capsys.readouterr().err
    with capsys.disabled():
        print(f"\n{name}: Dice {dice:.6f}, max |ours - RELION| {max_diff:.3g}, "
              f"soft voxels {np.sum((b > 0) & (b < 1))}")
    assert dice >= 0.98
    assert max_diff <= 1e-6


def test_denovo_crown(tmp_path, capsys):
    out = tmp_path / "dn.mrc"
    assert main(["--denovo", "--box_size", "32", "--inner_radius", "3", "--outer_radius", "8",
                 "--width_soft_edge", "2", "--center_x", "2", "--o", str(out)]) == 0
    assert "1.00 is set to the output mask" in capsys.readouterr().err
    with mrcfile.open(out) as m:
        data = m.data
        assert m.voxel_size.x == pytest.approx(1.0)
    cz, cy, cx = 16, 16, 18
    assert data[cz, cy, cx] == 0  # inside the inner border
    assert data[cz, cy, cx + 5] == 1
    assert data[cz, cy, cx + 9] == pytest.approx(0.5)  # middle of the outer edge
    assert data[cz, cy, cx + 11] == 0
    assert data[cz, cy, cx + 2] == pytest.approx(0.5)  # middle of the inner edge
    assert main(["--denovo", "--box_size", "16", "--angpix", "2.5", "--o", str(out), "--invert"]) == 0
    with mrcfile.open(out) as m:
        assert m.voxel_size.x == pytest.approx(2.5) and m.data.max() == 0  # all ones, inverted


def _blob_maps(tmp_path):
    z, y, x = np.indices((24, 24, 24))
    a = np.exp(-((x - 9) ** 2 + (y - 12) ** 2 + (z - 12) ** 2) / 8.0)
    b = np.exp(-((x - 12) ** 2 + (y - 12) ** 2 + (z - 12) ** 2) / 8.0)
    write_mrc(tmp_path / "a.mrc", a, 3.0)
    write_mrc(tmp_path / "b.mrc", b, 3.0)
    return a, b


@pytest.mark.parametrize("op, expect", [
    ("--and", lambda a, b: (a > 0.5) & (b > 0.5)),
    ("--or", lambda a, b: (a > 0.5) | (b > 0.5)),
    ("--and_not", lambda a, b: (a > 0.5) & (b < 0.5)),
    ("--or_not", lambda a, b: (a > 0.5) | (b < 0.5)),
])
def test_logical_combinations(op, expect, tmp_path):
    a, b = _blob_maps(tmp_path)
    out = tmp_path / "m.mrc"
    assert main(["--i", str(tmp_path / "a.mrc"), op, str(tmp_path / "b.mrc"), "--ini_threshold", "0.5",
                 "--o", str(out)]) == 0
    with mrcfile.open(out) as m:
        np.testing.assert_array_equal(m.data > 0.5, expect(a, b))
        assert m.voxel_size.x == pytest.approx(3.0)


def test_extend_soft_edge_and_invert(tmp_path):
    a, _ = _blob_maps(tmp_path)
    out = tmp_path / "m.mrc"
    assert main(["--i", str(tmp_path / "a.mrc"), "--ini_threshold", "0.5", "--extend_inimask", "2",
                 "--width_soft_edge", "3", "--invert", "--o", str(out)]) == 0
    with mrcfile.open(out) as m:
        inv = m.data.astype(np.float64)
    mask = 1 - inv
    core = a >= 0.5
    assert np.all(mask[core] == 1)
    assert np.sum(mask == 1) > core.sum()  # extended
    assert 0 < np.sum((mask > 0) & (mask < 1))  # soft edge
    assert mask.min() == 0 and mask.max() == 1


def test_bad_input_one_line(tmp_path, capsys):
    a, _ = _blob_maps(tmp_path)
    write_mrc(tmp_path / "small.mrc", np.zeros((8, 8, 8)), 3.0)
    assert main(["--i", str(tmp_path / "missing.mrc"), "--o", str(tmp_path / "m.mrc")]) == 1
    assert "missing.mrc" in one_error_line(capsys)
    assert main(["--i", str(tmp_path / "a.mrc"), "--and", str(tmp_path / "small.mrc"), "--angpix", "3",
                 "--o", str(tmp_path / "m.mrc")]) == 1
    assert "small.mrc" in one_error_line(capsys)
    assert main(["--denovo", "--o", str(tmp_path / "m.mrc")]) == 1
    assert "--box_size" in one_error_line(capsys)
    assert main(["--o", str(tmp_path / "m.mrc")]) == 1
    assert "--i" in one_error_line(capsys)
