"""Reading zip archives (reference image sets) without trusting them.

Pure Python, no Django: the caller passes the limits (``EVALSITE_ARCHIVE_MAX_MEMBERS`` and
``EVALSITE_ARCHIVE_MAX_BYTES`` in settings).  Every member is checked before anything is
written, from the central directory alone:

* at most ``max_members`` members, and at most ``max_total_bytes`` declared unpacked in all;
* each name a plain relative path: not absolute, no drive letter, no ``..`` component, no
  backslash, no NUL, not twice in the archive;
* regular files and directories only: no symlink (nor device, nor FIFO), nothing encrypted,
  stored or deflated only.

Then each member is decompressed as a stream capped at its declared size: one that inflates
to more than it declares (a zip bomb lying in its headers) is refused the moment it does, as
is one whose CRC or size does not match.  Files are created inside the destination only,
never over an existing file, and a refused archive leaves nothing behind.  Every message
names the member and the limit.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # as zipfile.structFileHeader
_LOCAL_SIGNATURE = b"PK\x03\x04"
_END_SIGNATURE, _END_SIZE = b"PK\x05\x06", 22
_ZIP64_LOCATOR, _ZIP64_END = b"PK\x06\x07", b"PK\x06\x06"
# zipfile reads the whole central directory into memory before anything can be checked, so its
# size is bounded first: this many bytes per allowed member is generous for real names.
CENTRAL_BYTES_PER_MEMBER = 1024


class ArchiveError(ValueError):
    """An archive refused; the message names the member (if one is to blame) and the limit."""


@dataclass(frozen=True)
class ArchiveMember:
    """A member that passed the checks: where it goes and how big it says it is."""

    info: zipfile.ZipInfo
    path: PurePosixPath
    is_dir: bool
    size: int


def check_archive(zf: zipfile.ZipFile, *, max_members: int, max_total_bytes: int) -> list[ArchiveMember]:
    """Check every member of an open archive against the limits and the path rules.

    Reads only the central directory; raises ``ArchiveError`` at the first problem.
    """
    infos = zf.infolist()
    if len(infos) > max_members:
        raise ArchiveError(
            f"the archive has {len(infos)} members, more than the limit of {max_members} "
            "(EVALSITE_ARCHIVE_MAX_MEMBERS)"
        )
    members: list[ArchiveMember] = []
    seen: set[PurePosixPath] = set()
    total = 0
    for info in infos:
        path = _member_path(info.filename)
        kind = _member_kind(info)
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {info.filename!r} is encrypted; encrypted archives are not accepted")
        if kind == "file" and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(
                f"member {info.filename!r} uses compression method {info.compress_type}; "
                "only stored and deflated members are accepted"
            )
        if path in seen:
            raise ArchiveError(f"member {info.filename!r} appears twice in the archive")
        seen.add(path)
        total += info.file_size
        if total > max_total_bytes:
            raise ArchiveError(
                f"the archive unpacks to more than the limit of {max_total_bytes} bytes "
                f"(EVALSITE_ARCHIVE_MAX_BYTES), reached at member {info.filename!r}"
            )
        members.append(ArchiveMember(info=info, path=path, is_dir=kind == "dir", size=info.file_size))
    return members


def extract_archive(source: str | os.PathLike | BinaryIO, dest: str | os.PathLike, *,
                    max_members: int, max_total_bytes: int) -> list[PurePosixPath]:
    """Check an archive, then extract it into ``dest``; returns the files written (relative paths).

    ``source`` is a path or a seekable binary file.  ``dest`` is created if missing.  On any
    refusal, whatever this call created is removed again before ``ArchiveError`` is raised.
    """
    fh = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    try:
        _check_directory_size(fh, max_members)
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveError(f"not a readable zip archive: {exc}") from None
        return _extract(zf, Path(dest), max_members=max_members, max_total_bytes=max_total_bytes)
    finally:
        if fh is not source:
            fh.close()


def _extract(zf: zipfile.ZipFile, dest_dir: Path, *, max_members: int, max_total_bytes: int) -> list[PurePosixPath]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    created: list[Path] = []
    written: list[PurePosixPath] = []
    try:
        with zf:
            members = check_archive(zf, max_members=max_members, max_total_bytes=max_total_bytes)
            for member in members:
                target = root.joinpath(*member.path.parts)
                _make_dirs(root, target if member.is_dir else target.parent, created)
                if member.is_dir:
                    continue
                _write_member(zf, member, target, created)
                written.append(member.path)
    except BaseException:
        _remove(created)
        raise
    return written


def _check_directory_size(fh: BinaryIO, max_members: int) -> None:
    """Refuse, from the end record alone, an archive whose member count or central directory
    is too big to be worth reading."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _END_SIZE - 0xFFFF))
    tail = fh.read()
    at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END_SIZE:
        raise ArchiveError("not a zip archive: it has no end-of-directory record")
    entries, directory_bytes = struct.unpack_from("<HL", tail, at + 10)
    if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:  # Zip64: the real counts are elsewhere
        locator = tail[at - 20:at] if at >= 20 else b""
        if locator[:4] != _ZIP64_LOCATOR:
            raise ArchiveError("not a readable zip archive: its Zip64 end record is missing")
        fh.seek(struct.unpack_from("<Q", locator, 8)[0])
        record = fh.read(56)
        if record[:4] != _ZIP64_END or len(record) < 56:
            raise ArchiveError("not a readable zip archive: its Zip64 end record is damaged")
        entries, directory_bytes = struct.unpack_from("<QQ", record, 32)
    if entries > max_members or directory_bytes > max_members * CENTRAL_BYTES_PER_MEMBER:
        raise ArchiveError(
            f"the archive has {entries} members ({directory_bytes} bytes of directory), more than the limit "
            f"of {max_members} (EVALSITE_ARCHIVE_MAX_MEMBERS)"
        )
    fh.seek(0)


def _member_path(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise ArchiveError(f"member {name!r} has an empty name or a NUL byte in it")
    if "\\" in name:
        raise ArchiveError(f"member {name!r} has a backslash in its path; use / between folders")
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError(f"member {name!r} has an absolute path; only paths inside the archive are accepted")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {name!r} has a '..' component, which would reach outside the folder")
    if not parts:
        raise ArchiveError(f"member {name!r} names no file")
    return PurePosixPath(*parts)


def _member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    file_type = stat.S_IFMT(mode)
    if info.create_system == 3 and file_type:  # Unix attributes say what the member is
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"member {info.filename!r} is a symbolic link; links are not accepted")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArchiveError(f"member {info.filename!r} is not a regular file or folder")
        if stat.S_ISDIR(mode) != info.is_dir():
            raise ArchiveError(f"member {info.filename!r} says it is a folder and a file at once")
    return "dir" if info.is_dir() else "file"


def _make_dirs(root: Path, directory: Path, created: list[Path]) -> None:
    missing = []
    d = directory
    while d != root and not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    if not directory.resolve().is_relative_to(root):  # a link already in the destination
        raise ArchiveError(f"folder {directory.relative_to(root)} leads outside the destination")


def _write_member(zf: zipfile.ZipFile, member: ArchiveMember, target: Path, created: list[Path]) -> None:
    name = member.info.filename
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"member {name!r} would overwrite {member.path}, which already exists") from None
    created.append(target)
    crc = 0
    size = 0
    with os.fdopen(fd, "wb") as out:
        for chunk in _inflate(zf, member.info):
            size += len(chunk)
            if size > member.size:
                raise ArchiveError(
                    f"member {name!r} unpacks to more than the {member.size} bytes it declares "
                    "(a zip bomb, or a damaged archive); nothing was extracted"
                )
            crc = zlib.crc32(chunk, crc)
            out.write(chunk)
    if size != member.size or crc != member.info.CRC:
        raise ArchiveError(f"member {name!r} is damaged: its size or checksum does not match its header")


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes, decompressed in chunks of at most ``CHUNK`` (and at most one byte
    past its declared size, which is enough to catch a lie)."""
    fp = zf.fp
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise ArchiveError(f"member {info.filename!r} is damaged: no local header where the directory says")
    fields = _LOCAL_HEADER.unpack(header)
    fp.seek(fields[10] + fields[11], os.SEEK_CUR)  # the name and the extra field
    left = info.compress_size
    cap = info.file_size + 1
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    while left > 0 and cap > 0:
        raw = fp.read(min(CHUNK, left))
        if not raw:
            raise ArchiveError(f"member {info.filename!r} is damaged: its data ends early")
        left -= len(raw)
        if inflater is None:
            data = raw[:cap]
            cap -= len(data)
            yield data
            continue
        try:
            data = inflater.decompress(raw, min(CHUNK, cap))
            while data:
                cap -= len(data)
                yield data
                if cap <= 0:
                    return
                data = inflater.decompress(inflater.unconsumed_tail, min(CHUNK, cap))
        except zlib.error as exc:
            raise ArchiveError(f"member {info.filename!r} is damaged: {exc}") from None
    if inflater is not None and cap > 0:
        rest = inflater.flush()[:cap]
        if rest:
            yield rest


def _remove(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass
