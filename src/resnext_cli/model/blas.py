"""numpy's BLAS on one thread, for matrix products too small to share out.

Split over BLAS's own threads such a product takes a millisecond less on an idle machine,
but those threads spin waiting for more work: beside OpenVINO's threads on the same cores
that cost a quarter of classify's throughput (resnext50 in bf16, batch 8: 230 ms a batch
instead of 175), and on a busy machine the learned head's fit took 30 times longer (0.61 s
instead of 0.02 for 1,000 images x 10 classes).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_found: list[tuple[int, Any]] = []  # (Python modules loaded then, threadpoolctl's controller)


def _controller() -> Any:
    """The BLAS libraries loaded now (threadpoolctl), looked for again (about a millisecond)
    only after Python has imported more modules: one can bring a BLAS of its own (scipy
    does, which NNCF imports), and a block must limit that one too."""
    from threadpoolctl import ThreadpoolController

    loaded = len(sys.modules)
    if not _found or _found[0][0] != loaded:
        _found[:] = [(loaded, ThreadpoolController())]
    return _found[0][1]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block's numpy matrix products on one BLAS thread."""
    with _controller().limit(limits=1, user_api="blas"):
        yield
