"""Holes of sparse files: byte ranges that were never written, found with SEEK_HOLE/SEEK_DATA.

A pre-allocated file (``fallocate``/``truncate`` before the copy) or an interrupted copy of a
sparse file reads as zeros wherever nothing was written; finding that by reading would cost the
whole file (terabytes, for a pre-allocated 7B shard set of the wrong size). The kernel knows
where the holes are: two ``lseek`` calls per extent, no data read. Filesystems without hole
support report none, and some (ZFS with compression) report runs of written zeros as holes too,
which is why the checks judge holes by the tensors they cover.
"""
from __future__ import annotations

import errno
import os

MAX_EXTENTS = 4096  # enough to show the problem; a file fragmented beyond this is reported as such


def data_holes(fd: int, size: int, *, limit: int = MAX_EXTENTS) -> tuple[list[tuple[int, int]], bool]:
    """([start, end) of every hole in the open file `fd` of `size` bytes, up to `limit`; whether cut there)."""
    if not (hasattr(os, "SEEK_HOLE") and hasattr(os, "SEEK_DATA")):
        return [], False
    holes: list[tuple[int, int]] = []
    position = 0
    while position < size:
        if len(holes) >= limit:
            return holes, True
        try:
            hole = os.lseek(fd, position, os.SEEK_HOLE)
        except OSError:  # ENXIO past the end, EINVAL where unsupported
            break
        if hole >= size:
            break
        try:
            data = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                break
            data = size  # a hole up to the end of the file
        holes.append((hole, min(data, size)))
        position = data
    return holes, False


def file_holes(path: str | os.PathLike, *, limit: int = MAX_EXTENTS) -> tuple[list[tuple[int, int]], bool]:
    """`data_holes` of a regular file by path ([] for anything that cannot be opened)."""
    from ..files import open_regular
    from ..findings import InputError

    try:
        with open_regular(path) as fh:
            return data_holes(fh.fileno(), os.fstat(fh.fileno()).st_size, limit=limit)
    except (InputError, OSError):
        return [], False


def overlap(holes: list[tuple[int, int]], start: int, end: int) -> int:
    """Bytes of [start, end) that lie in `holes` (sorted, disjoint)."""
    total = 0
    for begin, stop in holes:
        if stop <= start:
            continue
        if begin >= end:
            break
        total += min(stop, end) - max(begin, start)
    return total
