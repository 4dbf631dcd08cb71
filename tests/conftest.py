"""Shared fixtures: people, a ready-to-annotate study, and a real Celery worker process."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from annotation import services
from annotation.models import StudyMember

ROOT = Path(__file__).resolve().parent.parent
WORKER_API_KEY = "sk-test-worker-key"
# An allowed name under the default EVALSITE_API_KEY_ENVS (EVALSITE_KEY_*); the worker has it.
WORKER_KEY_ENV = "EVALSITE_KEY_TEST_LLM"
# The candidate-spec policy every test starts from (the defaults, with pytest's temporary
# directory as the one model root, so tiny_models and tmp_path models are inside it): set
# in-process below and in the worker's environment, whatever the developer's shell says.
SPEC_POLICY_ENV = {
    "EVALSITE_API_KEY_ENVS": "EVALSITE_KEY_*",
    "EVALSITE_TRUST_REMOTE_CODE": "0",
    "EVALSITE_ALLOW_HUB_IDS": "1",
    "EVALSITE_BASE_URLS": "",
}
# Test workers beat every second, so a row removed by a test's table flush is back at once and
# a killed worker's outputs are queued again within seconds (annotation.heartbeat).
WORKER_LIVENESS_ENV = {"EVALSITE_WORKER_HEARTBEAT_SECONDS": "1", "EVALSITE_WORKER_DEAD_SECONDS": "4"}


def pytest_configure(config):
    # Password hashing is deliberately slow; tests create many users and test no hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    _flush_retries_deadlocks()


def _flush_retries_deadlocks():
    """A transactional test's table flush tries again when PostgreSQL picks it as a deadlock victim.

    The session's Celery worker shares the test database: it beats every second and runs the
    refreshes earlier tests queued, in transactions over several tables.  ``TRUNCATE`` of every
    table takes its locks one table at a time, so it can deadlock with such a transaction, and
    PostgreSQL then aborts one of the two.  A deadlock victim is meant to try again; the flush did
    not, and the next test started on the previous test's rows.
    """
    from django.db import OperationalError
    from django.db.backends.base.operations import BaseDatabaseOperations

    plain = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        for attempt in range(5):
            try:
                return plain(self, sql_list)
            except OperationalError as exc:
                if "deadlock" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, *, staff: bool = False):
        user = django_user_model.objects.create_user(username=username, password=f"{username}-pw", is_staff=staff)
        return user

    return make


@pytest.fixture(scope="session", autouse=True)
def spec_policy_settings(tmp_path_factory):
    """Model roots = pytest's base temporary directory; the other policy settings at their defaults."""
    root = str(tmp_path_factory.getbasetemp())
    settings.EVALSITE_MODEL_ROOTS = [root]
    settings.EVALSITE_API_KEY_ENVS = ["EVALSITE_KEY_*"]
    settings.EVALSITE_TRUST_REMOTE_CODE = False
    settings.EVALSITE_ALLOW_HUB_IDS = True
    settings.EVALSITE_BASE_URLS = []
    return {**SPEC_POLICY_ENV, "EVALSITE_MODEL_ROOTS": root}


def grant_study_creation(user):
    """The one permission that lets a user create studies (not staff status)."""
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(content_type__app_label="annotation", codename="add_study"))
    return user


@pytest.fixture
def evaluator(make_user):
    return grant_study_creation(make_user("eve"))


@pytest.fixture
def annotators(make_user):
    return [make_user(f"ann{i}") for i in range(1, 4)]


@pytest.fixture
def manager(make_user):
    return make_user("manny")


PROMPTS_CSV = (
    "id,prompt,reference,tags\n"
    "p1,How do I reset my password?,Use the reset link.,account;easy\n"
    "p2,Where is my order?,Check the tracking page.,shipping\n"
    "p3,Can I get a refund?,Yes within 30 days.,billing;hard\n"
    "p4,How do I cancel?,Settings then cancel.,account\n"
).encode()


def on_screen(html: str) -> str:
    """A task page without the next task it holds hidden (``<template id="task-ahead">``)."""
    import re

    return re.sub(r'<template id="task-ahead">.*?</template>', "", html, flags=re.S)


def imported_jsonl(texts: dict[str, str]) -> bytes:
    import json

    return "\n".join(json.dumps({"prompt_id": k, "output": v, "latency_ms": 12.5, "cost": 0.001})
                     for k, v in texts.items()).encode()


@pytest.fixture
def study_factory(evaluator, annotators, manager):
    """A study whose candidates are imported, so its pairs exist without generation."""

    def make(*, candidates=("alpha-model", "beta-model", "gamma-model"), overlap: int = 1, prompts=PROMPTS_CSV):
        study = services.study_create(
            name="Support study", created_by=evaluator, prompts_data=prompts, prompts_filename="p.csv",
            overlap=overlap, annotators=annotators, managers=[manager],
        )
        ids = list(study.prompts.values_list("external_id", flat=True))
        for n, name in enumerate(candidates):
            cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
            services.outputs_import(
                candidate=cand, data=imported_jsonl({pid: f"Variant {n} answer to {pid}" for pid in ids}),
                filename="out.jsonl",
            )
        return study

    return make


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from annotation.generation.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "causal": str(build_tiny_model(root / "causal", kind="causal", seed=1)),
        "seq2seq": str(build_tiny_model(root / "seq2seq", kind="seq2seq", seed=2)),
    }


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    auth = f"{user}:{s['PASSWORD']}@" if s.get("PASSWORD") else f"{user}@"
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def _purge_queue() -> None:
    from evalsite.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        queue_dir = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        shutil.rmtree(queue_dir, ignore_errors=True)
        queue_dir.mkdir(parents=True, exist_ok=True)
        return
    with app.connection_for_write() as conn:
        for queue in (settings.QUEUE_GENERATION, settings.QUEUE_AGGREGATION):
            try:
                conn.default_channel.queue_purge(queue)
            except Exception:  # the queue does not exist yet
                pass


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory, spec_policy_settings):
    """A real ``celery worker`` process on the configured broker and the test database."""
    with django_db_blocker.unblock():
        url = _database_url()
    _purge_queue()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "DATABASE_URL": url, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           WORKER_KEY_ENV: WORKER_API_KEY, **spec_policy_settings, **WORKER_LIVENESS_ENV}
    cmd = [sys.executable, "-m", "celery", "-A", "evalsite", "worker", "--loglevel", "INFO",
           "--concurrency", "1", "--without-mingle", "--without-gossip",
           "--queues", f"{settings.QUEUE_GENERATION},{settings.QUEUE_AGGREGATION}", "--hostname", f"test-{os.getpid()}@%h"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    proc.log_path = log
    yield proc
    proc.terminate()  # warm shutdown: the main process stops its pool and closes connections
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:  # nothing of the worker may hold the test database open when it is dropped
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.5)


def client_for(user):
    """A test client signed in as ``user`` (force_login: sign-in throttling needs a request)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def wait_for(predicate, *, timeout: float = 120.0, interval: float = 0.25, what: str = "condition", worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = worker.log_path.read_text()[-3000:] if worker is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


__all__ = ["StudyMember", "wait_for", "imported_jsonl", "PROMPTS_CSV"]
