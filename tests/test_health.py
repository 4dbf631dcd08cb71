def test_healthz_reports_database_and_broker(client, db):
    response = client.get("/healthz")
    data = response.json()
    assert response.status_code == 200, data
    assert data["status"] == "ok"
    assert data["database"]["ok"] is True and data["database"]["vendor"] in ("sqlite", "postgresql")
    assert data["broker"]["ok"] is True and data["broker"]["transport"] in ("filesystem", "redis", "amqp")


def test_healthz_refuses_post(client, db):
    assert client.post("/healthz").status_code == 405


def test_the_web_process_starts_without_torch():
    import subprocess
    import sys

    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'evalsite.settings'); "
        "django.setup(); import evalsite.urls, annotation.views, arena.views, annotation.tasks, arena.tasks; "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
