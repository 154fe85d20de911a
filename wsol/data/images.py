"""Reading image files as they come, and the one error an unreadable one gets.

Images are returned upright and as 8-bit RGB: the EXIF orientation is applied
(the datasets' boxes and masks are annotated on the upright image, as viewers
show it), 16-bit and 32-bit grey images are scaled to 8 bits instead of
being clipped (a plain ``convert("RGB")`` turns a 16-bit PNG nearly white),
palette images go through RGBA so that their transparency is read properly.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps

from wsol.errors import UserError

__all__ = ["ImageLoadError", "bad_image", "open_rgb", "to_rgb8", "READ_ERRORS",
           "SMALL_IMAGE"]

log = logging.getLogger(__name__)

# What PIL raises for a missing, truncated or corrupt file (SyntaxError: a
# broken PNG chunk; DecompressionBombError: absurd dimensions).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
SMALL_IMAGE = 16  # px: a smaller side is warned about (nothing left to localize)
_EXIF_ORIENTATION = 0x0112


class ImageLoadError(UserError):
    """An image file is missing, truncated or not an image."""


def bad_image(problem: str, skip: bool) -> None:
    """An unreadable image: None with ``--skip_bad_images`` (the item is
    dropped by skip_none_collate and counted by the caller), otherwise one
    clear ImageLoadError."""
    if skip:
        return None
    error = ImageLoadError(f"{problem} (fix or remove it, or pass --skip_bad_images)")
    error.__suppress_context__ = True  # raised from an except block: `from None`
    raise error


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        else:  # "I;16*" and "I" (how PIL opens 16-bit PNGs): 16-bit range
            top = 65535.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def upright_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image as the loaders read it (after its EXIF
    orientation), from its header only; one of READ_ERRORS when unreadable."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn
            width, height = height, width
    return width, height


def open_rgb(path: str) -> Image.Image:
    """The image at ``path``, upright, as 8-bit RGB; one of READ_ERRORS when
    it cannot be read.  A side under SMALL_IMAGE px is logged as a warning."""
    with Image.open(path) as image:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb8(image)
        rgb.load()
    if min(rgb.size) < SMALL_IMAGE:
        log.warning("image %s is %dx%d px: too small to localize anything (it is used "
                    "all the same)", path, *rgb.size)
    return rgb
