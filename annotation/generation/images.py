"""Image bytes a backend returns: checked, named by format, and thumbnailed (Pillow only).

No Django, torch or diffusers here: the worker's storing code and the image backends share it.
"""

from __future__ import annotations

import io

THUMBNAIL_SIDE = 256
# Formats stored as they came; anything else Pillow reads is stored as PNG.
_KEPT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


class ImageError(ValueError):
    """The bytes are not an image Pillow can read."""


def png_bytes(image) -> bytes:
    """A Pillow image encoded as PNG, with no metadata: the same pixels give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def normalise(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Check that ``data`` is a whole image; return the bytes to store, their suffix and size.

    PNG, JPEG and WebP are kept byte for byte; another readable format is converted to PNG.
    Raises ``ImageError`` for bytes Pillow cannot decode (truncated, not an image, too large).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checks the whole file; the image must be reopened to be used
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
            if image.format in _KEPT:
                return data, _KEPT[image.format], size
            return png_bytes(image.convert("RGBA" if "A" in image.getbands() else "RGB")), ".png", size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG at most ``side`` pixels on its long side (aspect kept; small images keep their size)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        small = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return png_bytes(small)
