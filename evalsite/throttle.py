"""Sign-in throttling with django-axes: the lockout message, the sign-in page and API error that
carry it, and the client address that failures are counted against.

Axes counts failed sign-ins per (username, client IP) through its authentication backend and
the ``user_login_failed`` signal; the sign-in form and the API's Basic auth both go through
``django.contrib.auth.authenticate``, so both are counted and both are refused during a lockout.
"""
from __future__ import annotations

import ipaddress
import math

from axes.helpers import get_client_username, get_cool_off
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Max
from django.shortcuts import render
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication

from evalsite.auth import credentials_problem


def lockout_seconds_left(username: str | None, ip_address: str | None) -> int:
    """Seconds until ``username`` may try again from ``ip_address``: the cool-off runs from the
    last counted failure (attempts refused during a lockout are not counted, so it does not move)."""
    from axes.models import AccessAttempt

    cool_off = get_cool_off().total_seconds()
    last = AccessAttempt.objects.filter(username=username, ip_address=ip_address).aggregate(
        t=Max("attempt_time"))["t"]
    if last is None:
        return int(cool_off)
    return max(1, math.ceil(cool_off - (timezone.now() - last).total_seconds()))


def lockout_message(seconds_left: int) -> str:
    minutes = max(1, math.ceil(seconds_left / 60))
    return (f"Too many failed sign-ins for this account; try again in {minutes} "
            f"minute{'' if minutes == 1 else 's'}.")


def lockout_response(request, original_response=None, credentials=None):
    """``AXES_LOCKOUT_CALLABLE``: the sign-in page again, saying why and for how long (429)."""
    seconds = lockout_seconds_left(get_client_username(request, credentials), request.axes_ip_address)
    context = {
        "form": AuthenticationForm(request),
        "lockout_message": lockout_message(seconds),
        "next": request.POST.get("next") or request.GET.get("next", ""),
    }
    response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


class SignInLockedOut(exceptions.APIException):
    status_code = 429
    default_code = "sign_in_locked_out"

    def __init__(self, seconds_left: int):
        super().__init__(lockout_message(seconds_left))
        self.wait = seconds_left  # DRF's exception handler turns this into Retry-After


class LockoutAwareBasicAuthentication(BasicAuthentication):
    """DRF's Basic auth, answering a locked-out client with 429 and the lockout message.

    Axes marks a refused or lockout-reaching attempt on the request DRF passes to
    ``authenticate`` (DRF's own ``Request``, which axes' middleware never sees), so the answer
    is made here.  Credentials no account can have are refused first, saying why: axes would
    otherwise look them up and log them, and PostgreSQL refuses a NUL in either.
    """

    def authenticate_credentials(self, userid, password, request=None):
        problem = credentials_problem(userid, password)
        if problem:
            raise exceptions.AuthenticationFailed(f"Invalid username/password: {problem}.")
        try:
            return super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            if request is not None and getattr(request, "axes_locked_out", False):
                raise SignInLockedOut(lockout_seconds_left(userid, request.axes_ip_address)) from None
            raise


def client_ip(request) -> str | None:
    """``AXES_CLIENT_IP_CALLABLE``: the address failures are counted against.

    ``REMOTE_ADDR``, unless ``EVALSITE_PROXY_COUNT`` reverse proxies that append to
    X-Forwarded-For stand in front: then the address the outermost of them saw.  A forwarded
    value that is not an IP address is ignored (a client could send anything there).
    """
    remote = request.META.get("REMOTE_ADDR")
    count = settings.EVALSITE_PROXY_COUNT
    if count > 0:
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= count:
            try:
                return str(ipaddress.ip_address(hops[-count]))
            except ValueError:
                pass
    return remote
