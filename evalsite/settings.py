"""Evalsite settings, read from the environment.

Defaults give a checkout that just runs: SQLite under ``var/`` and kombu's filesystem
broker, so no server is needed.  ``DATABASE_URL`` selects PostgreSQL and
``CELERY_BROKER_URL`` selects Redis or RabbitMQ for real deployments.
"""
from __future__ import annotations

import os
from datetime import timedelta
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

# Off unless the environment turns it on (`make run` does, for the local demo).
DEBUG = envbool("DEBUG", False)


def _secret_key_weakness(key: str) -> str | None:
    """Why Django's deploy check (security.W009) would call ``key`` weak, or None if it is strong."""
    if not key.strip():
        return "is blank"
    if len(key) < 50 or len(set(key)) < 5:
        return f"is too weak ({len(key)} characters, {len(set(key))} distinct; at least 50 and 5 are needed)"
    if key.startswith("django-insecure-"):
        return "starts with 'django-insecure-' (a key made by startproject for development)"
    return None


_KEY_HINT = ("set it to a random string of at least 50 characters, e.g. the output of "
             "python -c 'import secrets; print(secrets.token_urlsafe(50))', or set DEBUG=1 for local development")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# Old keys still accepted for existing sessions and signatures while a new SECRET_KEY rolls out.
SECRET_KEY_FALLBACKS = envlist("SECRET_KEY_FALLBACKS", [])
if DEBUG:
    SECRET_KEY = SECRET_KEY or "insecure-development-key-do-not-use-in-production"
else:
    for _name, _key in [("SECRET_KEY", SECRET_KEY)] + [("SECRET_KEY_FALLBACKS", k) for k in SECRET_KEY_FALLBACKS]:
        if (_why := _secret_key_weakness(_key)) is not None:
            raise ImproperlyConfigured(f"{_name} {_why} while DEBUG is off: {_KEY_HINT}")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# --- Security and deployment -------------------------------------------------------
# EVALSITE_HTTPS=1: the site is served over HTTPS, directly or behind a proxy that ends TLS.
# It turns on each of the settings below, and each can still be set on its own.
EVALSITE_HTTPS = envbool("EVALSITE_HTTPS", False)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", EVALSITE_HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # a load balancer's probe may speak plain HTTP
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", EVALSITE_HTTPS)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", EVALSITE_HTTPS)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if EVALSITE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", EVALSITE_HTTPS)
# Preloading asks browsers to hard-code HTTPS for the domain, a promise slow to take back: only
# when asked for.  Not preloading is then a decision, so its deploy-check warning is silenced.
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Only behind a proxy that sets X-Forwarded-Proto itself (replacing a client's): anywhere else a
# client could claim HTTPS.
if envbool("EVALSITE_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The pages carry the CSRF token themselves (hx-headers on <body>, {% csrf_token %} in forms), so
# no script reads the cookie; Django's CSRF how-to for that case lets the cookie be HttpOnly.
CSRF_COOKIE_HTTPONLY = envbool("CSRF_COOKIE_HTTPONLY", True)

# Content-Security-Policy (django-csp): scripts, styles and everything else from this origin only;
# no inline script or style, no eval (htmx is configured in base.html not to need them).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

# Sign-in throttling (django-axes, see evalsite/throttle.py): after AXES_FAILURE_LIMIT failures
# for one username from one address, that pair is refused for AXES_COOLOFF_MINUTES, counted from
# the last failure (refused attempts do not extend it); a successful sign-in clears the count.
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("AXES_COOLOFF_MINUTES", 15))
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME < timedelta(minutes=1):
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT and AXES_COOLOFF_MINUTES must each be at least 1")
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "evalsite.throttle.lockout_response"
AXES_CLIENT_IP_CALLABLE = "evalsite.throttle.client_ip"
# Reverse proxies in front that append the client's address to X-Forwarded-For (0: none, use
# the connection's address).  Set it only to the number actually there: a client can forge the rest.
EVALSITE_PROXY_COUNT = envint("EVALSITE_PROXY_COUNT", 0)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "rest_framework.authtoken",  # API tokens for scripts (manage.py drf_create_token USER)
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from our own static files
    "csp",
    "axes",
    "annotation",
    "arena",
    "metrics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything reads the body (the CSRF check does): an oversized request is refused unread.
    "evalsite.middleware.RequestSizeLimitMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as its docs say: turns a sign-in that axes refused into the lockout page.
    "axes.middleware.AxesMiddleware",
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

AUTHENTICATION_BACKENDS = [
    # Refuses a locked-out username/IP before any password is checked; logs no one in and
    # checks no permissions (the standalone variant), so it adds nothing to a signed-in request.
    "axes.backends.AxesStandaloneBackend",
    "evalsite.auth.ModelBackend",
]

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
# Media (generated images, thumbnails, reference sets, cached features) go through Django's
# storage API. When several machines share the work, EVALSITE_S3_BUCKET puts them on
# S3-compatible storage (the `s3` extra: django-storages); credentials come from the usual AWS_*
# variables or the machine's role, AWS_S3_ENDPOINT_URL points at MinIO, Ceph, R2... The bucket
# stays private: pages stream images through Evalsite's own views, which check access each time.
EVALSITE_S3_BUCKET = os.environ.get("EVALSITE_S3_BUCKET", "").strip()
if EVALSITE_S3_BUCKET:
    _MEDIA_STORAGE = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": EVALSITE_S3_BUCKET,
        "location": os.environ.get("EVALSITE_S3_PREFIX", "media").strip("/"),
        "endpoint_url": os.environ.get("AWS_S3_ENDPOINT_URL", "").strip() or None,
        "region_name": os.environ.get("AWS_S3_REGION_NAME", "").strip() or None,
        "default_acl": None, "file_overwrite": False, "querystring_auth": True,
    }}
else:
    _MEDIA_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _MEDIA_STORAGE,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

# Form fields (not files) of one request; files go to a temporary file past 2.5 MB and are
# parsed from there as a stream (see EVALSITE_UPLOAD_MAX_BYTES for the file size limit).
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Input limits ------------------------------------------------------------------
# An uploaded prompt or outputs file larger than this is refused from its size, before it is read;
# files are parsed as a stream, so the limit bounds disk and time, not memory.
EVALSITE_UPLOAD_MAX_BYTES = envint("EVALSITE_UPLOAD_MAX_BYTES", 50 * 1024 * 1024)
# A request whose Content-Length is larger than this gets 413 before any of its body is read (by
# evalsite.middleware.RequestSizeLimitMiddleware): the upload limit plus room for the other fields.
EVALSITE_REQUEST_MAX_BYTES = envint("EVALSITE_REQUEST_MAX_BYTES", EVALSITE_UPLOAD_MAX_BYTES + 1024 * 1024)

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

# --- Worker recovery and archives ------------------------------------------------
# A message delivered to a worker that dies before acknowledging it is handed to another worker
# once the broker's visibility timeout passes (Redis and SQS; kombu's default is an hour).  It
# must outlast the longest task, or a task still running would be delivered a second time: the
# hard time limit plus a margin.  kombu's filesystem broker deletes a message as it delivers it
# (nothing to redeliver), so there the claims sweep below is the only recovery.
EVALSITE_VISIBILITY_MARGIN_SECONDS = envint("EVALSITE_VISIBILITY_MARGIN_SECONDS", 300)
EVALSITE_BROKER_VISIBILITY_TIMEOUT = (
    max(EVALSITE_GENERATION_TIME_LIMIT, EVALSITE_AGGREGATION_TIME_LIMIT) + EVALSITE_VISIBILITY_MARGIN_SECONDS
)
if not CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": EVALSITE_BROKER_VISIBILITY_TIMEOUT}
# Each worker process records itself and beats this often, and at each beat frees the outputs
# held by workers that are gone (silent for EVALSITE_WORKER_DEAD_SECONDS, stopped, or replaced by
# a new start under the same node name) or held longer than the task time limit.
EVALSITE_WORKER_HEARTBEAT_SECONDS = envint("EVALSITE_WORKER_HEARTBEAT_SECONDS", 15)
EVALSITE_WORKER_DEAD_SECONDS = envint("EVALSITE_WORKER_DEAD_SECONDS", 60)
if EVALSITE_WORKER_HEARTBEAT_SECONDS < 1 or EVALSITE_WORKER_DEAD_SECONDS < 2 * EVALSITE_WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "EVALSITE_WORKER_DEAD_SECONDS must be at least twice EVALSITE_WORKER_HEARTBEAT_SECONDS (and that at "
        f"least 1), got {EVALSITE_WORKER_DEAD_SECONDS} and {EVALSITE_WORKER_HEARTBEAT_SECONDS}: a live worker "
        "would be taken for dead between two beats"
    )
# An output whose worker died this many times while generating it fails (visibly, with Retry)
# instead of being queued again: a batch that kills its worker must not loop forever.
EVALSITE_GENERATION_MAX_ATTEMPTS = envint("EVALSITE_GENERATION_MAX_ATTEMPTS", 3)
# Archives (reference image sets) are checked before anything is extracted.
EVALSITE_ARCHIVE_MAX_MEMBERS = envint("EVALSITE_ARCHIVE_MAX_MEMBERS", 10_000)
EVALSITE_ARCHIVE_MAX_BYTES = envint("EVALSITE_ARCHIVE_MAX_BYTES", 2 * 1024**3)
# a reference image's width × height, read from its header before any decoding
EVALSITE_REFERENCE_MAX_PIXELS = envint("EVALSITE_REFERENCE_MAX_PIXELS", 4096 * 4096)

# --- Evalsite -----------------------------------------------------------------------
EVALSITE_MODELS_DIR = Path(os.environ.get("EVALSITE_MODELS_DIR", VAR_DIR / "models"))
EVALSITE_LEASE_MINUTES = envint("EVALSITE_LEASE_MINUTES", 30)
# The annotate page holds the next task, leased ahead, and shows it the moment a vote is cast.
EVALSITE_FETCH_AHEAD = envbool("EVALSITE_FETCH_AHEAD", True)
# Active time on a task leaves out the tab hidden and stretches without a key, click, pointer move
# or scroll longer than this many seconds (the annotator was away).
EVALSITE_IDLE_SECONDS = envint("EVALSITE_IDLE_SECONDS", 30)
EVALSITE_BOOTSTRAP_ROUNDS = envint("EVALSITE_BOOTSTRAP_ROUNDS", 1000)
EVALSITE_GENERATION_BATCH = envint("EVALSITE_GENERATION_BATCH", 8)
# While votes flow, a study's leaderboard is refreshed at most once per this many seconds,
# and always once after the last vote.
EVALSITE_RATINGS_MIN_INTERVAL = envint("EVALSITE_RATINGS_MIN_INTERVAL", 5)
# Other slices (per tag, per annotator group) less often: each is a pass of its own.
EVALSITE_SLICE_MIN_INTERVAL = envint("EVALSITE_SLICE_MIN_INTERVAL", 30)
# The managers' summary (its metric and judge correlations bootstrap) at most once per this many
# seconds, and always once after the last change.
EVALSITE_SUMMARY_MIN_INTERVAL = envint("EVALSITE_SUMMARY_MIN_INTERVAL", 30)
# The agreement page's competence and MACE flags apply to annotators with at least this many judgments.
EVALSITE_AGREEMENT_MIN_JUDGMENTS = envint("EVALSITE_AGREEMENT_MIN_JUDGMENTS", 20)
# A judgment older than this has surely committed; refreshes add newer ones afresh each time.
EVALSITE_SETTLE_SECONDS = envint("EVALSITE_SETTLE_SECONDS", 60)

# --- Candidate spec policy ------------------------------------------------------
# What an evaluator's candidate spec may ask of the shared workers; read on the web when a
# candidate is added and again by each worker before it generates (annotation.services.
# spec_policy). The defaults are the safe ones.
# Variables a spec may name as api_key_env: exact names, or prefixes ending in "*".
EVALSITE_API_KEY_ENVS = envlist("EVALSITE_API_KEY_ENVS", ["EVALSITE_KEY_*"])
# trust_remote_code runs Python shipped with a model on the workers: off unless set.
EVALSITE_TRUST_REMOTE_CODE = envbool("EVALSITE_TRUST_REMOTE_CODE", False)
# Local model paths must resolve (symlinks and .. followed) inside one of these directories.
# A root that does not exist on the web machine (a GPU-only mount) is checked by a worker.
EVALSITE_MODEL_ROOTS = envlist("EVALSITE_MODEL_ROOTS", [str(EVALSITE_MODELS_DIR)])
# Hub ids (org/name) load from the workers' Hugging Face cache (HF_HUB_OFFLINE); 0 refuses them.
EVALSITE_ALLOW_HUB_IDS = envbool("EVALSITE_ALLOW_HUB_IDS", True)
# URL prefixes an OpenAI-compatible base_url must fall under (comma list); empty allows any.
EVALSITE_BASE_URLS = envlist("EVALSITE_BASE_URLS", [])
# Where a worker runs diffusers pipelines: auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N.
# float16/bfloat16 specs run in float32 on a CPU (recorded in each output's settings).
EVALSITE_DIFFUSERS_DEVICE = os.environ.get("EVALSITE_DIFFUSERS_DEVICE", "auto").strip() or "auto"

# --- Invitations --------------------------------------------------------------------
# An invitation link expires after this many days unless its evaluator picks another span.
EVALSITE_INVITATION_DAYS = envint("EVALSITE_INVITATION_DAYS", 7)
# The longest span an evaluator may pick for a link.
EVALSITE_INVITATION_MAX_DAYS = envint("EVALSITE_INVITATION_MAX_DAYS", 90)
if not 1 <= EVALSITE_INVITATION_DAYS <= EVALSITE_INVITATION_MAX_DAYS:
    raise ImproperlyConfigured(
        f"EVALSITE_INVITATION_DAYS must be between 1 and EVALSITE_INVITATION_MAX_DAYS "
        f"({EVALSITE_INVITATION_MAX_DAYS}), got {EVALSITE_INVITATION_DAYS}"
    )

# --- Quality (rule ties, identity guard, annotator quality table) ---------------------
# Two outputs of a pair at least this similar (percent; whitespace and case ignored) are not
# served: the pair is recorded as a tie by rule.  100: only identical texts; 0: rule off.
EVALSITE_NEAR_IDENTICAL = envint("EVALSITE_NEAR_IDENTICAL", 95)
# The similarity compares at most this many characters of each output (bounds its cost).
EVALSITE_NEAR_IDENTICAL_CHARS = envint("EVALSITE_NEAR_IDENTICAL_CHARS", 4000)
# An annotator whose median active time per task is under this many seconds is flagged as speeding.
EVALSITE_SPEEDING_SECONDS = envint("EVALSITE_SPEEDING_SECONDS", 3)
# Straight-lining: flagged when one answer makes up at least this share (percent) of an
# annotator's judgments, or when the same answer runs this many times in a row...
EVALSITE_STRAIGHTLINE_SHARE = envint("EVALSITE_STRAIGHTLINE_SHARE", 90)
EVALSITE_STRAIGHTLINE_RUN = envint("EVALSITE_STRAIGHTLINE_RUN", 20)
# ...and the annotator has at least this many judgments (fewer say too little to flag).
EVALSITE_QUALITY_MIN_JUDGMENTS = envint("EVALSITE_QUALITY_MIN_JUDGMENTS", 10)
if not 0 <= EVALSITE_NEAR_IDENTICAL <= 100:
    raise ImproperlyConfigured(f"EVALSITE_NEAR_IDENTICAL is a percent (0..100), got {EVALSITE_NEAR_IDENTICAL}")

# --- Annotator's experience (instructions, skip, undo) --------------------------------
# An annotator may take back their latest judgment for this many seconds after making it.
EVALSITE_UNDO_SECONDS = envint("EVALSITE_UNDO_SECONDS", 30)
if EVALSITE_UNDO_SECONDS < 0:
    raise ImproperlyConfigured(f"EVALSITE_UNDO_SECONDS is a number of seconds (0 turns undo off), "
                               f"got {EVALSITE_UNDO_SECONDS}")

# --- REST API (annotation/api, arena/api, evalsite/api_urls.py) ------------------------
REST_FRAMEWORK = {
    # The first class names the scheme of the 401's WWW-Authenticate header ("Token"); a
    # session comes last, so a browser's cookie still works (with CSRF on unsafe methods).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "evalsite.throttle.LockoutAwareBasicAuthentication",  # Basic auth, counted by axes
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Evalsite API",
    "DESCRIPTION": (
        "Studies, blind annotation tasks, outputs, judgments (export and import) and leaderboards. "
        "Authenticate with `Authorization: Token <key>` (make one with `manage.py drf_create_token USER`), "
        "HTTP Basic, or the site's session cookie (with the CSRF token on POST)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from drf-spectacular-sidecar's static files: nothing comes from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # no badge fetched from validator.swagger.io: the docs page talks to this site only
    "SWAGGER_UI_SETTINGS": {"validatorUrl": None},
    # The schema and docs describe the API to anyone (the operations still need credentials);
    # they read no credentials, so a bad token or password is not counted against anyone here.
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {"StudyRoleEnum": "annotation.models.StudyMember.Role"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
