"""scripts/gpu_check.sh, the check a lent GPU host runs, passes its CPU dry run at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .server_utils import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_prints_its_table():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| measurement | setting | result |"
    kinds = [row.split(" | ")[0] for row in rows[2:]]
    assert kinds[0] == "| serve (bundled MNIST model)" and "done" in rows[2]
    assert kinds[1].startswith("| sampling, tiny UNet") and kinds[2].startswith("| training, tiny")
    assert kinds[3].startswith("| MNIST recipe") and "bits_per_dim" in rows[5]
