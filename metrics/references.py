"""Reference image sets: an evaluator's zip of real images, checked whole before anything is kept.

The archive goes through :mod:`annotation.archives` (limits, paths, zip bombs) into a temporary
directory; every member must then decode with Pillow as a PNG, JPEG or WEBP image of at most
``EVALSITE_REFERENCE_MAX_PIXELS`` pixels (checked from its header, before decoding), and no member
may be an archive itself.  Only then are the images written through Django's storage and the rows
created; on any failure the files already written are removed again, so a refused upload leaves
no row and no file.
"""
from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from annotation import archives, audit
from annotation.models import Study
from annotation.services import ServiceError

from .models import MetricRun, ReferenceImage, ReferenceSet

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar", ".zst")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh",
                 b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
MIN_IMAGES = 2
NAME = re.compile(r"^[\w .\-]{1,100}$")
# the file part of a reference image URL: the opaque name upload_to gives
FILE_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|webp)$")


def _ignored(path: PurePosixPath) -> bool:
    """Folders and files archivers add by themselves (macOS resource forks, hidden files)."""
    return any(part == "__MACOSX" or part.startswith(".") for part in path.parts)


class _TooLarge(Exception):
    def __init__(self, width: int, height: int):
        super().__init__(width, height)
        self.width, self.height = width, height


def _check_image(member: str, data: bytes) -> tuple[str, int, int]:
    """The image's format and size, or ``ServiceError`` naming the member.

    The pixel count is checked from the header (``Image.open`` reads no pixel data) against
    ``EVALSITE_REFERENCE_MAX_PIXELS`` before the image is decoded: a small file can declare a
    huge image, costly to decode, well under Pillow's own decompression-bomb limit.
    """
    from PIL import Image

    if member.lower().endswith(ARCHIVE_SUFFIXES) or data.startswith(ARCHIVE_MAGIC):
        raise ServiceError(f"member {member!r} is an archive inside the archive; nested archives are not accepted")
    max_pixels = settings.EVALSITE_REFERENCE_MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size is known, nothing decoded
            fmt = image.format
            width, height = image.size
            if width * height > max_pixels:
                raise _TooLarge(width, height)
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except _TooLarge as big:
        raise ServiceError(f"member {member!r} is {big.width}×{big.height} pixels ({big.width * big.height:,}); "
                           f"reference images may have at most {max_pixels:,} pixels "
                           "(EVALSITE_REFERENCE_MAX_PIXELS)") from None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, DecompressionBombError...)
        raise ServiceError(f"member {member!r} is not a readable image ({type(exc).__name__}: {exc})") from None
    if fmt not in FORMATS:
        raise ServiceError(f"member {member!r} is a {fmt} image; only PNG, JPEG and WEBP images are accepted")
    return fmt, width, height


def reference_set_upload(*, study: Study, name: str, upload, actor=None) -> ReferenceSet:
    """Check a zip of reference images and keep it as the study's reference set ``name``.

    ``upload`` is a seekable binary file (an ``UploadedFile``).  Raises ``ServiceError`` with
    a message naming the member at fault; nothing is kept then.
    """
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise ServiceError("name: 1 to 100 letters, digits, spaces, dots, dashes or underscores")
    if ReferenceSet.objects.filter(study=study, name=name).exists():
        raise ServiceError(f"name: the study already has a reference set called {name!r}")
    source = getattr(upload, "file", upload)
    try:
        source.seek(0)
    except (AttributeError, OSError):
        pass
    # one image in memory at a time: each is checked, then streamed into storage from the
    # extracted copy, so an archive near the size limit does not need its size in memory
    with tempfile.TemporaryDirectory(prefix="evalsite-refs-") as tmp:
        try:
            written = archives.extract_archive(source, tmp, max_members=settings.EVALSITE_ARCHIVE_MAX_MEMBERS,
                                               max_total_bytes=settings.EVALSITE_ARCHIVE_MAX_BYTES)
        except archives.ArchiveError as exc:
            raise ServiceError(f"archive: {exc}") from None
        images: list[tuple[Path, str, int, int]] = []
        for rel in sorted(written, key=str):
            if _ignored(rel):
                continue
            path = Path(tmp) / rel
            fmt, width, height = _check_image(str(rel), path.read_bytes())
            images.append((path, fmt, width, height))
        if len(images) < MIN_IMAGES:
            raise ServiceError(f"archive: it holds {len(images)} image(s); a reference set needs at least "
                               f"{MIN_IMAGES}")
        saved: list[str] = []
        try:
            with transaction.atomic():
                ref = ReferenceSet.objects.create(study=study, name=name, n_images=len(images),
                                                  created_by=actor if actor and actor.is_authenticated else None)
                rows = []
                for path, fmt, width, height in images:
                    row = ReferenceImage(set=ref, width=width, height=height)
                    with path.open("rb") as fh:
                        row.file.save(f"image{FORMATS[fmt]}", File(fh), save=False)
                    saved.append(row.file.name)
                    rows.append(row)
                ReferenceImage.objects.bulk_create(rows)
                audit.record(study, actor, audit.Action.REFERENCE_SET_ADDED, name, {"images": len(images)})
        except IntegrityError:
            _remove(saved)
            raise ServiceError(f"name: the study already has a reference set called {name!r}") from None
        except BaseException:
            _remove(saved)
            raise
    return ref


def _remove(names: list[str]) -> None:
    for name in names:
        default_storage.delete(name)


def reference_set_remove(*, ref: ReferenceSet, actor=None) -> int:
    """Delete a reference set, its rows and, once that has committed, its image and feature files.

    Refused (``ServiceError`` naming the runs) while a FID or KID run that compares with it is
    queued or running.  Finished runs keep their figures; their configuration names the set.
    Returns how many images went with it.
    """
    with transaction.atomic():
        ref = ReferenceSet.objects.select_for_update().filter(pk=ref.pk).first()
        if ref is None:
            raise ServiceError("reference: that reference set was already removed")
        busy = list(MetricRun.objects.filter(study_id=ref.study_id, options__reference=ref.pk,
                                             status__in=[MetricRun.Status.QUEUED, MetricRun.Status.RUNNING])
                    .order_by("pk").values_list("metric", "pk"))
        if busy:
            runs = ", ".join(f"{metric} (run {pk})" for metric, pk in busy)
            raise ServiceError(f"reference: {ref.name!r} is in use by {runs}; remove it when they have finished")
        files = list(ReferenceImage.objects.filter(set=ref).values_list("file", flat=True))
        if ref.features:
            files.append(ref.features.name)
        n_images = len(files) - bool(ref.features)
        audit.record(ref.study, actor, audit.Action.REFERENCE_SET_REMOVED, ref.name, {"images": n_images})
        ref.delete()
        transaction.on_commit(lambda: _remove(files))
    return n_images


def reference_set_for_option(study_id: int, value) -> ReferenceSet:
    """The reference set an option names (its name or id), of this study only."""
    qs = ReferenceSet.objects.filter(study_id=study_id, status=ReferenceSet.Status.READY)
    ref = None
    if isinstance(value, int) and not isinstance(value, bool):
        ref = qs.filter(pk=value).first()
    elif isinstance(value, str) and value.strip():
        ref = qs.filter(name=value.strip()).first()
    if ref is None:
        names = ", ".join(qs.values_list("name", flat=True)[:20]) or "none yet: upload one on the references page"
        raise ServiceError(f"reference: no reference set {value!r} in this study (its sets: {names})")
    return ref


def reference_sets_page(study: Study, thumbnails: int = 4) -> list[dict]:
    """The study's reference sets, newest first, each with its first few images' names.

    Two queries however many sets: the thumbnails come in one sliced prefetch (a window query).
    """
    from django.db.models import Prefetch

    first = Prefetch("images", queryset=ReferenceImage.objects.order_by("pk")[:thumbnails], to_attr="first_images")
    sets = ReferenceSet.objects.filter(study=study).order_by("-created_at", "-pk").prefetch_related(first)
    return [{"set": ref, "thumbnails": [PurePosixPath(img.file.name).name for img in ref.first_images]}
            for ref in sets]
