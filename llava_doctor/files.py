"""Bounded, regular-file-only reads: the one place every reader opens user files through.

DESIGN.md §5: only regular files are opened (a FIFO, a device or a socket - also behind a
symlink - is refused before ``open``, which would block on a FIFO); sizes are checked before
reading; nothing reads more than its limit even if the file grows meanwhile. Every refusal is an
:class:`InputError` with one line naming the path and why.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from typing import IO, Any, Iterator

from .findings import InputError, one_line

MiB = 1024 * 1024
MAX_JSON_BYTES = 64 * MiB  # config.json, index files, adapter configs, DeepSpeed configs
MAX_TEXT_LINE_BYTES = 1 * MiB  # one line of a streamed text log


def file_type(mode: int) -> str:
    for test, label in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return label
    return "a special file"


def stat_path(path: str | os.PathLike) -> os.stat_result:
    """`os.stat` (following links) with one-line errors for missing, dangling, looping or forbidden paths."""
    name = os.fspath(path)
    try:
        return os.stat(name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise InputError(f"{name}: dangling symbolic link") from None
        raise InputError(f"{name}: no such file or directory") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{name}: symbolic link loop") from None
        raise InputError(f"{name}: cannot stat ({exc.strerror or exc})") from None


def regular_file_size(path: str | os.PathLike, *, what: str = "file") -> int:
    """Size of `path` if it is a regular file (after links); InputError naming what it is otherwise."""
    st = stat_path(path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{os.fspath(path)}: not a regular {what} ({file_type(st.st_mode)})")
    return st.st_size


def open_regular(path: str | os.PathLike, *, limit: int | None = None, what: str = "file", binary: bool = True,
                 buffering: int = -1) -> IO[Any]:
    """Open a regular file for reading after checking its type (and size against `limit`, if given).

    The type is checked on the opened descriptor too (O_NONBLOCK keeps a FIFO swapped in between
    the stat and the open from blocking).
    """
    name = os.fspath(path)
    size = regular_file_size(name, what=what)
    if limit is not None and size > limit:
        raise InputError(f"{name}: {size:,} bytes, larger than the {limit:,}-byte limit for a {what}")
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{name}: not a regular {what} ({file_type(st.st_mode)})")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb" if binary else "r", buffering,
                     **({} if binary else {"encoding": "utf-8", "errors": "strict"}))


def read_bytes(path: str | os.PathLike, *, limit: int, what: str = "file") -> bytes:
    """All bytes of a regular file no larger than `limit` (reads at most limit + 1 bytes)."""
    with open_regular(path, limit=limit, what=what) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{os.fspath(path)}: grew beyond the {limit:,}-byte limit for a {what} while being read")
    return data


def read_text(path: str | os.PathLike, *, limit: int, what: str = "file") -> str:
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{os.fspath(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES, what: str = "JSON file", expect: type | None = dict) -> Any:
    """Parse a bounded JSON file; `expect` (default dict) is the required top-level type, None for any."""
    text = read_text(path, limit=limit, what=what)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{os.fspath(path)}: not valid JSON ({one_line(exc, 160)})") from None
    if expect is not None and not isinstance(value, expect):
        raise InputError(f"{os.fspath(path)}: a JSON {type(value).__name__}, expected a JSON {expect.__name__}")
    return value


def iter_lines(fh: IO[bytes], *, max_line: int = MAX_TEXT_LINE_BYTES) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, cut) for each line of a binary stream, in constant memory.

    A line longer than `max_line` bytes is cut there (``cut`` is True) and the rest of it skipped,
    so a 2 GB file without newlines costs one buffer, not 4 GB. Undecodable bytes are replaced.
    """
    number = 0
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        number += 1
        cut = len(line) > max_line and not line.endswith(b"\n")
        if cut:
            while True:  # skip the rest of an over-long line without keeping it
                rest = fh.readline(max_line)
                if not rest or rest.endswith(b"\n"):
                    break
        yield number, line[:max_line].decode("utf-8", errors="replace").rstrip("\r\n"), cut
