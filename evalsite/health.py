"""``GET /healthz``: is the database reachable, is the broker reachable.

Each part is "ok" or "degraded"; why a part failed goes to the log, never into the response,
which anyone can read (an exception's text can name hosts, users or paths).
"""
from __future__ import annotations

import logging
import time

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _check_database() -> dict:
    start = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        logger.exception("healthz: the database (%s) is unreachable", connection.vendor)
        return {"status": "degraded", "vendor": connection.vendor}
    return {"status": "ok", "vendor": connection.vendor, "ms": _ms_since(start)}


def _check_broker() -> dict:
    from evalsite.celery import app

    start = time.perf_counter()
    transport = (app.conf.broker_url or "").split("://", 1)[0]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        logger.exception("healthz: the broker (%s) is unreachable", transport)
        return {"status": "degraded", "transport": transport}
    return {"status": "ok", "transport": transport, "ms": _ms_since(start)}


@require_GET
def healthz(request):
    parts = {"database": _check_database(), "broker": _check_broker()}
    ok = all(part["status"] == "ok" for part in parts.values())
    return JsonResponse({"status": "ok" if ok else "degraded", **parts}, status=200 if ok else 503)
