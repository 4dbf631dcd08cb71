import logging
import socket


def test_healthz_reports_database_and_broker(client, db):
    response = client.get("/healthz")
    data = response.json()
    assert response.status_code == 200, data
    assert data["status"] == "ok"
    assert data["database"]["status"] == "ok" and data["database"]["vendor"] in ("sqlite", "postgresql")
    assert data["broker"]["status"] == "ok" and data["broker"]["transport"] in ("filesystem", "redis", "amqp")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: nothing listens there


def test_an_unreachable_broker_is_reported_degraded_with_the_reason_only_in_the_log(
        client, db, monkeypatch, caplog):
    port = _closed_port()
    # Celery reads the broker URL from this variable before its settings, at each connection
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
    with caplog.at_level(logging.ERROR, logger="evalsite.health"):
        response = client.get("/healthz")
    data = response.json()
    assert response.status_code == 503, data
    assert data == {"status": "degraded", "database": data["database"],
                    "broker": {"status": "degraded", "transport": "redis"}}
    assert data["database"]["status"] == "ok"
    body = response.content.decode()
    assert str(port) not in body and "refused" not in body.lower() and "error" not in body.lower()
    # the operator still learns why, from the log
    assert "broker (redis) is unreachable" in caplog.text and str(port) in caplog.text


def test_healthz_refuses_post(client, db):
    assert client.post("/healthz").status_code == 405


def test_the_web_process_starts_without_torch():
    import subprocess
    import sys

    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'evalsite.settings'); "
        "django.setup(); import evalsite.urls, annotation.views, arena.views, annotation.tasks, arena.tasks, "
        "metrics.views, metrics.services, metrics.tasks; "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
