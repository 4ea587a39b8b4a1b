"""Atomic writes and checked reads."""

import os

import numpy as np
import pytest

from sparsefab.compress import fileio
from sparsefab.compress.errors import SparsefabError


def test_save_and_load_round_trip(tmp_path):
    a = np.arange(12, dtype=np.int8).reshape(3, 4)
    fileio.save_npy(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(fileio.load_npy(tmp_path / "a.npy"), a)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]  # no temp file left


def test_written_file_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.atomic_write_bytes(tmp_path / "x.bin", b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        fileio.atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(SparsefabError, match="does not exist"):
        fileio.atomic_write_bytes(tmp_path / "nope" / "x.bin", b"")


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", b"PK\x03\x04not a zip"])
def test_bad_npy_is_one_line(tmp_path, content):
    p = tmp_path / "bad.npy"
    p.write_bytes(content)
    with pytest.raises(SparsefabError) as exc:
        fileio.load_npy(p)
    assert "\n" not in str(exc.value)


def test_pickled_object_array_is_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SparsefabError, match="not a valid .npy"):
        fileio.load_npy(p)


def test_missing_and_folder_inputs(tmp_path):
    with pytest.raises(SparsefabError, match="not found"):
        fileio.read_bytes(tmp_path / "none.npy")
    with pytest.raises(SparsefabError, match="is a folder"):
        fileio.read_bytes(tmp_path)


def test_check_finite_names_position():
    a = np.zeros((2, 3), dtype=np.float32)
    fileio.check_finite(a, "w")
    a[1, 2] = np.inf
    with pytest.raises(SparsefabError, match=r"index \(1, 2\)"):
        fileio.check_finite(a, "w")
    fileio.check_finite(np.array([1, 2], dtype=np.int8), "codes")  # integers are always finite
