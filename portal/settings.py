"""One env-driven settings module for both run modes.

Embedded default (no DATABASE_URL): SQLite, in-process channel layer, tasks run in-process,
the beat schedule runs in a thread of the web process, local-process launcher, simulated GPUs.
Production (DATABASE_URL + REDIS_URL): PostgreSQL, Redis channel layer, Celery broker on Redis.
Only these settings differ between the two; the code paths are the same.
"""

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_DIR = Path(os.environ.get("PORTAL_LOCAL_DIR", BASE_DIR / ".local"))


def env_str(name: str, default: str = "") -> str:
    """A setting from the environment, or from the file named by NAME_FILE (for secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name, "")
    if value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env_str(name, "")
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = env_str(name, "")
    return float(value) if value else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = not DATABASE_URL

DEBUG = env_bool("DEBUG", default=EMBEDDED)


def _embedded_secret_key() -> str:
    """Embedded mode only: a random key kept in an ignored local file, so sessions survive restarts."""
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    key_file = LOCAL_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise RuntimeError("SECRET_KEY (or SECRET_KEY_FILE) is required when DATABASE_URL is set")
    SECRET_KEY = _embedded_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if EMBEDDED else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files: no CDN
    "channels",
    "django_htmx",
    "axes",
    "rules.apps.AutodiscoverRulesConfig",
    "portal",
    "governance",
    "scheduler",
    "workspaces",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "portal.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

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
                "portal.context_processors.portal",
            ],
        },
    },
]

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))}
else:
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(LOCAL_DIR / "portal.sqlite3")),
            # Tasks run in threads of the web process in embedded mode; IMMEDIATE transactions
            # and WAL make concurrent writers wait instead of failing with "database is locked".
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH", "") or None},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "governance.User"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "rules.permissions.ObjectPermissionBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# STATIC_MANIFEST=1 (set by `make web` after collectstatic): hashed, compressed files served by
# WhiteNoise with far-future caching. Otherwise WhiteNoise serves straight from the source folders.
STATIC_MANIFEST = env_bool("STATIC_MANIFEST", False)
# Collected files exist only in manifest mode; without it WhiteNoise would warn about a missing folder.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles"))) if STATIC_MANIFEST else None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not STATIC_MANIFEST

# --- Sessions, cookies and transport security (strict outside embedded mode) ---
SECURE = not EMBEDDED and not DEBUG
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
CSRF_COOKIE_HTTPONLY = True  # htmx sends the token from hx-headers on <body>, so no script reads the cookie
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SECURE)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if SECURE else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", SECURE) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Portal pages are never framed. JupyterLab under /w/ is served by the raw ASGI proxy
# (workspaces/proxy.py), outside Django's middleware, so the lab keeps framing its own documents.
X_FRAME_OPTIONS = "DENY"

# --- Login throttling ---
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("AXES_COOLOFF_HOURS", 0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"  # the sign-in page, saying why and for how long

# --- Email ---
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if EMBEDDED else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "gpu-portal@localhost")

# --- Channels ---
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # CHANNEL_LAYER_PREFIX keeps deployments (or a benchmark) sharing one Redis apart
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 200, "expiry": 30, "group_expiry": 300,
                       "prefix": env_str("CHANNEL_LAYER_PREFIX", "asgi")},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 200}}}

# --- Tasks ---
# PORTAL_TASKS: "celery" (production: a broker and workers), "thread" (embedded demo: a small
# thread pool inside the web process), "eager" (tests: run synchronously after commit).
PORTAL_TASKS = env_str("PORTAL_TASKS", "celery" if REDIS_URL else "thread")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = PORTAL_TASKS != "celery"
CELERY_TASK_EAGER_PROPAGATES = PORTAL_TASKS == "eager"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# In embedded mode the beat schedule runs in a thread of the web process (portal/inprocess.py).
PORTAL_INPROCESS_BEAT = env_bool("PORTAL_INPROCESS_BEAT", False)

# --- REST API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["governance.api.permissions.TokenScopePermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser", "rest_framework.parsers.FormParser", "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_THROTTLE_RATES": {"anon": "60/min", "user": "6000/min"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "GPU workspace portal API",
    "DESCRIPTION": "Teams, quota, GPU workspaces, scheduling and audit. Authenticate with `Authorization: Bearer <token>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a "state" field; name each choice set once so the schema (and
    # `check --deploy`, which runs drf-spectacular's checks) has no naming collision.
    "ENUM_NAME_OVERRIDES": {
        "TeamRoleEnum": "governance.models.Role",
        "NodeStateEnum": "scheduler.models.Node.State",
        "AllocationRequestStateEnum": "scheduler.models.AllocationRequest.State",
        "WorkspaceStateEnum": "workspaces.models.Workspace.State",
    },
}

# --- The product's own settings ---
# Where GPU facts come from: "nvml" on real GPU nodes, "simulated:<fleet.yaml>" elsewhere.
PORTAL_GPU_SOURCE = env_str("PORTAL_GPU_SOURCE", f"simulated:{BASE_DIR / 'scheduler' / 'fleets' / 'demo.yaml'}")
# Which node this process is (the node agent's name); the embedded default runs every simulated node.
PORTAL_NODE_NAME = env_str("PORTAL_NODE_NAME", "")
PORTAL_LAUNCHER = env_str("PORTAL_LAUNCHER", "local")  # local | docker
PORTAL_DOCKER_GPU_MODE = env_str("PORTAL_DOCKER_GPU_MODE", "device_request")  # device_request | env
PORTAL_HEARTBEAT_SECONDS = env_int("PORTAL_HEARTBEAT_SECONDS", 10)
PORTAL_SAMPLE_SECONDS = env_float("PORTAL_SAMPLE_SECONDS", 1.0)
# Telemetry retention: raw samples (seconds), 60 s rollups (days), 3600 s rollups (days).
PORTAL_TELEMETRY_RAW_SECONDS = env_int("PORTAL_TELEMETRY_RAW_SECONDS", 3600)
PORTAL_TELEMETRY_MINUTE_DAYS = env_int("PORTAL_TELEMETRY_MINUTE_DAYS", 30)
PORTAL_TELEMETRY_HOUR_DAYS = env_int("PORTAL_TELEMETRY_HOUR_DAYS", 365)
PORTAL_SCHEDULE_SECONDS = env_int("PORTAL_SCHEDULE_SECONDS", 5)
PORTAL_METRICS_TOKEN = env_str("PORTAL_METRICS_TOKEN")
PORTAL_WORKSPACE_ROOT = Path(env_str("PORTAL_WORKSPACE_ROOT", str(LOCAL_DIR / "workspaces")))
PORTAL_LAB_PORT_RANGE = tuple(int(p) for p in env_str("PORTAL_LAB_PORT_RANGE", "18800-18999").split("-"))
PORTAL_LAB_READY_TIMEOUT = env_int("PORTAL_LAB_READY_TIMEOUT", 120)
PORTAL_JUPYTER_COMMAND = env_str("PORTAL_JUPYTER_COMMAND", "")
# Scheduler: preempted work gets a grace period; nothing younger than the minimum runtime is
# preempted; fair share decays past usage with this half-life.
PORTAL_PREEMPT_GRACE_SECONDS = env_int("PORTAL_PREEMPT_GRACE_SECONDS", 300)
PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = env_int("PORTAL_PREEMPT_MIN_RUNTIME_SECONDS", 600)
PORTAL_FAIRSHARE_HALF_LIFE_HOURS = env_float("PORTAL_FAIRSHARE_HALF_LIFE_HOURS", 7 * 24)
# A borrowing request may reclaim borrowed GPUs of teams further above their fair share.
PORTAL_FAIR_RECLAIM = env_bool("PORTAL_FAIR_RECLAIM", True)
# Docker launcher: which portal owns a container (two portals may share an engine), whether a
# missing image may be pulled, the lab command template, and the labs' isolated bridge network.
PORTAL_DOCKER_INSTANCE = env_str("PORTAL_DOCKER_INSTANCE", "")
PORTAL_DOCKER_PULL = env_bool("PORTAL_DOCKER_PULL", True)
PORTAL_DOCKER_LAB_COMMAND = env_str("PORTAL_DOCKER_LAB_COMMAND", "")
PORTAL_DOCKER_NETWORK = env_str("PORTAL_DOCKER_NETWORK", "")
# Reconciler: how long a workspace may sit in a transitional state before it is repaired.
PORTAL_STUCK_SCHEDULED_SECONDS = env_int("PORTAL_STUCK_SCHEDULED_SECONDS", 600)
PORTAL_STUCK_STARTING_SECONDS = env_int("PORTAL_STUCK_STARTING_SECONDS", PORTAL_LAB_READY_TIMEOUT + 60)
PORTAL_STUCK_STOPPING_SECONDS = env_int("PORTAL_STUCK_STOPPING_SECONDS", 120)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        # In the embedded demo, one line per in-process task run (the sampler runs every second)
        # drowns everything else; Celery workers keep their per-task lines.
        "celery.app.trace": {"level": "WARNING" if PORTAL_INPROCESS_BEAT else "INFO"},
    },
}
