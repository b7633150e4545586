"""model/blas.py: numpy's BLAS on one thread inside the block, as it was after it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from resnext_cli.model.blas import one_thread


def blas_threads() -> list[int]:
    """What each BLAS library numpy loaded says it uses now (threadpoolctl's own reading)."""
    np.ones(1) @ np.ones(1)  # numpy's BLAS is loaded
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def three_threads() -> Iterator[None]:
    """Outside the block: three threads, whatever this machine's default (or a
    mutation run's OMP_NUM_THREADS=1) would be, so 'one inside' is a change to see."""
    with threadpool_limits(limits=3, user_api="blas"):
        assert blas_threads() and set(blas_threads()) == {3}
        yield


@pytest.mark.usefixtures("three_threads")
def test_one_thread_inside_the_block_and_the_old_count_after() -> None:
    with one_thread():
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {3}


@pytest.mark.usefixtures("three_threads")
def test_the_old_count_comes_back_when_the_block_raises() -> None:
    with pytest.raises(KeyError, match="boom"), one_thread():
        raise KeyError("boom")
    assert set(blas_threads()) == {3}


@pytest.mark.usefixtures("three_threads")
def test_nested_blocks_restore_in_turn() -> None:
    with one_thread():
        with one_thread():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {3}


@pytest.mark.usefixtures("three_threads")
def test_products_inside_the_block_equal_those_outside() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 48)), rng.standard_normal((48, 32))
    expected = np.einsum("ik,kj->ij", a, b)  # no BLAS: an independent product
    with one_thread():
        np.testing.assert_allclose(a @ b, expected, rtol=1e-12, atol=1e-12)


def test_openmp_pools_keep_their_threads() -> None:
    # torch's (and OpenVINO's) OpenMP threads run the network: the block limits BLAS alone.
    import torch

    torch.ones(1)  # torch's OpenMP runtime is loaded
    with threadpool_limits(limits=3):
        pools = [p for p in threadpool_info() if p["user_api"] == "openmp"]
        assert pools, "no OpenMP runtime is loaded"
        with one_thread():
            inside = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
            assert set(blas_threads()) == {1}
        assert inside and set(inside) == {3}


def test_a_blas_loaded_after_a_block_is_limited_by_the_next(tmp_path) -> None:
    """scipy brings a BLAS of its own (NNCF imports it): a block after that import limits
    it too, not only the libraries there were at the first block. In a fresh process, as
    the suite may have imported scipy already."""
    pytest.importorskip("scipy.linalg")
    import json
    import subprocess
    import sys

    script = (
        "import json\n"
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "from resnext_cli.model.blas import one_thread\n"
        "def blas():\n"
        "    return [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "np.ones(1) @ np.ones(1)\n"
        "with one_thread():\n"
        "    first = blas()\n"
        "import scipy.linalg\n"
        "with threadpool_limits(limits=3, user_api='blas'):\n"
        "    outside = blas()\n"
        "    with one_thread():\n"
        "        inside = blas()\n"
        "print(json.dumps([first, outside, inside]))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first, outside, inside = json.loads(run.stdout)
    if len(outside) == len(first):
        pytest.skip("scipy uses numpy's BLAS here")
    assert first == [1] and outside == [3, 3] and inside == [1, 1]
