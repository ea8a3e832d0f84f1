"""Evaluation tests keep every cache (weights, reference statistics) in a temporary home.

They also run torch and the BLAS library on one thread: their small convolutions and
2048 x 2048 decompositions gain little from a second thread, and on a busy machine
extra threads slow them down several times over. Both settings are restored after
each module.
"""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="session")
def eval_home(tmp_path_factory: pytest.TempPathFactory):
    """One home for the whole session, so the digits CNN is trained once."""
    return tmp_path_factory.mktemp("avgkit_home")


@pytest.fixture(scope="module", autouse=True)
def isolated_eval_environment(eval_home):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1):
        patch.setenv("AVGKIT_HOME", str(eval_home))
        yield eval_home
    torch.set_num_threads(threads)
