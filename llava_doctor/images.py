"""Bounded image reading for generation: JPEG, PNG and WebP through Pillow, the pixel count checked before decoding.

`read_image` opens only regular files (``llava_doctor.files``), lets Pillow parse the header alone,
refuses more than `max_pixels` pixels before a single pixel is decoded, and turns anything that is
not one of the three formats, or is truncated or corrupt, into one ``InputError`` line. The model's
own processor resizes the result; nothing here loops over pixels in Python.

`neutral_images` makes the images LD504 compares against: the same size, no content (a flat grey)
and content without meaning (seeded uniform noise).
"""
from __future__ import annotations

import os
import warnings
from typing import Any

from .files import MiB, open_regular
from .findings import InputError, one_line

FORMATS = ("JPEG", "PNG", "WEBP")
MAX_IMAGE_BYTES = 256 * MiB
# Our own cap, below Pillow's MAX_IMAGE_PIXELS (89 M, where it only warns): an 8000x8000 photo.
MAX_IMAGE_PIXELS = 64_000_000
NEUTRAL_GREY = 127
NOISE_SEED = 0


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Any:
    """The image at `path` as an RGB ``PIL.Image`` (first frame), or InputError naming why not."""
    from PIL import Image, UnidentifiedImageError

    name = os.fspath(path)
    with open_regular(name, limit=max_bytes, what="image file") as handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle, formats=FORMATS)
        except UnidentifiedImageError:
            raise InputError(f"{name}: not an image llava-doctor can read (JPEG, PNG or WebP)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise InputError(f"{name}: unreadable image header ({one_line(error)})") from None
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputError(f"{name}: {image.format} image of size {width}x{height}")
        if width * height > max_pixels:
            raise InputError(f"{name}: {image.format} image of {width}x{height} = {width * height:,} pixels, more than the "
                             f"{max_pixels:,}-pixel limit; resize it first")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise InputError(f"{name}: corrupt or truncated {image.format} image ({one_line(error)})") from None


def neutral_images(size: tuple[int, int]) -> dict[str, Any]:
    """{"blank": flat grey, "noise": seeded uniform noise} RGB images of `size` (width, height)."""
    import numpy as np
    from PIL import Image

    width, height = size
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return {"blank": Image.new("RGB", (width, height), (NEUTRAL_GREY,) * 3), "noise": Image.fromarray(noise, "RGB")}
