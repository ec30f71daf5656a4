"""Running the real DeepSpeed engine on a CPU, without its JIT op builds (notes/deepspeed_cpu.md).

- ``deepspeed.comm.torch.TorchBackend`` JIT-compiles the shm op on every first dist init
  (40-100 s with g++/ninja); only ``inference_all_reduce`` uses it, so it is patched out.
- Without RANK/WORLD_SIZE/MASTER_ADDR/LOCAL_RANK DeepSpeed tries MPI discovery (mpi4py).
- A FileStore init needs no TCP port, so parallel test processes cannot collide.
- Optimizers must not compile: use a client ``torch.optim.AdamW`` (never FusedAdam/CPUAdam/offload).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import warnings

_DEPRECATED_COLLECTIVES = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"


def quiet_deepspeed_env() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore", message=_DEPRECATED_COLLECTIVES, category=FutureWarning)


def patch_out_jit_builds() -> None:
    """Replace the shm-op builder; `import deepspeed.comm.torch as m` would bind real torch, hence import_module."""
    quiet_deepspeed_env()
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def init_cpu_distributed(store_dir: str | None = None, rank: int | None = None, world_size: int | None = None) -> None:
    """Initialise torch.distributed (gloo) + DeepSpeed comm once per process; a no-op if already done.

    Under torchrun the env vars are already set and the env:// rendezvous is used; otherwise a
    FileStore in `store_dir` (a fresh temp dir by default) gives a world of one with no TCP port.
    """
    import torch.distributed as dist

    patch_out_jit_builds()
    import deepspeed

    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
            dist.init_process_group("gloo")
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
            for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world_size)):
                os.environ.setdefault(key, str(value))
            store_dir = store_dir or tempfile.mkdtemp(prefix="llava-doctor-dist-")
            dist.init_process_group(
                "gloo", init_method=f"file://{os.path.join(store_dir, 'store')}", rank=rank, world_size=world_size
            )
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        deepspeed.init_distributed(dist_backend="gloo")
