"""one_blas_thread: numpy's OpenBLAS runs on one thread inside, and gets its count back."""
import numpy as np
import pytest

from edgec.runtime_emu.blas import _openblas, one_blas_thread


def test_one_blas_thread_sets_and_restores():
    fns = _openblas()
    if fns is None:
        pytest.skip("numpy does not use a findable OpenBLAS here")
    get, set_ = fns
    before = get()
    set_(2)
    try:
        with pytest.raises(RuntimeError):
            with one_blas_thread():
                assert get() == 1
                a = np.arange(64.0).reshape(8, 8)
                assert (a @ a)[0, 0] == sum(i * 8 * i for i in range(8))
                raise RuntimeError("the count comes back on errors too")
        assert get() == 2
    finally:
        set_(before)
