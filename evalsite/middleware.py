"""Refuse a request body that is too big before anything reads it.

Django parses a multipart body when a view (or the CSRF check) first touches
``request.POST``, spooling files to disk as it goes: a 2 GB upload would be written out
in full before the view could look at its size. This middleware sits before the CSRF
check and answers 413 from the declared ``Content-Length`` alone, so such a body is
never read. (A body without a ``Content-Length`` is not read by Django at all.)
"""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0  # Django reads such a body as empty
        limit = settings.EVALSITE_REQUEST_MAX_BYTES
        if declared > limit:
            return self._refuse(request, declared, limit)
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, declared: int, limit: int) -> HttpResponse:
        message = (
            f"The request is {_megabytes(declared)}; the limit is {_megabytes(limit)} "
            f"(EVALSITE_REQUEST_MAX_BYTES), which allows an uploaded file of up to "
            f"{_megabytes(settings.EVALSITE_UPLOAD_MAX_BYTES)} (EVALSITE_UPLOAD_MAX_BYTES). "
            "Nothing was read or saved."
        )
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": message}, status=413)
        else:
            response = HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        # No "Connection: close": WSGI leaves hop-by-hop headers to the server (granian and
        # gunicorn deal with the unread body; runserver refuses the header outright).
        return response
