"""Keep the libraries' chatter off the user's terminal while llava-doctor works.

transformers' "Loading weights" bars and info/warning logs, DeepSpeed's accelerator banner (which
DeepSpeed writes to *stdout*, into a JSON report) and warnings raised inside those libraries are not
the user's business during an audit. Warnings attributed to llava-doctor's own code stay visible:
they are bugs to fix, not noise to hide (the tests run the commands with such warnings as errors).

Nothing heavy is imported here (transformers' logging module alone costs a second): transformers is
quietened through its own API, at once if it is loaded, else the moment it is first imported inside
the block; on exit it gets its state back (its defaults, if it was first loaded inside). No
library-level environment variable is set that a library would read once and keep for the process.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
import warnings
from typing import Any, Callable, Iterator

LIBRARIES = ("transformers", "huggingface_hub", "tokenizers", "torch", "deepspeed", "accelerate", "peft", "safetensors")
HF_LOGGING = "transformers.utils.logging"
_DEEPSPEED_LOGGER = "DeepSpeed"


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` right after module `name` is first executed (a one-module import hook)."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if not isinstance(finder, _AfterImport) else None
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, then: Callable[[Any], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.then(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self.loader, name)


def _hush_transformers(hf_logging: Any) -> None:
    if os.environ.get("TRANSFORMERS_VERBOSITY") is None:  # a user's explicit choice stands
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


_depth = 0  # nested blocks (a command running a scenario that is quiet itself): only the outermost acts


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: no library progress bars, info/warning logs or library-internal warnings."""
    global _depth
    if _depth:
        _depth += 1
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", module=rf"^({'|'.join(LIBRARIES)})(\.|$)")
                yield
        finally:
            _depth -= 1
        return
    _depth = 1
    try:
        with _quiet_outermost():
            yield
    finally:
        _depth = 0


@contextlib.contextmanager
def _quiet_outermost() -> Iterator[None]:
    hf_logging = sys.modules.get(HF_LOGGING)
    hf_state = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) if hf_logging else None
    hook = None
    if hf_logging is not None:
        _hush_transformers(hf_logging)
    else:
        hook = _AfterImport(HF_LOGGING, _hush_transformers)
        sys.meta_path.insert(0, hook)
    advisory = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")  # read at each warning, not once
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    ds_filter, ds_logger = _BelowError(), logging.getLogger(_DEEPSPEED_LOGGER)
    ds_logger.addFilter(ds_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=rf"^({'|'.join(LIBRARIES)})(\.|$)")
            yield
    finally:
        ds_logger.removeFilter(ds_filter)
        if advisory is None:
            os.environ.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
        if hook is not None:
            sys.meta_path.remove(hook)
        _restore_transformers(hf_state)


def _restore_transformers(state: tuple[int, bool] | None) -> None:
    """Give transformers its logging state back (its defaults if it was first imported inside the block)."""
    hf_logging = sys.modules.get(HF_LOGGING)
    if hf_logging is None or os.environ.get("TRANSFORMERS_VERBOSITY") is not None:
        return
    verbosity, bars = state if state is not None else (logging.WARNING, True)
    hf_logging.set_verbosity(verbosity)
    if bars and not hf_logging.is_progress_bar_enabled():
        with warnings.catch_warnings():  # huggingface_hub warns when its own variable forbids bars
            warnings.simplefilter("ignore")
            hf_logging.enable_progress_bar()
