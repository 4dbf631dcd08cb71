"""No API key, header or credential survives in error text: stored, shown or logged.

Each way an OpenAI-compatible endpoint can fail is produced for real by the fake server
on 127.0.0.1 (tests/helpers/fake_openai.py), most of them echoing the request's
``Authorization`` header back, and run through ``services.generation_run`` (the worker's
code) so the stored ``Output.error``, the study and progress pages and the log are checked.
"""
import base64
import logging
from urllib.parse import quote

import pytest
from django.urls import reverse

from annotation import services
from annotation.generation import GenerationRequest, GenerationSettings, Scrubber, environment_secrets, get_backend
from annotation.generation.base import ERROR_TEXT_LIMIT, SpecPolicy
from annotation.models import Output
from tests.conftest import PROMPTS_CSV, WORKER_API_KEY, WORKER_KEY_ENV, wait_for
from tests.helpers.fake_openai import FakeOpenAIServer

KEY_ENV = "EVALSITE_KEY_LEAK_TEST"
KEY = "sk-leak-3f9a8c7e1d2b4a6f0e5d"
FAST = {"backoff_s": 0.001}


def key_forms(key: str) -> list[str]:
    """The key as it could leak: plain, base64 (alone and as Basic user:key), URL-encoded."""
    raw = key.encode()
    return [key, base64.b64encode(raw).decode(), base64.b64encode(b"user:" + raw).decode()[8:],
            quote(key, safe=""), repr(key)[1:-1]]


def assert_no_key(text: str, key: str = KEY) -> None:
    for form in key_forms(key):
        assert form not in text
    assert "Bearer sk" not in text


# --- the scrubber on its own ------------------------------------------------------------


def test_the_scrubber_removes_the_key_in_every_encoding_it_knows():
    key = "sk/live+key=with:odd\nchars"
    scrub = Scrubber([key])
    texts = [
        f"the key {key} was refused",
        f"repr: {key!r}",
        f"basic: {base64.b64encode(f'user:{key}'.encode()).decode()}",
        f"alone: {base64.b64encode(key.encode()).decode()}",
        f"urlsafe: {base64.urlsafe_b64encode(f'ab:{key}'.encode()).decode()}",
        f"query: ?k={quote(key, safe='')}",
    ]
    for text in texts:
        cleaned = scrub(text)
        assert "[removed]" in cleaned, text
        for form in (key, repr(key)[1:-1], quote(key, safe=""), base64.b64encode(key.encode()).decode()):
            assert form not in cleaned


@pytest.mark.parametrize(
    "dump",
    [
        "Authorization: Bearer abc.def-ghi\r\nHost: internal:8000\r\nCookie: session=xyz",
        '{"headers": {"authorization": "Bearer abc.def-ghi", "cookie": "session=xyz", "host": "internal:8000"}}',
        "{'Authorization': 'Bearer abc.def-ghi', 'Cookie': 'session=xyz', 'Host': 'internal:8000'}",
        "illegal header line: bytearray(b'Authorization: Bearer abc.def-ghi')",
        "proxy said Bearer abc.def-ghi is invalid; Cookie=session=xyz; Host=internal:8000",
    ],
)
def test_the_scrubber_removes_header_values_and_bearer_tokens_it_was_not_told_about(dump):
    cleaned = Scrubber()(dump)
    assert "abc.def-ghi" not in cleaned and "session=xyz" not in cleaned and "internal:8000" not in cleaned


def test_the_scrubber_trims_after_removing_so_no_half_key_survives_the_cut():
    text = "x" * (ERROR_TEXT_LIMIT - 10) + KEY + "y" * 1000
    cleaned = Scrubber([KEY])(text)
    assert len(cleaned) == ERROR_TEXT_LIMIT and cleaned.endswith("…")
    assert KEY[:10] not in cleaned


def test_the_scrubber_drops_nul_and_lone_surrogates_which_the_database_refuses():
    cleaned = Scrubber()("bad\x00byte and \ud800 surrogate")
    assert "\x00" not in cleaned
    cleaned.encode("utf-8")  # would raise on a lone surrogate


def test_environment_secrets_are_the_key_variables_credentials_and_url_passwords():
    environ = {
        "EVALSITE_KEY_A": "sk-aaaaaaaa", "HF_TOKEN": "hf_bbbbbbbb", "SOME_PASSWORD": "cccccccc",
        "DATABASE_URL": "postgres://app:dbpass123@db:5432/x", "HOME": "/home/someone", "LANG": "C.UTF-8",
        # settings and paths that merely mention a credential word are not secrets
        "EVALSITE_API_KEY_ENVS": "EVALSITE_KEY_*", "TOKENIZERS_PARALLELISM": "false", "PWD": "/work/main",
    }
    found = environment_secrets(SpecPolicy(), environ)
    assert set(found) == {"sk-aaaaaaaa", "hf_bbbbbbbb", "cccccccc", "dbpass123"}


def test_a_backend_error_result_never_holds_the_key_even_without_the_service(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(echo_headers="wrong_shape") as server:
        backend = get_backend("openai", {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV, **FAST})
        [result] = backend.generate([GenerationRequest("k", "hi", 0)], GenerationSettings())
        assert server.headers[0]["authorization"] == f"Bearer {KEY}"  # the key was sent, and echoed
    assert result.error.startswith("malformed response (KeyError")
    assert_no_key(result.error)


# --- every path, through the service the worker runs -------------------------------------


def _study(evaluator):
    return services.study_create(name="Secrets", created_by=evaluator, prompts_data=PROMPTS_CSV,
                                 prompts_filename="p.csv", generation_settings={"max_new_tokens": 8})


def _generate(study, spec):
    """Add the candidate, queue its outputs and run their batch in this process, as a worker would."""
    cand = services.candidate_create(study=study, name="leaky", backend="openai", spec=spec)
    assert services.generation_start(study=study) == 4
    ids = list(cand.outputs.values_list("pk", flat=True))
    services.generation_run(candidate_id=cand.pk, output_ids=ids, claim="test-run")
    return list(cand.outputs.order_by("pk"))


PATHS = {
    # name: (fake server settings, spec overrides, the start of the stored error)
    "http error echoing the headers": ({"echo_headers": "error", "fail_status": 400}, {}, "HTTP 400: upstream refused"),
    "retried 5xx echoing the headers": ({"echo_headers": "error", "fail_status": 502}, {"max_retries": 1},
                                        "HTTP 502: upstream refused"),
    "malformed 200 (not JSON) echoing the headers": ({"echo_headers": "malformed"}, {},
                                                     "malformed response (JSONDecodeError"),
    "malformed 200 (wrong JSON) echoing the headers": ({"echo_headers": "wrong_shape"}, {},
                                                       "malformed response (KeyError"),
    "connection error quoting the header": ({"echo_headers": "bad_header"}, {"max_retries": 0},
                                            "connection error: RemoteProtocolError"),
    "timeout": ({"delay_s": 0.6}, {"timeout_s": 0.1, "max_retries": 0, "max_concurrency": 4}, "timed out after 0.1 s"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("path", list(PATHS))
def test_no_error_path_stores_shows_or_logs_the_key(path, evaluator, client, caplog, monkeypatch):
    server_kwargs, spec_overrides, error_start = PATHS[path]
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    study = _study(evaluator)
    with FakeOpenAIServer(**server_kwargs) as server:
        outputs = _generate(study, {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV,
                                    **FAST, **spec_overrides})
        assert {h["authorization"] for h in server.headers} == {f"Bearer {KEY}"}  # the key did go out
    assert [o.status for o in outputs] == [Output.Status.FAILED] * 4
    for output in outputs:
        assert output.error.startswith(error_start), output.error
        assert len(output.error) <= ERROR_TEXT_LIMIT
        assert_no_key(output.error)
    client.force_login(evaluator)
    for name in ("annotation:study", "annotation:progress"):
        response = client.get(reverse(name, args=[study.pk]))
        assert response.status_code == 200
        html = response.content.decode()
        assert error_start.split(" (")[0].split(":")[0] in html  # the error is shown...
        assert_no_key(html)  # ...without the key
    assert_no_key(caplog.text)


@pytest.mark.django_db
def test_an_exception_inside_the_backend_is_stored_and_logged_without_the_key(evaluator, client, caplog,
                                                                              monkeypatch):
    # A key with a character HTTP headers cannot carry: the client library raises while it
    # builds the request, outside any per-request handling, so the whole batch fails.
    key = "sk-leak-é3f9a8c7e1d2b4a6f0e5d"
    monkeypatch.setenv(KEY_ENV, key)
    caplog.set_level(logging.DEBUG)
    study = _study(evaluator)
    with FakeOpenAIServer() as server:
        outputs = _generate(study, {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV, **FAST})
        assert server.request_count == 0
    assert all(o.status == Output.Status.FAILED and o.error.startswith("UnicodeEncodeError") for o in outputs)
    assert "generation failed for candidate" in caplog.text and "Traceback" in caplog.text
    client.force_login(evaluator)
    html = client.get(reverse("annotation:progress", args=[study.pk])).content.decode()
    assert "UnicodeEncodeError" in html
    for text in [o.error for o in outputs] + [html, caplog.text]:
        assert_no_key(text, key)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_keeps_an_echoed_key_out_of_the_database_pages_and_its_log(celery_worker_process, evaluator,
                                                                                 client):
    """The reported case: a 200 that is not the expected JSON and echoes ``Authorization``."""
    study = _study(evaluator)
    with FakeOpenAIServer(echo_headers="malformed") as server:
        services.candidate_create(study=study, name="echo", backend="openai", spec={
            "base_url": server.base_url, "model": "m", "api_key_env": WORKER_KEY_ENV, "max_retries": 0})
        services.generation_start(study=study)
        wait_for(lambda: not study.outputs.exclude(status=Output.Status.FAILED).exists(),
                 what="the echoing endpoint's failures", worker=celery_worker_process)
        assert {h["authorization"] for h in server.headers} == {f"Bearer {WORKER_API_KEY}"}
    errors = list(study.outputs.values_list("error", flat=True))
    assert len(errors) == 4 and all(e.startswith("malformed response (JSONDecodeError") for e in errors)
    client.force_login(evaluator)
    pages = [client.get(reverse(name, args=[study.pk])).content.decode()
             for name in ("annotation:study", "annotation:progress")]
    assert all("malformed response" in page for page in pages)
    for text in errors + pages + [celery_worker_process.log_path.read_text()]:
        assert_no_key(text, WORKER_API_KEY)
