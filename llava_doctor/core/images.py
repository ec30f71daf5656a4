"""Synthetic 32x32 RGB pictures (one coloured shape on a dark background) and a tiny PNG codec.

Pillow is not a dependency: the embedded dataset writes real ``.png`` files with the zlib-based
writer below, and ``read_png`` reads back 8-bit, non-interlaced greyscale/RGB/RGBA PNGs (the
kind this writer and most tools produce), which is all the bundled core needs.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
# name -> (row, col) of the shape's centre as fractions of the image side
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.3, 0.7),
    "bottom left": (0.7, 0.3),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}


def shape_mask(shape: str, center: tuple[float, float], radius: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of `shape` centred at pixel (row, col) with half-extent `radius`."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dr, dc = rows - center[0], cols - center[1]
    if shape == "circle":
        return dr**2 + dc**2 <= radius**2
    if shape == "square":
        side = radius * 0.85
        return (np.abs(dr) <= side) & (np.abs(dc) <= side)
    if shape == "triangle":  # apex up: the half-width grows linearly from the apex to the base
        top, bottom = -radius, radius
        inside_rows = (dr >= top) & (dr <= bottom)
        half_width = (dr - top) / (bottom - top) * radius
        return inside_rows & (np.abs(dc) <= half_width)
    if shape == "cross":
        arm = max(radius * 0.3, 1.0)
        return ((np.abs(dr) <= arm) & (np.abs(dc) <= radius)) | ((np.abs(dc) <= arm) & (np.abs(dr) <= radius))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def draw_image(shape: str, color: str, position: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 picture: noisy dark background, one shape with jittered size and place."""
    background = rng.integers(0, 40, size=(size, size, 3))
    frac_r, frac_c = POSITIONS[position]
    jitter = size * 0.04
    center = (frac_r * size + rng.uniform(-jitter, jitter), frac_c * size + rng.uniform(-jitter, jitter))
    radius = size * rng.uniform(0.2, 0.26)
    mask = shape_mask(shape, center, radius, size)
    tint = np.clip(np.array(COLORS[color]) + rng.integers(-20, 21, size=3), 0, 255)
    image = background.copy()
    image[mask] = tint
    return image.astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG (filter 0 on every row)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def read_png(path: str | Path) -> np.ndarray:
    """Read an 8-bit non-interlaced grey/RGB/RGBA PNG into an (H, W, 3) uint8 array (alpha dropped)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path}: PNG without IHDR")
    width, height, depth, color_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(color_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: unsupported PNG (bit depth {depth}, colour type {color_type}, interlace {interlace})")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, 1 + width * channels)
    except (zlib.error, ValueError) as error:
        raise ValueError(f"{path}: corrupt PNG image data ({error})") from None
    out = np.zeros((height, width, channels), dtype=np.int32)
    for row in range(height):
        kind, line = raw[row, 0], raw[row, 1:].astype(np.int32).reshape(width, channels)
        prev = out[row - 1] if row else np.zeros_like(line)
        if kind == 0:
            out[row] = line
        elif kind == 1:  # Sub: a running sum along the row, per channel
            out[row] = np.cumsum(line, axis=0) % 256
        elif kind == 2:  # Up
            out[row] = (line + prev) % 256
        elif kind in (3, 4):  # Average / Paeth depend on the reconstructed left pixel: pixel by pixel
            left = up_left = np.zeros(channels, dtype=np.int32)
            for col in range(width):
                up = prev[col]
                pred = (left + up) // 2 if kind == 3 else _paeth(left, up, up_left)
                left = out[row, col] = (line[col] + pred) % 256
                up_left = up
        else:
            raise ValueError(f"{path}: bad PNG filter type {kind} on row {row}")
    pixels = out.astype(np.uint8)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3].copy()
