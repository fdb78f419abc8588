"""MRC reading and writing: float32/float16, stacks, pixel size, clear errors."""

import mrcfile
import numpy as np
import pytest

from sta.errors import InputError
from sta.io.mrc import read_header, read_mrc, read_stack_images, write_mrc


def test_float32_and_float16_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 10, 12)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", vol, 3.5)
    data, px = read_mrc(tmp_path / "v.mrc")
    np.testing.assert_array_equal(data, vol)
    assert px == pytest.approx(3.5)
    write_mrc(tmp_path / "h.mrcs", vol, 2.0, float16=True)
    shape, px, mode = read_header(tmp_path / "h.mrcs")
    assert shape == (8, 10, 12) and mode == 12 and px == pytest.approx(2.0)
    with mrcfile.open(tmp_path / "h.mrcs") as m:
        assert m.is_image_stack()
    data = read_stack_images(tmp_path / "h.mrcs", [1, 3])
    np.testing.assert_allclose(data, vol[[1, 3]], rtol=1e-3, atol=1e-3)
    assert not list(tmp_path.glob(".*part*"))  # no temporary files left


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.mrc: file not found"):
        read_mrc(tmp_path / "missing.mrc")
    bad = tmp_path / "corrupt.mrc"
    bad.write_bytes(b"this is not an MRC file" * 10)
    with pytest.raises(InputError, match="corrupt.mrc: not a readable MRC file"):
        read_mrc(bad)
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    write_mrc(tmp_path / "nan.mrc", nan, 1.0)
    with pytest.raises(InputError, match="NaN"):
        read_mrc(tmp_path / "nan.mrc")
    write_mrc(tmp_path / "s.mrcs", np.zeros((3, 4, 4)), 1.0)
    with pytest.raises(InputError, match="holds 3 images"):
        read_stack_images(tmp_path / "s.mrcs", [5])
