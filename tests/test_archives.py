"""Safe extraction of zip archives: crafted archives (bombs, traversal, links) are refused
before or while extracting, with nothing left behind.  No Django here, as in the module."""
import io
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from annotation.archives import ArchiveError, check_archive, extract_archive

LIMITS = {"max_members": 20, "max_total_bytes": 1_000_000}


def _zip(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_plain_image_set_is_extracted_into_the_destination(tmp_path):
    archive = _zip({"refs/a.png": b"\x89PNG one", "refs/sub/b.png": b"\x89PNG two", "c.txt": b"three"})
    written = extract_archive(archive, tmp_path / "out", **LIMITS)
    assert written == [PurePosixPath("refs/a.png"), PurePosixPath("refs/sub/b.png"), PurePosixPath("c.txt")]
    assert (tmp_path / "out/refs/sub/b.png").read_bytes() == b"\x89PNG two"
    assert _files(tmp_path / "out") == ["c.txt", "refs", "refs/a.png", "refs/sub", "refs/sub/b.png"]


def test_a_stored_archive_from_a_path_is_extracted(tmp_path):
    path = tmp_path / "set.zip"
    path.write_bytes(_zip({"a.bin": bytes(range(256)) * 10}, compression=zipfile.ZIP_STORED).getvalue())
    assert extract_archive(path, tmp_path / "out", **LIMITS) == [PurePosixPath("a.bin")]
    assert (tmp_path / "out/a.bin").read_bytes() == bytes(range(256)) * 10


def test_it_refuses_too_many_members_before_reading_them(tmp_path):
    archive = _zip({f"img{i}.png": b"x" for i in range(21)})
    with pytest.raises(ArchiveError) as exc:
        extract_archive(archive, tmp_path / "out", **LIMITS)
    assert "21 members" in str(exc.value) and "limit of 20" in str(exc.value)
    assert "EVALSITE_ARCHIVE_MAX_MEMBERS" in str(exc.value)
    assert not (tmp_path / "out").exists()  # refused from the end record, before the directory is read


def test_it_refuses_an_honest_zip_bomb_by_its_declared_total(tmp_path):
    # 2 MB of zeros deflate to about 2 KB; the directory says so, which is enough to refuse
    archive = _zip({"small.png": b"ok", "bomb.bin": b"\0" * 2_000_000})
    assert len(archive.getvalue()) < 10_000
    with pytest.raises(ArchiveError) as exc:
        extract_archive(archive, tmp_path / "out", **LIMITS)
    message = str(exc.value)
    assert "'bomb.bin'" in message and "1000000 bytes" in message and "EVALSITE_ARCHIVE_MAX_BYTES" in message
    assert _files(tmp_path / "out") == []  # checked before anything was written


def _lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """Rewrite the uncompressed size of ``name`` in its local header and central directory entry."""
    raw = bytearray(data)
    encoded = name.encode()
    at = raw.find(b"PK\x03\x04")
    assert raw[at + 30:at + 30 + len(encoded)] == encoded
    struct.pack_into("<L", raw, at + 22, declared)
    at = raw.find(b"PK\x01\x02")
    assert raw[at + 46:at + 46 + len(encoded)] == encoded
    struct.pack_into("<L", raw, at + 24, declared)
    return bytes(raw)


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_it_stops_a_member_that_unpacks_to_more_than_it_declares(tmp_path, compression):
    real = b"\0" * 500_000
    archive = _lie_about_size(_zip({"liar.png": real}, compression=compression).getvalue(), "liar.png", 100)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:  # the directory alone looks harmless
        (member,) = check_archive(zf, **LIMITS)
        assert member.size == 100
    with pytest.raises(ArchiveError) as exc:
        extract_archive(io.BytesIO(archive), tmp_path / "out", **LIMITS)
    assert "'liar.png'" in str(exc.value) and "more than the 100 bytes it declares" in str(exc.value)
    assert _files(tmp_path / "out") == []  # the partial file is removed


def test_a_damaged_member_is_refused_and_nothing_is_left(tmp_path):
    stored = _zip({"a.txt": b"first", "b.txt": b"hello world " * 50}, compression=zipfile.ZIP_STORED)
    data = bytearray(stored.getvalue())
    at = data.find(b"hello world")
    data[at:at + 5] = b"HELLO"  # same size, wrong checksum
    with pytest.raises(ArchiveError, match="'b.txt' is damaged"):
        extract_archive(io.BytesIO(bytes(data)), tmp_path / "out", **LIMITS)
    assert _files(tmp_path / "out") == []  # a.txt, written first, is removed again


@pytest.mark.parametrize(("name", "why"), [
    ("../evil.png", "'..' component"),
    ("refs/../../evil.png", "'..' component"),
    ("/etc/cron.d/evil", "absolute path"),
    ("C:/evil.png", "absolute path"),
    ("refs\\..\\evil.png", "backslash"),
])
def test_it_refuses_a_path_that_leaves_the_folder(tmp_path, name, why):
    archive = _zip({"fine.png": b"x", name: b"evil"})
    with pytest.raises(ArchiveError) as exc:
        extract_archive(archive, tmp_path / "out", **LIMITS)
    assert repr(name) in str(exc.value) and why in str(exc.value)
    assert _files(tmp_path / "out") == []
    assert not (tmp_path / "evil.png").exists()


def test_it_refuses_a_symlink_member(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", b"x")
        link = zipfile.ZipInfo("escape")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("escape/passwd", b"overwrite through the link")
    buf.seek(0)
    with pytest.raises(ArchiveError, match="member 'escape' is a symbolic link"):
        extract_archive(buf, tmp_path / "out", **LIMITS)
    assert _files(tmp_path / "out") == []


def test_it_refuses_a_member_named_twice(tmp_path):
    buf = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", b"first")
        zf.writestr("a.png", b"second")
    buf.seek(0)
    with pytest.raises(ArchiveError, match="'a.png' appears twice"):
        extract_archive(buf, tmp_path / "out", **LIMITS)


def test_it_never_overwrites_a_file_in_the_destination_nor_follows_a_link_there(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"mine")
    with pytest.raises(ArchiveError, match="'a.png' would overwrite"):
        extract_archive(_zip({"a.png": b"theirs"}), out, **LIMITS)
    assert (out / "a.png").read_bytes() == b"mine"
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "refs").symlink_to(outside)
    with pytest.raises(ArchiveError, match="leads outside the destination"):
        extract_archive(_zip({"refs/b.png": b"x"}), out, **LIMITS)
    assert list(outside.iterdir()) == []


def test_it_refuses_what_is_not_a_zip(tmp_path):
    with pytest.raises(ArchiveError, match="not a zip archive"):
        extract_archive(io.BytesIO(b"just some bytes" * 10), tmp_path / "out", **LIMITS)


def test_the_archive_module_imports_no_django():
    code = "import sys, annotation.archives; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
