"""Sign-in throttling: the sign-in page and the API's Basic auth count failures per username and
address, and refuse that pair for a cool-off once the limit is reached, saying so."""
import base64
import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.urls import reverse

pytestmark = pytest.mark.django_db

LOCKED = re.compile(r"Too many failed sign-ins for this account; try again in (\d+) minutes?\.")
API_URL = "/api/studies/999999/progress"  # authentication is decided before the study is looked up


def _sign_in(client, username, password, **extra):
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def _basic(client, username, password, **extra):
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return client.get(API_URL, HTTP_AUTHORIZATION=f"Basic {token}", **extra)


def _signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_five_wrong_passwords_lock_the_account_from_that_address_even_for_the_right_password(client, make_user):
    make_user("vera")
    make_user("walt")
    for _ in range(4):
        response = _sign_in(client, "vera", "wrong")
        assert response.status_code == 200 and b"didn't match" in response.content
    fifth = _sign_in(client, "vera", "wrong")
    assert fifth.status_code == 429
    assert LOCKED.search(fifth.content.decode()).group(1) == "15" and fifth["Retry-After"] == "900"

    right = _sign_in(client, "vera", "vera-pw")
    assert right.status_code == 429 and LOCKED.search(right.content.decode())
    assert b'name="username"' in right.content  # the sign-in form is still there, for later
    assert not _signed_in(client)
    assert client.get(reverse("annotation:home")).status_code == 302  # still signed out
    # refused attempts do not extend the cool-off
    assert AccessAttempt.objects.get(username="vera").failures_since_start == 5

    # another account from the same address, and the same account from another address, are not locked
    assert _sign_in(client, "walt", "walt-pw").status_code == 302 and _signed_in(client)
    client.logout()
    assert _sign_in(client, "vera", "vera-pw", REMOTE_ADDR="10.1.2.3").status_code == 302 and _signed_in(client)


def test_the_lock_lifts_when_the_cool_off_has_passed(client, make_user):
    make_user("vera")
    for _ in range(5):
        _sign_in(client, "vera", "wrong")
    AccessAttempt.objects.filter(username="vera").update(
        attempt_time=AccessAttempt.objects.get(username="vera").attempt_time - timedelta(minutes=14))
    assert LOCKED.search(_sign_in(client, "vera", "vera-pw").content.decode()).group(1) == "1"
    AccessAttempt.objects.filter(username="vera").update(
        attempt_time=AccessAttempt.objects.get(username="vera").attempt_time - timedelta(minutes=2))
    assert _sign_in(client, "vera", "vera-pw").status_code == 302 and _signed_in(client)


def test_a_successful_sign_in_clears_the_count(client, make_user):
    make_user("vera")
    for _ in range(4):
        _sign_in(client, "vera", "wrong")
    assert _sign_in(client, "vera", "vera-pw").status_code == 302
    client.logout()
    for _ in range(4):
        assert _sign_in(client, "vera", "wrong").status_code == 200


def test_the_apis_basic_auth_counts_failures_and_answers_a_lockout_with_json_429(client, make_user):
    make_user("vera")
    make_user("walt")
    for _ in range(4):
        response = _basic(client, "vera", "wrong")
        # 401 with a challenge: the API's first authentication class (Token) names its scheme
        assert response.status_code == 401 and response.json() == {"detail": "Invalid username/password."}
        assert response["WWW-Authenticate"] == "Token"
    fifth = _basic(client, "vera", "wrong")
    assert fifth.status_code == 429 and fifth["Content-Type"] == "application/json"
    assert LOCKED.fullmatch(fifth.json()["detail"]).group(1) == "15" and fifth["Retry-After"] == "900"
    right = _basic(client, "vera", "vera-pw")
    assert right.status_code == 429 and LOCKED.fullmatch(right.json()["detail"])
    # the lock is the account's on this address, on the sign-in page too
    assert LOCKED.search(_sign_in(client, "vera", "vera-pw").content.decode())
    # another account passes authentication (and is then told the study does not exist for it)
    assert _basic(client, "walt", "walt-pw").status_code not in (401, 403, 429)


def test_failures_on_the_sign_in_page_and_the_api_add_up(client, make_user):
    make_user("vera")
    for _ in range(3):
        _sign_in(client, "vera", "wrong")
    assert _basic(client, "vera", "wrong").status_code == 401
    assert _basic(client, "vera", "wrong").status_code == 429


def test_basic_auth_refuses_credentials_the_failure_log_could_not_store(client):
    nul = _basic(client, "ve\x00ra", "wrong")
    assert nul.status_code == 401 and "username: contains a NUL character" in nul.json()["detail"]
    long = _basic(client, "v" * 300, "wrong")
    assert long.status_code == 401 and "a username has at most 150" in long.json()["detail"]
    assert not AccessAttempt.objects.exists()


def test_behind_proxies_failures_are_counted_against_the_address_the_proxy_saw(client, make_user, settings):
    settings.EVALSITE_PROXY_COUNT = 1
    make_user("vera")
    for _ in range(5):
        _sign_in(client, "vera", "wrong", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7")
    assert AccessAttempt.objects.get(username="vera").ip_address == "198.51.100.7"
    # a forged left-hand entry changes nothing: the proxy's own entry still counts
    assert _sign_in(client, "vera", "vera-pw", HTTP_X_FORWARDED_FOR="192.0.2.1, 198.51.100.7").status_code == 429
    assert _sign_in(client, "vera", "vera-pw", HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 302
    client.logout()
    # a forwarded value that is not an address is ignored (the connection's address counts)
    assert _sign_in(client, "vera", "wrong", HTTP_X_FORWARDED_FOR="not-an-ip").status_code == 200
    assert AccessAttempt.objects.filter(ip_address="127.0.0.1").exists()
