"""Run a command under torchrun (2 CPU ranks) in its own process group, so that a hang kills every worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys


def run_torchrun(args: list[str], *, nproc: int = 2, timeout: float = 300, env: dict | None = None):
    """`python -m torch.distributed.run --standalone --nproc_per_node N ARGS...`; (returncode, stdout, stderr)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr
