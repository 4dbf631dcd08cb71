"""Evalsite settings, read from the environment.

Defaults give a checkout that just runs: SQLite under ``var/`` and kombu's filesystem
broker, so no server is needed.  ``DATABASE_URL`` selects PostgreSQL and
``CELERY_BROKER_URL`` selects Redis or RabbitMQ for real deployments.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


VAR_DIR = Path(os.environ.get("EVALSITE_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "annotation",
    "arena",
    "metrics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "evalsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "evalsite.wsgi.application"

_SQLITE_PATH = VAR_DIR / "evalsite.sqlite3"
DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL", default=f"sqlite:///{_SQLITE_PATH}",
        # Persistent connections (a vote costs a handful of queries; a new connection costs more),
        # checked before reuse so a restarted database does not fail the first request.
        conn_max_age=envint("CONN_MAX_AGE", 600), conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and envbool("DATABASE_PREPARED", True):
    # Server-side parameter binding lets psycopg prepare a statement after its fifth use on a
    # connection, so the vote path's statements are planned once per connection.
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; IMMEDIATE takes the write
    # lock at BEGIN so two writers queue instead of failing with "database is locked".
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file (not :memory:) so that a Celery worker process can see the test database.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("EVALSITE_TEST_SQLITE", str(VAR_DIR / "test_evalsite.sqlite3"))
    }

# Sessions are read from the cache and written through to the database, so a vote does
# not pay a session query.  CACHE_URL (redis://...) shares the cache between web
# processes and machines; without it each process keeps its own (sessions still work,
# a miss reads the database).
CACHE_URL = os.environ.get("CACHE_URL", "")
CACHES = {
    "default": {"BACKEND": "evalsite.cache.RedisCache", "LOCATION": CACHE_URL}
    if CACHE_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "evalsite"}
}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = ["evalsite.auth.ModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

DATA_UPLOAD_MAX_MEMORY_SIZE = 25 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 25 * 1024 * 1024

# --- Celery -------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = os.environ.get(
    "CELERY_RESULT_BACKEND", f"db+sqlite:///{VAR_DIR / 'celery-results.sqlite3'}"
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = False
# Two queues: `generation` (models; GPU machines) and `aggregation` (ratings; any CPU), so a
# long generation batch never delays a leaderboard refresh.  EVALSITE_QUEUE_PREFIX keeps test
# runs and several deployments on one broker apart.
EVALSITE_QUEUE_PREFIX = os.environ.get("EVALSITE_QUEUE_PREFIX", "")
QUEUE_GENERATION = f"{EVALSITE_QUEUE_PREFIX}generation"
QUEUE_AGGREGATION = f"{EVALSITE_QUEUE_PREFIX}aggregation"
CELERY_TASK_DEFAULT_QUEUE = QUEUE_AGGREGATION
CELERY_TASK_ROUTES = {
    "annotation.tasks.*": {"queue": QUEUE_GENERATION},
    "arena.tasks.*": {"queue": QUEUE_AGGREGATION},
}
# Task time limits, in one place: read by the task decorators and by the release of stale claims.
EVALSITE_GENERATION_SOFT_TIME_LIMIT = envint("EVALSITE_GENERATION_SOFT_TIME_LIMIT", 1800)
EVALSITE_GENERATION_TIME_LIMIT = envint("EVALSITE_GENERATION_TIME_LIMIT", 1900)
EVALSITE_AGGREGATION_SOFT_TIME_LIMIT = envint("EVALSITE_AGGREGATION_SOFT_TIME_LIMIT", 600)
EVALSITE_AGGREGATION_TIME_LIMIT = envint("EVALSITE_AGGREGATION_TIME_LIMIT", 660)
# Queued outputs whose message never reached a worker are queued again after this long.
EVALSITE_QUEUED_STALE_SECONDS = envint("EVALSITE_QUEUED_STALE_SECONDS", 6 * 3600)

# --- Evalsite -----------------------------------------------------------------------
EVALSITE_MODELS_DIR = Path(os.environ.get("EVALSITE_MODELS_DIR", VAR_DIR / "models"))
EVALSITE_LEASE_MINUTES = envint("EVALSITE_LEASE_MINUTES", 30)
EVALSITE_BOOTSTRAP_ROUNDS = envint("EVALSITE_BOOTSTRAP_ROUNDS", 1000)
EVALSITE_GENERATION_BATCH = envint("EVALSITE_GENERATION_BATCH", 8)
# While votes flow, a study's leaderboard is refreshed at most once per this many seconds,
# and always once after the last vote.
EVALSITE_RATINGS_MIN_INTERVAL = envint("EVALSITE_RATINGS_MIN_INTERVAL", 5)
# Other slices (per tag, per annotator group) less often: each is a pass of its own.
EVALSITE_SLICE_MIN_INTERVAL = envint("EVALSITE_SLICE_MIN_INTERVAL", 30)
# A judgment older than this has surely committed; refreshes add newer ones afresh each time.
EVALSITE_SETTLE_SECONDS = envint("EVALSITE_SETTLE_SECONDS", 60)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
