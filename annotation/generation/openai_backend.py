"""Generation through any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, OpenAI).

Spec fields
-----------
``base_url`` (required)
    The API root, e.g. ``http://127.0.0.1:8001/v1``; requests go to ``{base_url}/chat/completions``.
    No query, fragment (not even a bare ``?`` or ``#``), ``user:password@``, ``.``/``..``
    segments or control characters. With the operator's ``SpecPolicy.base_urls``
    (``EVALSITE_BASE_URLS``) it must lie under one of those prefixes.
``model`` (required)
    The model name sent in each request.
``api_key_env``
    The *name* of the environment variable holding the API key (the key itself is never
    stored). Omitted: no ``Authorization`` header is sent. Only names the operator allows
    (``SpecPolicy.api_key_envs``, setting ``EVALSITE_API_KEY_ENVS``; ``EVALSITE_KEY_*`` by
    default), so a spec cannot send ``DATABASE_URL`` to an endpoint. Named but unset on the
    machine that generates: ``get_backend`` raises ``BackendError`` naming the variable.
``max_concurrency`` (4), ``timeout_s`` (60), ``max_retries`` (3), ``backoff_s`` (1.0)
    At most ``max_concurrency`` requests are in flight at once. ``timeout_s`` bounds each
    network operation of one attempt (connect, write, wait for the reply). A failed attempt
    is retried up to ``max_retries`` times when it is worth retrying: connection errors,
    timeouts, 408, 429 and 5xx. Other 4xx are not retried. Between attempts the backend
    waits ``backoff_s * 2**attempt`` times a random factor in [0.5, 1.5), or the server's
    ``Retry-After`` if that is longer, never more than ``MAX_RETRY_WAIT_S``.
``extra_body``
    An object merged into every request body (``{"top_k": 20}``, vLLM's
    ``{"repetition_penalty": 1.1}``...). A key set to ``null`` removes that key from the
    request, e.g. ``{"max_tokens": null, "max_completion_tokens": 256}`` for endpoints that
    reject ``max_tokens``. ``model`` and ``messages`` cannot be overridden.
``price_per_1k_input``, ``price_per_1k_output``
    USD per 1000 tokens, used with the ``usage`` the server reports.

Every request carries ``max_tokens``, ``temperature``, ``top_p`` and the request's
``seed``; a non-empty system prompt is sent as a ``system`` message before the user's.
Every error text (an HTTP error body, a malformed reply, a connection error) goes through
``base.Scrubber`` with the key before it leaves the backend.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import httpx

from .base import (
    PRICE_FIELDS,
    REQUIRED,
    BackendError,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    Scrubber,
    SpecField,
    SpecPolicy,
    check_prices,
    check_spec,
    compute_cost,
    environment_secrets,
    spec_int,
    spec_number,
    spec_str,
)

MAX_RETRY_WAIT_S = 60.0
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# httpcore's DEBUG trace logs each failure's repr unscrubbed, and a broken server's reply
# (our own Authorization header echoed in a bad header line) is in it. Keep that logger at
# INFO unless someone set its level on purpose.
if logging.getLogger("httpcore").level == logging.NOTSET:
    logging.getLogger("httpcore").setLevel(logging.INFO)


def _parse_url(name: str, url: str) -> httpx.URL:
    """Parse an endpoint URL, refusing what could send requests elsewhere than it reads."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise BackendError(name, "must not contain spaces or control characters")
    if not url.lower().startswith(("http://", "https://")):
        raise BackendError(name, f"must start with http:// or https://, got {url!r}")
    # Requests go to {base_url}/chat/completions: a query or fragment, even an empty one,
    # would move that path into the query or drop it, so any path on the host is reachable.
    if "?" in url:
        raise BackendError(name, f"must not have a query ('?'): requests go to {{base_url}}/chat/completions; got {url!r}")
    if "#" in url:
        raise BackendError(name, f"must not have a fragment ('#'): requests go to {{base_url}}/chat/completions; got {url!r}")
    if "\\" in url:
        raise BackendError(name, f"must not contain a backslash, got {url!r}")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise BackendError(name, f"is not a valid URL: {exc}") from None
    if parsed.userinfo:
        raise BackendError(
            name, "must not hold a user name or password (user:password@); put the key in an environment "
            "variable and name it in api_key_env"
        )
    if not parsed.host:
        raise BackendError(name, f"has no host, got {url!r}")
    if port is not None and not 0 < port < 65536:
        raise BackendError(name, f"has an invalid port {port}")
    raw_path = url.split("//", 1)[1].partition("/")[2]
    if any(unquote(segment) in (".", "..") for segment in raw_path.split("/")):
        raise BackendError(name, f"must not contain '.' or '..' path segments, got {url!r}")
    return parsed


def _url_key(url: httpx.URL) -> tuple[str, str, int, str]:
    """Scheme, host, port (explicit) and path without a trailing slash: what a prefix is compared on."""
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS[scheme], url.path.rstrip("/")


def url_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``url`` lies under one of ``prefixes`` (empty: any URL).

    Compared after normalising scheme, host and port, and on whole path segments, so
    ``http://a/v1`` allows ``http://a/v1/x`` but not ``http://a/v1evil`` or ``http://a.evil``.
    """
    if not prefixes:
        return True
    scheme, host, port, path = _url_key(httpx.URL(url))
    for prefix in prefixes:
        try:
            p_scheme, p_host, p_port, p_path = _url_key(httpx.URL(prefix.strip()))
        except (httpx.InvalidURL, KeyError, ValueError):
            continue  # a broken entry allows nothing
        if (scheme, host, port) == (p_scheme, p_host, p_port) and (
            path == p_path or path.startswith(p_path + "/")
        ):
            return True
    return False


def _check_base_url(name: str, value: Any) -> str:
    url = spec_str(name, value)
    _parse_url(name, url)
    return url.rstrip("/")


def _check_env_name(name: str, value: Any) -> str:
    # Never echo the value: a pasted key is the likely mistake here.
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise BackendError(
            name, "must be the name of an environment variable (letters, digits, _), not the key itself"
        )
    return value


def extra_body_check(reserved: tuple[str, ...]):
    """The check of a spec's ``extra_body``: a JSON object that may not set the ``reserved`` keys
    (the ones the backend itself sends); shared by the chat and the images backends."""
    def check(name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise BackendError(name, f"must be an object, got {type(value).__name__}")
        for key in reserved:
            if key in value:
                raise BackendError(f"{name}.{key}", "cannot be overridden")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise BackendError(name, f"must be JSON-serialisable: {exc}") from None
        return dict(value)

    return check


_check_extra_body = extra_body_check(("model", "messages"))


SPEC_FIELDS: dict[str, SpecField] = {
    "base_url": SpecField(_check_base_url, REQUIRED),
    "model": SpecField(spec_str, REQUIRED),
    "api_key_env": SpecField(_check_env_name, None),
    "max_concurrency": SpecField(spec_int(1, 256), 4),
    "timeout_s": SpecField(spec_number(0.0, strict=True), 60.0),
    "max_retries": SpecField(spec_int(0, 20), 3),
    "backoff_s": SpecField(spec_number(0.0), 1.0),
    "extra_body": SpecField(_check_extra_body, {}),
    **PRICE_FIELDS,
}


def validate_spec(spec: Mapping[str, Any], policy: SpecPolicy) -> dict[str, Any]:
    """Normalise an OpenAI-compatible spec under the operator's policy.

    ``BackendError`` names the bad field, and for a policy refusal the setting that would
    allow it. Does not read the environment: the web process need not hold the key.
    """
    normalised = check_spec(spec, SPEC_FIELDS)
    check_prices(normalised)
    check_endpoint_policy(normalised, policy)
    return normalised


def check_endpoint_policy(normalised: Mapping[str, Any], policy: SpecPolicy) -> None:
    """The operator's key-variable and endpoint policy for a spec's ``api_key_env`` and
    ``base_url``; shared by the chat and the images backends."""
    key_env = normalised["api_key_env"]
    if key_env is not None and not policy.key_env_allowed(key_env):
        allowed = ", ".join(policy.api_key_envs) or "no variable"
        raise BackendError(
            "api_key_env",
            f"{key_env} is not an allowed key variable; the operator allows {allowed} (setting EVALSITE_API_KEY_ENVS)",
        )
    if not url_allowed(normalised["base_url"], policy.base_urls):
        raise BackendError(
            "base_url",
            f"{normalised['base_url']} is not under an allowed endpoint; the operator allows "
            f"{', '.join(policy.base_urls)} (setting EVALSITE_BASE_URLS)",
        )


def make_backend(spec: dict[str, Any], policy: SpecPolicy | None = None) -> OpenAIBackend:
    return OpenAIBackend(spec, policy)


class OpenAIBackend:
    """Sends one chat-completions request per ``GenerationRequest``, concurrently.

    ``latency_ms`` is the wall time of the final, successful attempt (request sent to
    reply read), not including earlier failed attempts or waits between them. Token counts
    come from the reply's ``usage`` and are ``None`` if the server does not report them.
    Failures are reported per request in ``GenerationResult.error``, prefixed with the HTTP
    status where there is one (``"HTTP 400: ..."``).
    """

    def __init__(self, spec: dict[str, Any], policy: SpecPolicy | None = None) -> None:
        self.spec = spec
        self.url = f"{spec['base_url']}/chat/completions"
        self._api_key = self._read_api_key()
        self._scrub = Scrubber([self._api_key, *environment_secrets(policy)])
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def _read_api_key(self) -> str | None:
        name = self.spec["api_key_env"]
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise BackendError("api_key_env", f"environment variable {name} is not set")
        return key

    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]:
        if not requests:
            return []
        workers = min(self.spec["max_concurrency"], len(requests))
        headers = {"User-Agent": "evalsite"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        with (
            httpx.Client(timeout=self.spec["timeout_s"], limits=limits, headers=headers) as client,
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-gen") as pool,
        ):
            return list(pool.map(lambda request: self._one(client, request, settings), requests))

    def request_body(self, request: GenerationRequest, settings: GenerationSettings) -> dict[str, Any]:
        """The JSON body sent for ``request`` (public so callers can show or log it)."""
        messages = []
        if settings.system_prompt:
            messages.append({"role": "system", "content": settings.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {
            "model": self.spec["model"],
            "messages": messages,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": request.seed,
        }
        for key, value in self.spec["extra_body"].items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def _one(
        self, client: httpx.Client, request: GenerationRequest, settings: GenerationSettings
    ) -> GenerationResult:
        try:
            return self._with_retries(client, request, settings)
        except Exception as exc:  # one request's surprise must not lose the others' results
            return self._failure(request, f"{type(exc).__name__}: {exc}")

    def _failure(self, request: GenerationRequest, error: str) -> GenerationResult:
        """Every failure leaves through here: scrubbed of the key and headers, trimmed."""
        return GenerationResult.failure(request.key, self._scrub(error))

    def _with_retries(
        self, client: httpx.Client, request: GenerationRequest, settings: GenerationSettings
    ) -> GenerationResult:
        body = self.request_body(request, settings)
        attempts = self.spec["max_retries"] + 1
        error = ""
        for attempt in range(attempts):
            retry_after = None
            started = time.perf_counter()
            try:
                response = client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                error = f"timed out after {self.spec['timeout_s']:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                error = f"connection error: {type(exc).__name__}: {exc}"
            else:
                latency_ms = (time.perf_counter() - started) * 1000
                status = response.status_code
                if status == 200:
                    return self._parse(request, response, latency_ms)
                error = f"HTTP {status}: {_error_message(response)}"
                if status not in RETRY_STATUSES and status < 500:
                    return self._failure(request, error)
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
            if attempt + 1 < attempts:
                time.sleep(self._wait_s(attempt, retry_after))
        plural = "s" if attempts > 1 else ""
        return self._failure(request, f"{error} (gave up after {attempts} attempt{plural})")

    def _parse(
        self, request: GenerationRequest, response: httpx.Response, latency_ms: float
    ) -> GenerationResult:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            # The body is whatever the server sent, possibly our own headers echoed back.
            return self._failure(request, f"malformed response ({type(exc).__name__}: {exc}): {response.text}")
        if not isinstance(text, str):
            reason = choice.get("finish_reason") if isinstance(choice, Mapping) else None
            return self._failure(request, f"response has no text content (finish_reason={reason!r})")
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        completion_tokens = _int_or_none(usage.get("completion_tokens"))
        return GenerationResult(
            key=request.key,
            text=text,
            error=None,
            latency_ms=latency_ms,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=compute_cost(self.spec, prompt_tokens, completion_tokens),
        )

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        with self._rng_lock:
            jitter = 0.5 + self._rng.random()
        wait = self.spec["backoff_s"] * (2**attempt) * jitter
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, MAX_RETRY_WAIT_S)


def _error_message(response: httpx.Response) -> str:
    """The server's own error message: OpenAI's ``{"error": {"message"}}`` and variants.

    Not trimmed or scrubbed here: the caller scrubs the whole text, then trims it.
    """
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return error["message"]
        for candidate in (error, data.get("message"), data.get("detail")):
            if isinstance(candidate, str):
                return candidate
    text = response.text.strip()
    return text if text else response.reason_phrase


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
