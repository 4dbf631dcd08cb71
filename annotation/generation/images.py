"""Image bytes a backend returns: checked, re-encoded as a bare PNG, and thumbnailed (Pillow only).

No Django, torch or diffusers here: the worker's storing code and the image backends share it.

Every stored image is re-encoded, never kept as it came: a PNG from a ComfyUI or A1111 workflow
carries its whole generation graph in text chunks ("parameters", "Model: ..."), a JPEG or WebP
from a hosted endpoint EXIF (``Software``), comments, XMP or C2PA provenance naming the service,
and the file type alone (.png from one backend, .jpg from another) would tell two candidates
apart.  Annotators are blind, so what reaches them is the pixels only, as a PNG with no chunk
beyond those the pixels need.
"""

from __future__ import annotations

import io

THUMBNAIL_SIDE = 256
SUFFIX = ".png"  # the one suffix of every stored image, whichever backend made it


class ImageError(ValueError):
    """The bytes are not an image Pillow can read."""


def _bare(image):
    """``image`` as a new RGB or RGBA image with the same pixels and no ``info`` at all.

    ``convert`` copies ``info`` (where Pillow keeps an ICC profile, EXIF, text chunks, comments,
    XMP), and Pillow's PNG writer writes some of it back (the ICC profile); a copy made from the
    raw pixels carries nothing.
    """
    from PIL import Image

    mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
    converted = image if image.mode == mode else image.convert(mode)
    return Image.frombytes(mode, converted.size, converted.tobytes())


def png_bytes(image) -> bytes:
    """A Pillow image encoded as PNG (RGB, or RGBA when it has alpha) with no metadata: no text
    chunk, EXIF, ICC profile or resolution; the same pixels give the same bytes."""
    buffer = io.BytesIO()
    _bare(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_srgb(image, profile: bytes | None):
    """Pixels drawn in an embedded ICC profile's colour space (RGB or CMYK), converted to sRGB
    RGB or RGBA (dropping the profile would otherwise shift their colours); unchanged without a
    usable profile."""
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                         outputMode="RGBA" if image.mode == "RGBA" else "RGB")
    except Exception:  # an unreadable profile, or a Pillow built without littlecms: keep the pixels
        return image


def normalise(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Check that ``data`` is a whole image; return the PNG to store, its suffix (always
    ``.png``) and its size.

    Whatever the format (PNG, JPEG, WebP, or another Pillow reads), the pixels are re-encoded as
    a PNG with no metadata (see the module's docstring): an EXIF orientation is applied first and
    an embedded colour profile converted to sRGB, so the image looks as it did; an animation
    keeps its first frame.  Normalising the result again gives the same bytes.
    Raises ``ImageError`` for bytes Pillow cannot decode (truncated, not an image, too large).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checks the whole file; the image must be reopened to be used
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)  # a copy without the orientation tag, or None
            clean = _to_srgb(image if upright is None else upright, image.info.get("icc_profile"))
            return png_bytes(clean), SUFFIX, clean.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG at most ``side`` pixels on its long side (aspect kept; small images keep their size)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        small = _bare(image)
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return png_bytes(small)
