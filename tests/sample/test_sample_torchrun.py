"""`torchrun ... -m avgkit sample`: ranks take disjoint shards, rank 0 merges the same npz."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import numpy as np


def test_two_ranks_split_shards_and_match_one_process(toy_run, tmp_path, cli):
    common = ["sample", str(toy_run), "--classes", "0-5", "--per-class", "1", "--batch-size", "2", "--device", "cpu",
              "--no-png"]
    assert cli(*common, "--quiet", "--out", str(tmp_path / "one"))[0] == 0
    installed = ",".join(ep.name for ep in metadata.entry_points(group="avgkit"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "AVGKIT_DISABLE_PLUGINS": installed}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "avgkit",
         *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 6 images in 3 shards of 2: rank 0 samples shards 0 and 2, rank 1 shard 1
    assert "rank 0: 2/4 images" in proc.stderr and "rank 1: 2/2 images" in proc.stderr
    one = np.load(tmp_path / "one" / "samples.npz")
    two = np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
