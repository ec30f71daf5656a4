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
    """`cuda` tests run only where a CUDA device exists (the device tool's GPU machine, never CI); `transformers5`
    tests only under transformers >= 5 (CI's second environment has LLaVA's pin, 4.37.2)."""
    _skip_unless(items, "cuda", _cuda_available, "needs a CUDA GPU (run on the device machine)")
    _skip_unless(items, "transformers5", _transformers_major_at_least(5), "needs transformers >= 5; skipped on older")


def _skip_unless(items, marker: str, condition, reason: str) -> None:
    """Skip the items carrying `marker` when `condition()` is false (evaluated only if some item carries it)."""
    marked = [item for item in items if marker in item.keywords]
    if marked and not condition():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _transformers_major_at_least(major: int):
    def check() -> bool:
        from importlib.metadata import version

        return int(version("transformers").split(".")[0]) >= major

    return check
