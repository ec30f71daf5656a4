"""The images a dataset names, checked the way the training code will open them - bounded.

LLaVA opens ``os.path.join(image_folder, record["image"])`` with ``Image.open(...).convert("RGB")``
in ``__getitem__``: a missing or undecodable file raises there, hours into the first epoch
(LLaVA-NeXT catches it, sleeps, retries and silently trains on the neighbouring sample instead).
Here every reference is first counted; the existence of up to `max_exists` of them (evenly spaced
when there are more) is checked with one ``stat`` each, and up to `max_decode` existing ones are
opened through :func:`llava_doctor.files.open_regular` (regular files only, size-capped), their
header read and their pixel count checked against Pillow's decompression-bomb limit before a
reduced-size decode. The counts say how many were checked of how many.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..files import open_regular
from ..findings import InputError, one_line
from ..images import MAX_IMAGE_BYTES

MAX_EXISTS = 20_000
MAX_DECODE = 64
DRAFT_SIZE = (64, 64)  # JPEG decodes at 1/8 scale: the stream is still read end to end


@dataclass(frozen=True)
class ImageRef:
    sample: str  # the record's id (or index)
    file: str  # as written in the record
    path: str  # joined with image_folder


@dataclass
class ImageCheck:
    folder: str | None
    total: int = 0  # image references in the data
    records_with_images: int = 0
    checked: int = 0  # existence checked
    decoded: int = 0  # opened and decoded
    missing: list[ImageRef] = field(default_factory=list)
    not_regular: list[tuple[ImageRef, str]] = field(default_factory=list)
    undecodable: list[tuple[ImageRef, str]] = field(default_factory=list)
    oversized: list[tuple[ImageRef, str]] = field(default_factory=list)  # over Pillow's bomb limit: raises at open
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (sample, why): an image value that is not a path
    lists: int = 0  # records whose image is a list (multi-image)
    videos: int = 0  # records with a video (not checked)

    @property
    def sampled(self) -> bool:
        return self.checked < self.total


def image_refs(records: Iterable[Any], folder: str | None, workdir: str, check: ImageCheck) -> list[ImageRef]:
    """Every image reference of LLaVA records (a string or a list of strings under "image")."""
    base = folder or ""
    base = base if os.path.isabs(base) else os.path.join(workdir, base)
    refs: list[ImageRef] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        sample = str(record.get("id", index))
        if "video" in record:
            check.videos += 1
        if "image" not in record:
            continue
        value = record["image"]
        check.records_with_images += 1
        files = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            check.lists += 1
        for item in files:
            if not isinstance(item, str) or not item:
                check.malformed.append((sample, f"image value {item!r} is not a file name"))
                continue
            refs.append(ImageRef(sample, item, os.path.join(base, item)))
    check.total = len(refs)
    return refs


def _spaced(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    if limit <= 0:
        return []
    step = len(items) / limit
    return [items[int(k * step)] for k in range(limit)]


def decode_problem(path: str) -> tuple[str, str] | None:
    """(kind, reason) when Pillow cannot open and decode `path` as the training code will; None when it can."""
    from PIL import Image, UnidentifiedImageError

    try:
        handle = open_regular(path, limit=MAX_IMAGE_BYTES, what="image file")
    except InputError as exc:
        return "undecodable", str(exc).split(": ", 1)[-1]
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle)
                width, height = image.size
                if width * height > 2 * Image.MAX_IMAGE_PIXELS:
                    return "oversized", (f"{width}x{height} = {width * height:,} pixels: Pillow raises "
                                         f"DecompressionBombError above {2 * Image.MAX_IMAGE_PIXELS:,}")
                image.draft("RGB", DRAFT_SIZE)
                image.load()
        except UnidentifiedImageError:
            return "undecodable", "cannot identify image file (not an image Pillow can read)"
        except Image.DecompressionBombError as exc:
            return "oversized", one_line(exc)
        except (OSError, SyntaxError, ValueError) as exc:
            return "undecodable", one_line(exc)
    return None


def check_images(records: Iterable[Any], folder: str | None, workdir: str, *, max_exists: int = MAX_EXISTS,
                 max_decode: int = MAX_DECODE) -> ImageCheck:
    check = ImageCheck(folder)
    refs = image_refs(records, folder, workdir, check)
    existing: list[ImageRef] = []
    for ref in _spaced(refs, max_exists):
        check.checked += 1
        try:
            st = os.stat(ref.path)
        except OSError:
            check.missing.append(ref)
            continue
        if not stat.S_ISREG(st.st_mode):
            check.not_regular.append((ref, "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"))
            continue
        existing.append(ref)
    for ref in _spaced(existing, max_decode):
        check.decoded += 1
        problem = decode_problem(ref.path)
        if problem is not None:
            (check.oversized if problem[0] == "oversized" else check.undecodable).append((ref, problem[1]))
    return check
