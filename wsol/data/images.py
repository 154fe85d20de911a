"""Reading image files, and the one error an unreadable one gets."""
from __future__ import annotations

from PIL import Image

from wsol.errors import UserError

__all__ = ["ImageLoadError", "bad_image", "open_rgb"]


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


def open_rgb(path: str) -> Image.Image:
    """The image at ``path`` as RGB (OSError/ValueError when unreadable)."""
    with Image.open(path) as image:
        return image.convert("RGB")
