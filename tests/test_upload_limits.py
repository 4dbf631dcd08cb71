"""Upload limits: a file's size is checked before it is read, a request's declared length
before its body is read, and files are parsed as a stream.

The last test starts the real web server (granian, as in production) and streams a 2 GB
request at it while watching the server's memory.
"""
from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from annotation import uploads
from annotation.models import Candidate, Prompt, Study
from tests.conftest import ROOT, _database_url

MB = 1024 * 1024
LIMIT_MESSAGE = "(EVALSITE_UPLOAD_MAX_BYTES)"


def _create(client, upload, **extra):
    form = {"name": "Big", "overlap": 1, "max_new_tokens": 16, "temperature": 0.0, "seed": 0, "prompts": upload,
            **extra}
    return client.post(reverse("annotation:study_create"), form)


# --- the size of a file, before reading it --------------------------------------------------


class UnreadableUpload(SimpleUploadedFile):
    """An upload whose content must not be read: only its declared size may be looked at."""

    def read(self, *args, **kwargs):
        raise AssertionError("the upload was read")

    def chunks(self, *args, **kwargs):
        raise AssertionError("the upload was read")

    def __iter__(self):
        raise AssertionError("the upload was read")


@pytest.mark.django_db
def test_a_prompt_file_over_the_limit_is_refused_from_its_size_naming_limit_and_setting(client, evaluator, settings):
    settings.EVALSITE_UPLOAD_MAX_BYTES = 1000
    client.force_login(evaluator)
    response = _create(client, SimpleUploadedFile("p.csv", b"id,prompt\n" + b"p,x\n" * 300))
    assert response.status_code == 400
    [error] = response.context["form"].errors["prompts"]
    assert error == f"the file is 0.0 MB; the limit is 0.0 MB {LIMIT_MESSAGE}"
    assert Study.objects.count() == 0


@pytest.mark.django_db
def test_the_size_check_never_reads_the_file(evaluator, settings):
    from annotation.forms import StudyCreateForm

    settings.EVALSITE_UPLOAD_MAX_BYTES = 10 * MB
    upload = UnreadableUpload("p.csv", b"")
    upload.size = 2 * 1024 * MB
    form = StudyCreateForm({"name": "Big", "overlap": 1, "max_new_tokens": 16, "temperature": 0, "seed": 0},
                           {"prompts": upload})
    assert not form.is_valid()
    assert form.errors["prompts"] == [f"the file is 2048.0 MB; the limit is 10.0 MB {LIMIT_MESSAGE}"]


@pytest.mark.django_db
def test_more_prompts_or_outputs_over_the_limit_are_refused_naming_the_field(client, evaluator, study_factory,
                                                                             settings):
    study = study_factory()
    settings.EVALSITE_UPLOAD_MAX_BYTES = 1000
    client.force_login(evaluator)
    big = b"id,prompt\n" + b"n,x\n" * 300
    response = client.post(reverse("annotation:prompts_add", args=[study.pk]),
                           {"prompts": SimpleUploadedFile("n.csv", big)})
    assert response.status_code == 400
    [error] = response.context["upload_errors"]
    assert str(error).startswith("field 'prompts': the file is 0.0 MB; the limit is 0.0 MB")
    assert LIMIT_MESSAGE in str(error)
    response = client.post(reverse("annotation:candidate_add", args=[study.pk]),
                           {"name": "delta", "backend": "imported", "spec": "{}",
                            "outputs": SimpleUploadedFile("o.jsonl", b'{"prompt_id": "p1", "output": "x"}\n' * 50)})
    assert response.status_code == 400
    assert LIMIT_MESSAGE in response.context["candidate_form"].errors["outputs"][0]
    assert study.prompts.count() == 4 and not Candidate.objects.filter(name="delta").exists()


# --- the declared length of a request, before reading its body ---------------------------------


@pytest.mark.django_db
def test_a_request_declaring_more_than_the_limit_gets_413_and_its_body_is_not_read(client, evaluator, settings):
    settings.EVALSITE_UPLOAD_MAX_BYTES = 10 * MB
    settings.EVALSITE_REQUEST_MAX_BYTES = 11 * MB
    client.force_login(evaluator)
    # The body the client really sends is small: the view would accept it if it were read.
    response = client.post(reverse("annotation:study_create"),
                           {"name": "S", "overlap": 1, "max_new_tokens": 16, "temperature": 0, "seed": 0,
                            "prompts": SimpleUploadedFile("p.csv", b"id,prompt\np1,Hi\n")},
                           CONTENT_LENGTH=str(2 * 1024 * MB))
    assert response.status_code == 413
    text = response.content.decode()
    assert text.startswith("The request is 2048.0 MB; the limit is 11.0 MB (EVALSITE_REQUEST_MAX_BYTES)")
    assert "10.0 MB (EVALSITE_UPLOAD_MAX_BYTES)" in text
    assert Study.objects.count() == 0
    api = client.get(reverse("api-progress", args=[1]), CONTENT_LENGTH=str(12 * MB))
    assert api.status_code == 413 and "EVALSITE_REQUEST_MAX_BYTES" in api.json()["detail"]


# --- parsing as a stream ------------------------------------------------------------------------


class ChunkedOnly(io.FileIO):
    """A file that may only be read a bounded chunk at a time, never whole."""

    def read(self, size=-1):
        assert 0 < size <= 4 * MB, f"read({size}) of the whole file"
        return super().read(size)


def test_a_file_is_parsed_from_bounded_reads_in_a_few_megabytes(tmp_path):
    # 40 MB that parse into 2,000 short rows: the bulk is an ignored column. Parsing holds
    # the rows and a chunk or two, not the file.
    path = tmp_path / "prompts.csv"
    filler = "é" * 10_500
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id,prompt,notes\n")
        for i in range(2_000):
            fh.write(f"p{i},Prompt {i} ü,{filler}\n")
    assert path.stat().st_size > 40 * MB
    with ChunkedOnly(path) as fh:
        tracemalloc.start()
        try:
            parsed = uploads.parse_prompts(fh, "prompts.csv", max_bytes=None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [r.external_id for r in parsed.rows] == [f"p{i}" for i in range(2_000)]
    assert parsed.rows[-1].text == "Prompt 1999 ü" and parsed.rows[-1].line == 2_001
    assert peak < 12 * MB, f"parsing a 40 MB file peaked at {peak / MB:.0f} MB"


@pytest.mark.django_db
def test_a_file_just_under_the_limit_with_many_rows_is_imported_whole(client, evaluator, settings):
    # Spooled to disk by Django (over FILE_UPLOAD_MAX_MEMORY_SIZE) and parsed from there in
    # chunks; multi-byte characters fall across chunk boundaries.
    settings.EVALSITE_UPLOAD_MAX_BYTES = 2 * MB
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
    rows, size, n = [b"id,prompt,reference,tags\n"], 25, 0
    while True:
        row = f"q{n},Frage {n}: was kostet Größe {n}?,Antwort {n} — ok,t{n % 7};ü\n".encode()
        if size + len(row) > 2 * MB:
            break
        rows.append(row)
        size += len(row)
        n += 1
    data = b"".join(rows)
    assert 2 * MB - 200 < len(data) <= 2 * MB
    client.force_login(evaluator)
    response = _create(client, SimpleUploadedFile("p.csv", data))
    assert response.status_code == 302, response.context and response.context.get("upload_errors")
    study = Study.objects.get()
    assert study.prompts.count() == n
    last = Prompt.objects.get(study=study, external_id=f"q{n - 1}")
    assert (last.text, last.reference, last.tags) == (
        f"Frage {n - 1}: was kostet Größe {n - 1}?", f"Antwort {n - 1} — ok", [f"t{(n - 1) % 7}", "ü"])


# --- the real server: a 2 GB upload, refused with the process's memory bounded ---------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss(pid: int) -> int:
    """Largest resident set (bytes) among ``pid`` and its descendants."""
    biggest, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                biggest = max(biggest, int(line.split()[1]) * 1024)
    return biggest


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.samples, self._halt = pid, 0, 0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            self.samples += 1
            time.sleep(0.005)

    def wait_for_samples(self, n: int) -> None:
        target = self.samples + n
        while self.samples < target:
            time.sleep(0.005)

    def stop(self):
        self._halt.set()
        self.join()


@pytest.fixture
def web_server(transactional_db, tmp_path):
    """granian serving the site from the test database, with DEBUG off and default limits."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": _database_url(), "DEBUG": "0", "PYTHONUNBUFFERED": "1",
           "DJANGO_SETTINGS_MODULE": "evalsite.settings"}
    env.pop("EVALSITE_UPLOAD_MAX_BYTES", None)
    env.pop("EVALSITE_REQUEST_MAX_BYTES", None)
    log = tmp_path / "web.log"
    cmd = [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi", "evalsite.wsgi:application",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--blocking-threads", "2",
           "--no-access-log"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the web server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.port = port
    yield proc
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def _stream_request(port: int, head: bytes, body: Iterator[bytes]) -> tuple[bytes, int, int]:
    """Send ``head``, then the pieces of ``body`` as the socket takes them, on after the answer
    came, until all is sent or the server closes. Returns the answer, the body bytes sent
    before it came, and the body bytes sent in all."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    sock.setblocking(False)
    sent, before_answer, answer = 0, None, b""
    deadline = time.monotonic() + 120
    try:
        for piece in body:
            view = memoryview(piece)
            while view and time.monotonic() < deadline:
                try:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError  # closed by the server
                    answer += data
                    before_answer = sent if before_answer is None else before_answer
                except BlockingIOError:
                    pass
                try:
                    n = sock.send(view)
                    sent, view = sent + n, view[n:]
                except BlockingIOError:
                    time.sleep(0.0005)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        sock.setblocking(True)
        sock.settimeout(30)
        while not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError:
        pass
    finally:
        sock.close()
    return answer, sent if before_answer is None else before_answer, sent


def _generated(prefix: bytes, size: int, suffix: bytes = b"", *, chunked: bool = False) -> Iterator[bytes]:
    """``prefix``, then CSV rows up to ``size`` bytes in all, then ``suffix``; made as sent,
    never stored. With ``chunked``, framed for chunked transfer encoding."""
    rows = b"p,x\n" * (MB // 4)
    left = size - len(prefix) - len(suffix)

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    yield frame(prefix)
    while left > 0:
        piece = rows[:left]
        left -= len(piece)
        yield frame(piece)
    if suffix:
        yield frame(suffix)
    if chunked:
        yield b"0\r\n\r\n"


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
        if line.startswith(b"transfer-encoding:") and b"chunked" in line:
            return body.endswith(b"0\r\n\r\n")
    return False


class _Recorded:
    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, *args, **kwargs):
        return io.BytesIO(self.data)


def _parse(answer: bytes) -> tuple[int, str]:
    response = http.client.HTTPResponse(_Recorded(answer))
    response.begin()
    return response.status, response.read().decode()


def _session_and_csrf(port: int, session: str) -> str:
    """The CSRF token the create page hands this session's browser."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/studies/new/", headers={"Cookie": f"sessionid={session}"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    cookies = response.headers.get_all("Set-Cookie")
    conn.close()
    return next(c.split(";")[0].split("=", 1)[1] for c in cookies if c.startswith("csrftoken="))


def _multipart_head(boundary: str, fields: dict[str, str], filename: str) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="prompts"; filename="{filename}"\r\n'
                 "Content-Type: text/csv\r\n\r\nid,prompt\n")
    return "".join(parts).encode()


@pytest.mark.django_db(transaction=True)
def test_a_2_gb_upload_is_refused_with_its_message_while_the_server_stays_under_300_mb(web_server, evaluator):
    client = Client()
    client.force_login(evaluator)  # a session in the database, which the server reads
    session = client.cookies["sessionid"].value
    csrf = _session_and_csrf(web_server.port, session)
    boundary = "HugeUploadBoundary"
    head = (f"POST /studies/new/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={session}; csrftoken={csrf}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n").encode()
    fields = {"csrfmiddlewaretoken": csrf, "name": "Huge", "overlap": "1", "max_new_tokens": "16",
              "temperature": "0", "seed": "0"}
    start, end = _multipart_head(boundary, fields, "huge.csv"), f"\r\n--{boundary}--\r\n".encode()
    sampler = RssSampler(web_server.pid)
    sampler.start()
    try:
        sampler.wait_for_samples(3)
        # 2 GB declared: refused from the Content-Length, before a byte of the body is read.
        declared, sent, sent_in_all = _stream_request(
            web_server.port, head + b"Content-Length: %d\r\n\r\n" % (2 * 1024 * MB),
            _generated(start, 2 * 1024 * MB, end))
        # 2 GB without a declared length: Django reads no body at all (so the CSRF check refuses it).
        chunked, _, chunked_in_all = _stream_request(
            web_server.port, head + b"Transfer-Encoding: chunked\r\n\r\n",
            _generated(start, 2 * 1024 * MB, end, chunked=True))
        # Within the request limit but over the file limit: read (to disk), refused by its size.
        size = 50 * MB + 100 * 1024
        over, _, over_in_all = _stream_request(
            web_server.port, head + b"Content-Length: %d\r\n\r\n" % size, _generated(start, size, end))
        sampler.wait_for_samples(3)
    finally:
        sampler.stop()
    status, body = _parse(declared)
    assert status == 413, declared[:300]
    assert body.startswith("The request is 2048.0 MB; the limit is 51.0 MB (EVALSITE_REQUEST_MAX_BYTES)"), body
    assert "50.0 MB (EVALSITE_UPLOAD_MAX_BYTES)" in body
    assert sent < 64 * MB, f"{sent / MB:.0f} MB went out before the answer"
    assert _parse(chunked)[0] == 403, chunked[:300]  # no body read, so no CSRF token found in it
    status, body = _parse(over)
    assert status == 400 and over_in_all == size, over[:300]
    assert "the file is 50.1 MB; the limit is 50.0 MB (EVALSITE_UPLOAD_MAX_BYTES)" in body
    assert sampler.peak < 300 * MB, f"the web server reached {sampler.peak / MB:.0f} MB"
    assert Study.objects.count() == 0
