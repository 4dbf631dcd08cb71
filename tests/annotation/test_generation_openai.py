"""The OpenAI-compatible backend against a real local HTTP server (tests/helpers/fake_openai)."""

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from annotation.generation import (
    BackendError,
    GenerationRequest,
    GenerationSettings,
    get_backend,
)
from annotation.generation.openai_backend import _retry_after_s
from tests.helpers.fake_openai import FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = {"backoff_s": 0.001}


def spec_for(server, **overrides):
    return {"base_url": server.base_url, "model": "tiny-chat", **FAST, **overrides}


def requests_for(*prompts, seed=0):
    return [GenerationRequest(key=f"out-{i}", prompt=prompt, seed=seed) for i, prompt in enumerate(prompts)]


def test_it_returns_one_result_per_request_in_order_with_tokens_and_cost():
    prompts = ["What is two plus two?", "Name a colour.", "Say hi."]
    with FakeOpenAIServer() as server:
        backend = get_backend(
            "openai", spec_for(server, price_per_1k_input=2.0, price_per_1k_output=6.0)
        )
        results = backend.generate(requests_for(*prompts), GenerationSettings())

    assert [r.key for r in results] == ["out-0", "out-1", "out-2"]
    for prompt, result in zip(prompts, results):
        expected = f"echo: {prompt} (model tiny-chat)"
        assert result.error is None
        assert result.text == expected
        assert result.prompt_tokens == len(prompt.split())
        assert result.completion_tokens == len(expected.split())
        assert result.cost == pytest.approx((result.prompt_tokens * 2.0 + result.completion_tokens * 6.0) / 1000)
        assert result.latency_ms > 0


def test_an_empty_list_of_requests_sends_nothing():
    with FakeOpenAIServer() as server:
        assert get_backend("openai", spec_for(server)).generate([], GenerationSettings()) == []
        assert server.request_count == 0


def test_it_forwards_the_system_prompt_and_decoding_settings():
    settings = GenerationSettings(max_new_tokens=4, temperature=0.7, top_p=0.9, system_prompt="Be brief.")
    with FakeOpenAIServer() as server:
        backend = get_backend("openai", spec_for(server, extra_body={"top_k": 20, "top_p": None}))
        [result] = backend.generate([GenerationRequest("k", "one two three four five", seed=11)], settings)
        [body] = server.bodies

    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one two three four five"},
    ]
    assert body["model"] == "tiny-chat"
    assert body["seed"] == 11
    assert body["temperature"] == 0.7
    assert body["max_tokens"] == 4
    assert body["top_k"] == 20
    assert "top_p" not in body  # a null in extra_body removes the key
    assert result.text == "echo: one two three"  # cut at max_tokens words by the server
    assert result.completion_tokens == 4


def test_without_a_system_prompt_only_the_user_message_is_sent():
    with FakeOpenAIServer() as server:
        get_backend("openai", spec_for(server)).generate(requests_for("hello"), GenerationSettings(top_p=0.5))
        [body] = server.bodies
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["top_p"] == 0.5
    assert body["temperature"] == 0.0


def test_it_retries_after_server_errors_and_then_succeeds():
    with FakeOpenAIServer(fail_first=2, fail_status=500) as server:
        [result] = get_backend("openai", spec_for(server, max_retries=3)).generate(
            requests_for("hello"), GenerationSettings()
        )
        assert server.request_count == 3
    assert result.error is None
    assert result.text == "echo: hello (model tiny-chat)"


def test_it_gives_up_after_max_retries_with_the_status_in_the_error():
    with FakeOpenAIServer(fail_first=100, fail_status=503) as server:
        [result] = get_backend("openai", spec_for(server, max_retries=2)).generate(
            requests_for("hello"), GenerationSettings()
        )
        assert server.request_count == 3
    assert result.text is None
    assert result.error.startswith("HTTP 503: Injected failure 3.")
    assert "gave up after 3 attempts" in result.error
    assert result.latency_ms is None


def test_it_honours_retry_after_on_429():
    with FakeOpenAIServer(fail_first=1, fail_status=429, retry_after=0.4) as server:
        [result] = get_backend("openai", spec_for(server)).generate(requests_for("hello"), GenerationSettings())
        first, second = server.request_times
    assert result.error is None
    # backoff_s alone would wait about 1 ms; the header asks for 0.4 s.
    assert second - first >= 0.4


def test_retry_after_accepts_seconds_and_http_dates():
    assert _retry_after_s("3") == 3.0
    assert _retry_after_s("junk") is None
    assert _retry_after_s(None) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= _retry_after_s(later) <= 30
    earlier = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=30), usegmt=True)
    assert _retry_after_s(earlier) == 0.0


def test_a_client_error_is_not_retried_and_names_the_status_and_message():
    with FakeOpenAIServer(fail_first=100, fail_status=400) as server:
        [result] = get_backend("openai", spec_for(server, max_retries=3)).generate(
            requests_for("hello"), GenerationSettings()
        )
        assert server.request_count == 1
    assert result.error == "HTTP 400: Injected failure 1."


def test_a_timeout_is_an_error_result_after_retries():
    with FakeOpenAIServer(delay_s=0.5) as server:
        started = time.monotonic()
        results = get_backend("openai", spec_for(server, timeout_s=0.1, max_retries=1)).generate(
            requests_for("slow", "slower"), GenerationSettings()
        )
        elapsed = time.monotonic() - started
        assert server.request_count == 4
    for result in results:
        assert result.text is None
        assert result.error.startswith("timed out after 0.1 s")
        assert "gave up after 2 attempts" in result.error
    assert elapsed < 0.5 * 4  # requests were cut short, not waited out


def test_an_unreachable_server_is_a_connection_error_result():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 1, **FAST}
    [result] = get_backend("openai", spec).generate(requests_for("hello"), GenerationSettings())
    assert result.error.startswith("connection error: ConnectError")
    assert "gave up after 2 attempts" in result.error


def test_concurrency_reaches_but_never_exceeds_max_concurrency():
    with FakeOpenAIServer(delay_s=0.1) as server:
        results = get_backend("openai", spec_for(server, max_concurrency=3)).generate(
            requests_for(*[f"prompt {i}" for i in range(12)]), GenerationSettings()
        )
        assert server.request_count == 12
        assert server.max_in_flight == 3
    assert [r.text for r in results] == [f"echo: prompt {i} (model tiny-chat)" for i in range(12)]


def test_the_api_key_comes_from_the_named_variable_and_never_reaches_results(monkeypatch):
    monkeypatch.setenv("EVALSITE_KEY_TEST_API", "sk-test-secret-42")
    with FakeOpenAIServer(require_token="sk-test-secret-42") as server:
        results = get_backend("openai", spec_for(server, api_key_env="EVALSITE_KEY_TEST_API")).generate(
            requests_for("hello", "again"), GenerationSettings()
        )
        assert {h["authorization"] for h in server.headers} == {"Bearer sk-test-secret-42"}
    assert all(r.error is None for r in results)
    assert "sk-test-secret-42" not in repr(results)


def test_a_wrong_key_is_a_401_error_without_the_key(monkeypatch):
    monkeypatch.setenv("EVALSITE_KEY_TEST_API", "sk-wrong-key")
    with FakeOpenAIServer(require_token="sk-right-key") as server:
        [result] = get_backend("openai", spec_for(server, api_key_env="EVALSITE_KEY_TEST_API")).generate(
            requests_for("hello"), GenerationSettings()
        )
        assert server.request_count == 1
    assert result.error == "HTTP 401: Incorrect API key provided."


def test_without_api_key_env_no_authorization_header_is_sent():
    with FakeOpenAIServer() as server:
        get_backend("openai", spec_for(server)).generate(requests_for("hello"), GenerationSettings())
        [headers] = server.headers
    assert "authorization" not in headers


def test_an_unset_key_variable_is_a_backend_error_naming_it(monkeypatch):
    monkeypatch.delenv("EVALSITE_KEY_MISSING", raising=False)
    with pytest.raises(BackendError) as caught:
        get_backend("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "EVALSITE_KEY_MISSING"})
    assert caught.value.field == "api_key_env"
    assert "EVALSITE_KEY_MISSING is not set" in str(caught.value)


def test_the_fake_server_runs_as_a_separate_process():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.fake_openai", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fake OpenAI server listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        [result] = get_backend("openai", {"base_url": base_url, "model": "m"}).generate(
            requests_for("over the wire"), GenerationSettings()
        )
        assert result.text == "echo: over the wire (model m)"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
