"""Symmetry operators against RELION's own printout (``--print_symmetry_ops``)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from sta.errors import InputError
from sta.geometry.euler import euler_to_matrix, matrix_to_euler
from sta.geometry.symmetry import SymmetryGroup, parse_symmetry
from tests.conftest import need

SYMOPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "relion-reference" / "symops"
REFERENCE_GROUPS = ["C6", "D7", "T", "O", "I1", "I2"]


def _read_symops(name):
    """Matrices, printed strings and Euler angles of a ``--print_symmetry_ops`` file."""
    need(SYMOPS)
    lines = (SYMOPS / f"symops_{name}.txt").read_text().splitlines()
    mats, texts, eulers = [], [], []
    for i, line in enumerate(lines):
        if re.match(r"\s*R\(\d+\)=", line):
            rows = [lines[i + k].split() for k in (1, 2, 3)]
            texts.append(rows)
            mats.append(np.array(rows, dtype=float))
            nxt = lines[i + 4] if i + 4 < len(lines) else ""
            eulers.append([float(v) for v in nxt.split(":")[1].split()] if "Euler" in nxt else None)
    return np.array(mats), texts, eulers


def _printed_tolerance(text):
    """Half a unit in the last printed significant digit of a float32 value, plus float32 rounding."""
    value = float(text)
    if value == 0.0:
        return 1e-6  # RELION zeroes |x| < 1e-6 before printing
    exponent = math.floor(math.log10(abs(value)))
    return 0.5 * 10.0 ** (exponent - _significant_digits(text) + 1) + 1e-7


@pytest.mark.parametrize("name", REFERENCE_GROUPS)
def test_matrices_equal_relion_printout(name):
    ref, texts, _ = _read_symops(name)
    ours = parse_symmetry(name).matrices
    assert ours.shape == ref.shape
    # every printed matrix has exactly one match among ours (set equality, any order)
    for k, (mat, rows) in enumerate(zip(ref, texts)):
        tol = np.array([[_printed_tolerance(t) for t in row] for row in rows])
        hits = [j for j in range(len(ours)) if np.all(np.abs(ours[j] - mat) <= tol)]
        assert len(hits) == 1, (name, k, hits)
    # and we even reproduce RELION's order (identity first, then as printed)
    assert np.abs(ours - ref).max() < 5e-6
    np.testing.assert_allclose(ours[0], np.eye(3))


@pytest.mark.parametrize("name", REFERENCE_GROUPS)
def test_matrices_equal_relion_to_1e6_where_printed_with_8_digits(name):
    ref, texts, _ = _read_symops(name)
    ours = parse_symmetry(name).matrices
    precise = np.array([[[_significant_digits(t) >= 7 or float(t) == 0.0 for t in row] for row in rows]
                        for rows in texts])
    assert precise.sum() >= 9  # at least the identity
    assert np.abs(ours - ref)[precise].max() < 1e-6


def _significant_digits(text):
    return len(text.lstrip("-").split("e")[0].replace(".", "").lstrip("0"))


@pytest.mark.parametrize("name", ["C6", "D7", "T", "O"])
def test_printed_euler_angles_describe_our_matrices(name):
    _, _, eulers = _read_symops(name)
    ours = parse_symmetry(name).matrices
    for k, angles in enumerate(eulers):
        if angles is None:
            continue
        np.testing.assert_allclose(euler_to_matrix(*angles), ours[k], atol=2e-5)
        back = euler_to_matrix(*matrix_to_euler(ours[k]))
        np.testing.assert_allclose(back, ours[k], atol=1e-6)  # T's generators carry 6 digits


@pytest.mark.parametrize("name, order", [("C1", 1), ("C6", 6), ("D7", 14), ("T", 12), ("O", 24),
                                         ("I", 60), ("I1", 60), ("I2", 60), ("I3", 60), ("I4", 60),
                                         ("D1", 2), ("C12", 12), ("D12", 24)])
def test_rotation_group_orders_closure_and_determinants(name, order):
    g = parse_symmetry(name)
    assert g.order == order and g.matrices.shape == (order, 3, 3)
    assert g.is_point_group_rotation_only
    np.testing.assert_allclose(np.linalg.det(g.matrices), 1.0, atol=1e-6)
    gram = g.matrices @ np.swapaxes(g.matrices, 1, 2)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), gram.shape), atol=1e-6)
    _assert_closed(g)


@pytest.mark.parametrize("name, order", [("Ci", 2), ("Cs", 2), ("C3v", 6), ("C4h", 8), ("S4", 4), ("D2v", 8),
                                         ("D3h", 12), ("Td", 24), ("Th", 24), ("Oh", 48), ("Ih", 120),
                                         ("I1h", 120), ("I3h", 120), ("I4h", 120)])
def test_improper_group_orders(name, order):
    g = parse_symmetry(name)
    assert g.order == order
    assert not g.is_point_group_rotation_only
    np.testing.assert_allclose(np.abs(np.linalg.det(g.matrices)), 1.0, atol=1e-6)
    _assert_closed(g)


def _assert_closed(g):
    flat = g.matrices.reshape(g.order, 9)
    products = np.einsum("aij,bjk->abik", g.matrices, g.matrices).reshape(-1, 9)
    dist = np.abs(products[:, None, :] - flat[None, :, :]).max(axis=2).min(axis=1)
    assert dist.max() < 1e-5


def test_cyclic_generator_is_transposed_active_rotation():
    g = parse_symmetry("C4")
    c = math.cos(math.radians(90))
    active = np.array([[c, -1.0, 0.0], [1.0, c, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(g.matrices[1], active.T, atol=1e-12)


def test_names_are_case_insensitive_and_canonical():
    assert parse_symmetry("c6").name == "C6"
    assert parse_symmetry("d7").order == 14
    assert parse_symmetry("i").name == "I" and parse_symmetry("i").order == 60
    assert parse_symmetry(" oh ").name == "Oh"
    g = parse_symmetry("I2")
    assert parse_symmetry(g) is g
    np.testing.assert_allclose(parse_symmetry("I").matrices, parse_symmetry("I2").matrices)


@pytest.mark.parametrize("bad", ["X5", "C0", "I5", "", "S3", "C100", "D", "Q", "I5h", "C6x"])
def test_unknown_names_raise_input_error(bad):
    with pytest.raises(InputError) as err:
        parse_symmetry(bad)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"unknown symmetry group {bad!r} (")
    assert "C<n>, D<n>, T, O, I, I1-I4" in message


def test_symmetry_file_matches_named_group(tmp_path):
    path = tmp_path / "my_d2.sym"
    path.write_text("# D2 by hand\nrot_axis 2 0 0 1\nrot_axis 2 1 0 0\n")
    g = parse_symmetry(str(path))
    ref = parse_symmetry("D2")
    assert isinstance(g, SymmetryGroup) and g.order == 4
    np.testing.assert_allclose(g.matrices, ref.matrices, atol=1e-12)


def test_bad_symmetry_file_names_the_line(tmp_path):
    path = tmp_path / "bad.sym"
    path.write_text("rot_axis 2 0 0 1\nscrew_axis 3 0 0 1\n")
    with pytest.raises(InputError, match="bad.sym, line 2"):
        parse_symmetry(str(path))


def test_inversion_carries_relion_left_matrix():
    g = parse_symmetry("Ci")
    np.testing.assert_allclose(g.matrices[1], -np.eye(3))
    np.testing.assert_allclose(g.left_matrices[1], np.diag([1.0, 1.0, -1.0]))
    mates = g.direction_mates(np.array([0.6, 0.0, 0.8]))
    np.testing.assert_allclose(mates, [[0.6, 0.0, 0.8], [-0.6, 0.0, 0.8]])
