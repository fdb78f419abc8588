"""GPU device assignment from RELION's --gpu strings (pure logic, no GPU needed)."""

import pytest

from sta.backend.devices import assign_device, parse_gpu_ids
from sta.errors import InputError


def test_parse_relion_syntax():
    assert parse_gpu_ids("") == [] and parse_gpu_ids(None) == [] and parse_gpu_ids("''") == []
    assert parse_gpu_ids("0:1") == [[0], [1]]
    assert parse_gpu_ids("0,1:2,3") == [[0, 1], [2, 3]]
    assert parse_gpu_ids("3") == [[3]]


def test_round_robin_by_local_rank():
    # py2rely: --gpu '' with 4 followers on a 4-GPU node -> one device each
    assert [assign_device("", r, 4) for r in range(4)] == [0, 1, 2, 3]
    # more followers than devices share them
    assert [assign_device("", r, 2) for r in range(5)] == [0, 1, 0, 1, 0]
    # listed devices, extended by modulus as RELION does
    assert [assign_device("0:1", r, 4) for r in range(4)] == [0, 1, 0, 1]
    assert [assign_device("2,3:1", r, 4) for r in range(3)] == [2, 1, 2]


def test_bad_device_strings():
    for text, n, msg in (("0:x", 2, "not a device number"), ("0::1", 2, "empty device list"),
                         ("4", 2, "device 4 does not exist"), ("", 0, "no CUDA device")):
        with pytest.raises(InputError, match=msg):
            assign_device(text, 0, n)
