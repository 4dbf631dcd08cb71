"""Deployment defaults, checked as an operator meets them: `manage.py` and a server started with
a deployment's environment variables, in processes of their own."""
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Variables a developer or CI may have set that would change what these processes see.
_CLEARED = ("DEBUG", "SECRET_KEY", "SECRET_KEY_FALLBACKS", "ALLOWED_HOSTS", "EVALSITE_HTTPS",
            "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "CSRF_COOKIE_HTTPONLY",
            "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
            "EVALSITE_TRUST_X_FORWARDED_PROTO", "DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL",
            "CELERY_RESULT_BACKEND", "DJANGO_SETTINGS_MODULE",
            "DJANGO_ALLOW_ASYNC_UNSAFE")  # set by the browser tests' conftest, refused by check --deploy


def _env(tmp_path, **variables) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(DJANGO_SETTINGS_MODULE="evalsite.settings", EVALSITE_VAR_DIR=str(tmp_path / "var"))
    env.update(variables)
    return env


def _production(tmp_path, **variables) -> dict:
    return _env(tmp_path, **{"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50),
                             "ALLOWED_HOSTS": "evalsite.example.org", **variables})


def _manage(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _settings(env, *names) -> dict:
    code = ("import django, json; django.setup(); from django.conf import settings; "
            f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_check_deploy_passes_with_the_production_variables(tmp_path):
    result = _manage(_production(tmp_path, EVALSITE_HTTPS="1"), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_without_evalsite_https_and_names_each_missing_protection(tmp_path):
    result = _manage(_production(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    for warning, setting in [("security.W004", "SECURE_HSTS_SECONDS"), ("security.W008", "SECURE_SSL_REDIRECT"),
                             ("security.W012", "SESSION_COOKIE_SECURE"), ("security.W016", "CSRF_COOKIE_SECURE")]:
        assert warning in result.stderr and setting in result.stderr, result.stderr


@pytest.mark.parametrize("key, why", [
    ("", "SECRET_KEY is blank"),
    ("   ", "SECRET_KEY is blank"),
    ("bench-secret-key", "SECRET_KEY is too weak (16 characters"),
    ("ab" * 40, "SECRET_KEY is too weak (80 characters, 2 distinct"),
    ("django-insecure-" + secrets.token_urlsafe(50), "SECRET_KEY starts with 'django-insecure-'"),
])
def test_start_up_with_debug_off_refuses_a_blank_or_weak_secret_key(tmp_path, key, why):
    result = _manage(_env(tmp_path, DEBUG="0", SECRET_KEY=key, ALLOWED_HOSTS="evalsite.example.org"), "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and why in result.stderr, result.stderr


def test_start_up_refuses_a_weak_key_among_the_fallbacks(tmp_path):
    env = _production(tmp_path, SECRET_KEY_FALLBACKS=f"{secrets.token_urlsafe(50)},short-old-key")
    result = _manage(env, "check")
    assert result.returncode != 0 and "SECRET_KEY_FALLBACKS is too weak" in result.stderr, result.stderr


def test_debug_is_off_unless_the_environment_turns_it_on(tmp_path):
    assert _settings(_production(tmp_path), "DEBUG")["DEBUG"] is False
    # the local demo (`make run` sets DEBUG=1) starts without any key
    demo = _settings(_env(tmp_path, DEBUG="1"), "DEBUG", "SECRET_KEY")
    assert demo["DEBUG"] is True and demo["SECRET_KEY"]


def test_evalsite_https_turns_each_protection_on_and_each_can_be_set_on_its_own(tmp_path):
    names = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
             "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER")
    plain = _settings(_production(tmp_path), *names)
    assert plain == {**dict.fromkeys(names, False), "SECURE_HSTS_SECONDS": 0, "SECURE_PROXY_SSL_HEADER": None}
    https = _settings(_production(tmp_path, EVALSITE_HTTPS="1"), *names)
    assert https == {"SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
                     "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
                     "SECURE_HSTS_PRELOAD": False, "SECURE_PROXY_SSL_HEADER": None}
    tuned = _settings(_production(tmp_path, EVALSITE_HTTPS="1", SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="600",
                                  SECURE_HSTS_PRELOAD="1", EVALSITE_TRUST_X_FORWARDED_PROTO="1"), *names)
    assert tuned == {**https, "SECURE_SSL_REDIRECT": False, "SECURE_HSTS_SECONDS": 600, "SECURE_HSTS_PRELOAD": True,
                     "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def https_behind_a_proxy(tmp_path):
    """The web server as deployed behind a TLS-ending proxy: DEBUG off, EVALSITE_HTTPS=1, and
    X-Forwarded-Proto trusted."""
    port = _free_port()
    env = _production(tmp_path, EVALSITE_HTTPS="1", EVALSITE_TRUST_X_FORWARDED_PROTO="1",
                      ALLOWED_HOSTS="evalsite.example.org")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _get(port, path, **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": "evalsite.example.org", **headers})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_behind_a_proxy_plain_http_is_redirected_and_https_pages_send_hsts_and_secure_cookies(https_behind_a_proxy):
    port = https_behind_a_proxy
    plain = _get(port, "/login/")
    assert plain.status == 301 and plain.getheader("Location") == "https://evalsite.example.org/login/"
    # the proxy says the client's connection was HTTPS
    page = _get(port, "/login/", **{"X-Forwarded-Proto": "https"})
    assert page.status == 200
    assert page.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
    csrf_cookie = next(c for c in page.headers.get_all("Set-Cookie") if c.startswith("csrftoken="))
    assert "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie and "SameSite=Lax" in csrf_cookie
    assert "frame-ancestors 'none'" in page.getheader("Content-Security-Policy")
    # a load balancer's plain-HTTP health probe is answered, not redirected
    assert _get(port, "/healthz").status == 200


@pytest.mark.parametrize("variable", ["AXES_FAILURE_LIMIT", "AXES_COOLOFF_MINUTES"])
def test_start_up_refuses_a_throttle_that_would_never_lock(tmp_path, variable):
    result = _manage(_production(tmp_path, **{variable: "0"}), "check")
    assert result.returncode != 0, result.stdout
    assert "AXES_FAILURE_LIMIT and AXES_COOLOFF_MINUTES must each be at least 1" in result.stderr, result.stderr


def test_media_go_to_a_private_s3_bucket_when_one_is_named(tmp_path):
    """EVALSITE_S3_BUCKET switches the media storage to django-storages' S3 backend (nothing is
    sent: building the storage contacts no server); without it media stay on the filesystem."""
    code = ("import django; django.setup(); from django.core.files.storage import storages; s = storages['default']; "
            "import json; print(json.dumps([type(s).__module__ + '.' + type(s).__name__, "
            "getattr(s, 'bucket_name', None), getattr(s, 'location', None), getattr(s, 'endpoint_url', None), "
            "getattr(s, 'default_acl', 'n/a'), getattr(s, 'querystring_auth', None)]))")

    def storage(env) -> list:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    s3 = storage(_production(tmp_path, EVALSITE_S3_BUCKET="evalsite-media", AWS_S3_ENDPOINT_URL="http://minio:9000",
                             AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s"))
    assert s3 == ["storages.backends.s3.S3Storage", "evalsite-media", "media", "http://minio:9000", None, True]
    local = storage(_production(tmp_path))
    assert local[0] == "django.core.files.storage.filesystem.FileSystemStorage"
