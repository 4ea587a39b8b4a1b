"""The shared one-line parameter check."""

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError, check_int


def test_accepts_python_and_numpy_integers_in_range():
    assert check_int("lanes", 4, 1, 16) == 4
    assert check_int("lanes", np.int64(16), 1, 16) == 16
    assert type(check_int("lanes", np.uint8(1), 1, 16)) is int


@pytest.mark.parametrize("bad", [0, 17, True, 4.0, "4", None, np.float64(4)])
def test_rejects_with_the_name_value_and_range(bad):
    with pytest.raises(SparsefabError) as exc:
        check_int("lanes", bad, 1, 16)
    assert str(exc.value) == f"lanes={bad!r}: expected an integer in [1, 16]"


def test_owner_prefix():
    with pytest.raises(SparsefabError, match=r"^SpmvConfig: block=3, expected an integer in \[8, 64\]$"):
        check_int("block", 3, 8, 64, owner="SpmvConfig")
