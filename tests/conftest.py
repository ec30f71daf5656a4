from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS_DIR = Path(os.environ.get("LLAVA_DOCTOR_TOKENIZERS", ROOT.parent / "shared" / "fixtures" / "tokenizers"))

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The core caches its pretrained base tower and healthy model; tests never touch the user's ~/.cache,
# and one session shares one cache across test files.
os.environ.setdefault("LLAVA_DOCTOR_CACHE", tempfile.mkdtemp(prefix="llava-doctor-test-cache-"))


@pytest.fixture(scope="session")
def tokenizers_dir() -> Path:
    """The real tokenizer folders shared beside the project (../shared/fixtures/tokenizers)."""
    if not TOKENIZERS_DIR.is_dir():
        pytest.skip(
            f"real tokenizer fixtures not found at {TOKENIZERS_DIR}; "
            "set LLAVA_DOCTOR_TOKENIZERS to a folder holding them (see shared/fixtures/tokenizers/PROVENANCE.md)"
        )
    return TOKENIZERS_DIR


@pytest.fixture(scope="session")
def cpu_dist():
    """torch.distributed (gloo, world 1) + DeepSpeed comm, initialised once for the session without JIT builds."""
    from llava_doctor.core.distributed import init_cpu_distributed

    init_cpu_distributed()
    yield


def pytest_collection_modifyitems(config, items):
    """`cuda` tests run only where a CUDA device exists (the device tool's GPU machine, never CI)."""
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in cuda_items:
        item.add_marker(skip)
