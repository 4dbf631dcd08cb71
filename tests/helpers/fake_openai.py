"""A small, real OpenAI-compatible chat-completions server for tests and demos.

It listens on 127.0.0.1 (port 0 picks a free one) in a background thread and answers
``POST /v1/chat/completions`` with the response shape vLLM, Ollama and OpenAI use, and
``GET /v1/models``, and ``POST /v1/images/generations`` (one PNG as ``b64_json``, drawn by
``image_for`` from the prompt, seed and size). The reply is a pure function of the request, so tests can assert it::

    echo: <last user message> (model <model>)

truncated to ``max_tokens`` words (``finish_reason`` is then ``"length"``). Token counts
are whitespace-separated words: ``prompt_tokens`` over all message contents,
``completion_tokens`` over the reply.

Knobs (constructor arguments, also settable on a running server): fail the first N
requests with a status (500, 429 with ``Retry-After``...), delay every reply, require a
bearer token, or misbehave like a broken proxy that echoes the request's headers
(``Authorization`` included) back in an error, a malformed 200 or a broken header line.
It records every request body and headers, how many requests it has seen, and the largest
number of requests it was answering at the same time.

Use it in-process as a context manager::

    with FakeOpenAIServer(fail_first=2) as server:
        spec = {"base_url": server.base_url, "model": "m"}

or as a separate process (the first line on stdout gives the URL)::

    python -m tests.helpers.fake_openai --port 8001
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any


def reply_for(model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[str, str]:
    """The deterministic reply text and finish reason for a chat request."""
    last_user = next(
        (m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), ""
    )
    words = f"echo: {last_user} (model {model})".split()
    if max_tokens is not None and len(words) > max_tokens:
        return " ".join(words[:max_tokens]), "length"
    return " ".join(words), "stop"


def image_for(prompt: str, seed: int | None, width: int, height: int) -> bytes:
    """The deterministic PNG the images route returns: a colour and a diagonal band chosen by a
    hash of the prompt and seed, so the same request gives the same bytes and another seed others."""
    import hashlib
    import io

    from PIL import Image, ImageDraw

    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    draw = ImageDraw.Draw(image)
    offset = digest[3] % max(width, 1)
    draw.line([(offset, 0), (offset + height, height)], fill=tuple(digest[4:7]), width=max(1, width // 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def count_tokens(text: str) -> int:
    return len(text.split())


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 in a daemon thread; a context manager.

    Parameters
    ----------
    port:
        0 (default) picks a free port; see ``port`` and ``base_url`` once started.
    fail_first:
        Answer the first ``fail_first`` chat requests with ``fail_status``.
    fail_status:
        Status used for those failures (500 by default; 429 adds ``Retry-After``).
    retry_after:
        Value of the ``Retry-After`` header on the failures, if not ``None``.
    delay_s:
        Sleep this long before answering each chat request.
    require_token:
        If set, requests without ``Authorization: Bearer <require_token>`` get 401.
    echo_headers:
        Answer every chat request with the request's headers echoed back, the way a broken
        proxy or debug endpoint does: ``"error"`` (``fail_status`` with an OpenAI-style error
        whose message dumps the headers), ``"malformed"`` (200 with a plain-text body, not
        JSON, holding a raw header dump), ``"wrong_shape"`` (200 with JSON that has no
        ``choices``, only the headers), ``"bad_header"`` (a response whose header block
        holds an invalid line with the ``Authorization`` value, so the client's HTTP parser
        fails and quotes that line), or ``None`` (behave).
    reply:
        If set, a function of the request body returning the reply text (``finish_reason``
        ``"stop"``), in place of the echo; for tests that need a particular answer (an
        LLM judge's verdict). Token counts are computed the same way.
    """

    ECHO_MODES = ("error", "malformed", "wrong_shape", "bad_header")

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_first: int = 0,
        fail_status: int = 500,
        retry_after: float | None = None,
        delay_s: float = 0.0,
        require_token: str | None = None,
        echo_headers: str | None = None,
        reply: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        if echo_headers is not None and echo_headers not in self.ECHO_MODES:
            raise ValueError(f"echo_headers must be one of {self.ECHO_MODES} or None")
        self.host = host
        self.requested_port = port
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.delay_s = delay_s
        self.require_token = require_token
        self.echo_headers = echo_headers
        self.reply = reply

        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.request_times: list[float] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared by pause(): requests wait (counted) until resume()
        self._open.set()
        self._held: dict[int, dict[str, Any]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> _QuietServer:
        """Open the listening socket (so ``port`` is known) without serving yet."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _QuietServer((self.host, self.requested_port), handler)
        return self._httpd

    def start(self) -> FakeOpenAIServer:
        self.bind()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._open.set()  # release requests held by pause()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- what was received ----------------------------------------------------------------

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def reset(self) -> None:
        with self._lock:
            self.bodies.clear()
            self.headers.clear()
            self.request_times.clear()
            self.max_in_flight = 0

    def pause(self) -> None:
        """Hold every chat request that arrives from now on (it is recorded first) until ``resume``."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    @property
    def held(self) -> list[dict[str, Any]]:
        """The bodies of the requests waiting because of ``pause``."""
        with self._lock:
            return list(self._held.values())

    # -- called by the handler ------------------------------------------------------------

    def _hold(self, number: int, body: dict[str, Any]) -> None:
        if self._open.is_set():
            return
        with self._lock:
            self._held[number] = body
        try:
            self._open.wait()
        finally:
            with self._lock:
                self._held.pop(number, None)

    def _enter(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
            self.request_times.append(time.monotonic())
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return len(self.bodies)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out closes its socket while we sleep; that is expected.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "tests"}]})
        else:
            self._send_error(404, f"no route for GET {self.path}", "not_found")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/images/generations"):
            self._send_error(404, f"no route for POST {self.path}", "not_found")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_error(400, "request body is not valid JSON", "invalid_request_error")
            return
        fake = self.fake
        number = fake._enter(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            fake._hold(number, body)
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if fake.echo_headers is not None:
                self._echo(fake.echo_headers, fake.fail_status)
                return
            if route == "/v1/images/generations":
                status, payload, extra_headers = self._answer_image(fake, number, body)
            else:
                status, payload, extra_headers = self._answer(fake, number, body)
        finally:
            # Leave before replying: once the client has the reply it may send its next
            # request, which must not be counted as overlapping this one.
            fake._leave()
        self._send_json(status, payload, extra_headers)

    def _answer(
        self, fake: FakeOpenAIServer, number: int, body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if fake.require_token is not None:
            if self.headers.get("Authorization") != f"Bearer {fake.require_token}":
                return 401, _error("Incorrect API key provided.", "invalid_api_key"), {}
        if number <= fake.fail_first:
            headers = {}
            if fake.retry_after is not None:
                headers["Retry-After"] = f"{fake.retry_after:g}"
            message = "Rate limit reached." if fake.fail_status == 429 else f"Injected failure {number}."
            return fake.fail_status, _error(message, "fake_failure"), headers
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return 400, _error("'model' is a required property", "invalid_request_error"), {}
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return 400, _error("'messages' must be a non-empty array", "invalid_request_error"), {}
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return 400, _error("'max_tokens' must be a positive integer", "invalid_request_error"), {}

        if fake.reply is not None:
            text, finish_reason = str(fake.reply(body)), "stop"
        else:
            text, finish_reason = reply_for(body["model"], messages, max_tokens)
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in messages)
        completion_tokens = count_tokens(text)
        return 200, {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }, {}

    def _answer_image(
        self, fake: FakeOpenAIServer, number: int, body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """``POST /v1/images/generations``: one PNG per request, as ``b64_json`` (see ``image_for``)."""
        import base64
        import re

        if fake.require_token is not None:
            if self.headers.get("Authorization") != f"Bearer {fake.require_token}":
                return 401, _error("Incorrect API key provided.", "invalid_api_key"), {}
        if number <= fake.fail_first:
            return fake.fail_status, _error(f"Injected failure {number}.", "fake_failure"), {}
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return 400, _error("'model' is a required property", "invalid_request_error"), {}
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return 400, _error("'prompt' must be a non-empty string", "invalid_request_error"), {}
        if body.get("n", 1) != 1 or body.get("response_format", "url") != "b64_json":
            return 400, _error("this server returns n=1 images as b64_json only", "invalid_request_error"), {}
        size = re.fullmatch(r"(\d{1,4})x(\d{1,4})", str(body.get("size", "256x256")))
        if size is None or not all(0 < int(side) <= 2048 for side in size.groups()):
            return 400, _error(f"invalid size {body.get('size')!r}", "invalid_request_error"), {}
        seed = body.get("seed")
        png = image_for(body["prompt"], seed if isinstance(seed, int) else None, int(size[1]), int(size[2]))
        return 200, {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode()}]}, {}

    def _echo(self, mode: str, status: int) -> None:
        """Reply with the request's own headers in it, as ``echo_headers`` describes."""
        dump = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        # the connection is closed after an echo: say so, or a client may send its retry down it
        close = {"Connection": "close"}
        if mode == "error":
            self._send_json(status, _error(f"upstream refused the request; it had these headers: "
                                           f"{dict(self.headers.items())}", "proxy_error"), close)
        elif mode == "wrong_shape":
            self._send_json(200, {"echo": {"headers": dict(self.headers.items())}}, close)
        elif mode == "malformed":
            data = f"<html>debug: request was\r\n{self.requestline}\r\n{dump}</html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        else:  # bad_header: written raw, since http.server would not send a line without a colon
            auth = self.headers.get("Authorization", "no authorization")
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nEchoed {auth}\r\nConnection: close\r\n"
                    "Content-Length: 2\r\n\r\n")
            self.wfile.write(head.encode("latin-1", "replace") + b"{}")
        self.close_connection = True

    def _send_error(self, status: int, message: str, code: str) -> None:
        self._send_json(status, _error(message, code))

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--require-token", default=None)
    parser.add_argument("--echo-headers", choices=FakeOpenAIServer.ECHO_MODES, default=None,
                        help="misbehave: echo the request's headers back (see FakeOpenAIServer)")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        host=args.host,
        port=args.port,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        retry_after=args.retry_after,
        delay_s=args.delay,
        require_token=args.require_token,
        echo_headers=args.echo_headers,
    )
    # SIGTERM ends serve_forever through KeyboardInterrupt, like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    httpd = server.bind()
    print(f"fake OpenAI server listening on {server.base_url}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
