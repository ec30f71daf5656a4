"""The one progress display of the tool: a bar on a terminal for long steps, nothing anywhere else.

A bar is drawn only when the caller wants one (`enabled`), standard error is a terminal, and none
of NO_COLOR, CI or TQDM_DISABLE is set; it appears only once the step has taken `delay` seconds,
and it disappears when it closes (``leave=False``), so short runs and captured output never see it.
Callers get None when there is nothing to draw and test ``bar is not None`` before updating it.

    bar = progress_bar(total_bytes, enabled, "scanning values")          # a byte counter
    bar = progress_bar(None, enabled, "building zero3-save", ticking=True)  # an elapsed-time line
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

QUIET_ENVIRONMENT = ("NO_COLOR", "CI", "TQDM_DISABLE")


def progress_allowed(fmt: str = "text") -> bool:
    """Whether a command may draw progress at all: text output, a terminal on stderr, no quiet variable set."""
    if fmt != "text" or any(os.environ.get(name) for name in QUIET_ENVIRONMENT):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(
    total: int | None,
    enabled: bool,
    desc: str = "",
    *,
    unit: str = "B",
    delay: float = 1.0,
    ticking: bool = False,
) -> Any:
    """A tqdm bar on stderr, or None when not wanted (see the module docstring).

    `total=None` draws "DESC elapsed" for a step whose size is unknown; `ticking=True` redraws it
    twice a second from a helper thread, for steps that never call ``update`` (a scenario build).
    """
    if not enabled or not progress_allowed():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    # disable=False: the decision is made above (tqdm reads TQDM_DISABLE once, when first imported)
    options: dict[str, Any] = {"desc": desc, "delay": delay, "leave": False, "file": sys.stderr, "dynamic_ncols": True,
                               "disable": False}
    if total is None:
        options["bar_format"] = "{desc} {elapsed}"
    else:
        options.update(total=total, unit=unit, unit_scale=unit == "B")
    bar = tqdm(**options)
    return _Ticking(bar) if ticking else bar


class _Ticking:
    """A tqdm redrawn every half second by a daemon thread until closed (elapsed time keeps moving)."""

    def __init__(self, bar: Any, interval: float = 0.5) -> None:
        self._bar, self._stop = bar, threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True, name="llava-doctor-progress")
        self._thread.start()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._bar.update(0)  # redraws once `delay` has passed, and records it so that close() clears the line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._bar.close()

    def __enter__(self) -> "_Ticking":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
