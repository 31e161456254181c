"""Django settings for the test suite (and for the worker subprocesses the end-to-end tests start).

Environment:

* ``FASTTASKS_TEST_DB``: ``sqlite`` (default) or ``postgres``.
* ``FASTTASKS_TEST_SQLITE``: the SQLite file (NAME and TEST NAME); default: a file in the system temp
  directory unique to this run (pid-based), so that worker subprocesses can open the test database.
* ``FASTTASKS_TEST_DB_NAME``: overrides NAME; a worker subprocess uses it to open the database that
  pytest-django created (``connection.settings_dict["NAME"]`` in the test process).
* ``FASTTASKS_TEST_SQLITE_TIMEOUT``: SQLite's busy timeout in seconds (default 20).
* ``FASTTASKS_TEST_CONN_MAX_AGE``: ``CONN_MAX_AGE`` of the database (default 0).
* ``FASTTASKS_TEST_PG_TEST_NAME``: the database pytest-django creates on PostgreSQL (default
  ``test_fasttasks``); give each concurrently running suite its own.
* ``FASTTASKS_TEST_PG_HOST`` / ``_PORT`` / ``_USER`` / ``_PASSWORD``: PostgreSQL connection (default
  127.0.0.1:5432, user postgres, no password).
"""

from __future__ import annotations

import os
import tempfile
from importlib.util import find_spec
from typing import Any

TEST_DB = os.environ.get("FASTTASKS_TEST_DB", "sqlite").strip().lower()
if TEST_DB not in ("sqlite", "postgres"):
    raise RuntimeError(f"FASTTASKS_TEST_DB must be 'sqlite' or 'postgres', not {TEST_DB!r}")

SECRET_KEY = "fasttasks-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

BACKPORT = find_spec("django.tasks") is None

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    *(["django_tasks"] if BACKPORT else []),
    "fasttasks",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# No URLs by default (this module doubles as the empty URLconf); tests/test_admin.py brings its own
# with @pytest.mark.urls.
ROOT_URLCONF = "tests.settings"
urlpatterns: list[Any] = []

_name_override = os.environ.get("FASTTASKS_TEST_DB_NAME") or None

DATABASES: dict[str, dict[str, Any]]
if TEST_DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("FASTTASKS_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("FASTTASKS_TEST_PG_PORT", "5432"),
            "USER": os.environ.get("FASTTASKS_TEST_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("FASTTASKS_TEST_PG_PASSWORD", ""),
            "NAME": _name_override or "fasttasks",
            # pytest-django creates (and drops) it; set another name to run two suites at once.
            "TEST": {"NAME": os.environ.get("FASTTASKS_TEST_PG_TEST_NAME", "test_fasttasks")},
        }
    }
else:
    _sqlite_file = os.environ.get("FASTTASKS_TEST_SQLITE") or os.path.join(
        tempfile.gettempdir(), f"fasttasks-test-{os.getpid()}.sqlite3"
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # A file, not :memory:, so worker subprocesses see the same database.
            "NAME": _name_override or _sqlite_file,
            "TEST": {"NAME": _name_override or _sqlite_file},
            "OPTIONS": {
                "timeout": float(os.environ.get("FASTTASKS_TEST_SQLITE_TIMEOUT", "20")),
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

TASKS = {
    "default": {
        "BACKEND": "fasttasks.backend.FastTasksBackend",
        "QUEUES": ["default", "emails", "low"],
        "OPTIONS": {"DATABASE": "default"},
    },
    # Any queue name (QUEUES = [] turns queue validation off); same database.
    "other": {
        "BACKEND": "fasttasks.backend.FastTasksBackend",
        "QUEUES": [],
    },
    # Retries for every task that does not say otherwise.
    "retrying": {
        "BACKEND": "fasttasks.backend.FastTasksBackend",
        "QUEUES": [],
        "OPTIONS": {"RETRY": {"max_attempts": 3, "backoff": {"base": 0.05, "cap": 0.2}}},
    },
    # No LISTEN/NOTIFY (as behind a transaction-pooling PgBouncer): workers poll.
    "polling": {
        "BACKEND": "fasttasks.backend.FastTasksBackend",
        "QUEUES": [],
        "OPTIONS": {"DATABASE": "default", "LISTEN_NOTIFY": False},
    },
}

# Workers in the reliability tests keep their task threads' connections (as a production project
# would with CONN_MAX_AGE) instead of opening one per task.
for _database in DATABASES.values():
    _database["CONN_MAX_AGE"] = int(os.environ.get("FASTTASKS_TEST_CONN_MAX_AGE", "0"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Fast hashing for admin test users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "fasttasks": {"handlers": ["console"], "level": os.environ.get("FASTTASKS_LOG_LEVEL", "WARNING")},
    },
}
