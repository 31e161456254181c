"""Benchmark settings. Everything that varies comes from the environment (set by ``benches/run.py``):

- ``BENCH_DB``: ``sqlite`` (default) or ``postgres``
- ``BENCH_IMPL``: ``fasttasks`` (default) or ``dtdb`` (django-tasks-db, the baseline)
- ``BENCH_SQLITE_PATH``: the SQLite file (default ``benches/out/bench.sqlite3``)
- ``BENCH_PG_NAME`` and the libpq variables ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``
- ``BENCH_SQLITE_TIMEOUT``: SQLite's busy timeout in seconds (default 20; R1 lowers it so that a lock held
  by another process makes the worker's statements fail instead of wait)

Both implementations get the same database settings: persistent connections (``CONN_MAX_AGE``, as
django-tasks-db recommends for ``db_worker``) and, on SQLite, WAL with ``synchronous=NORMAL`` and a
20 s busy timeout (the usual production set-up for SQLite with more than one process).
"""

import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent

DB = os.environ.get("BENCH_DB", "sqlite")
IMPL = os.environ.get("BENCH_IMPL", "fasttasks")
if DB not in ("sqlite", "postgres"):
    raise RuntimeError(f"BENCH_DB must be 'sqlite' or 'postgres', not {DB!r}")
if IMPL not in ("fasttasks", "dtdb"):
    raise RuntimeError(f"BENCH_IMPL must be 'fasttasks' or 'dtdb', not {IMPL!r}")

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["fasttasks"] if IMPL == "fasttasks" else ["django_tasks_db"]

if DB == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_SQLITE_PATH", str(BENCH_DIR / "out" / "bench.sqlite3")),
            "CONN_MAX_AGE": 600,
            "OPTIONS": {
                "timeout": float(os.environ.get("BENCH_SQLITE_TIMEOUT", "20")),
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("BENCH_PG_NAME", "fasttasks_bench"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "CONN_MAX_AGE": 600,
        }
    }

if IMPL == "fasttasks":
    TASKS = {
        "default": {
            "BACKEND": "fasttasks.backend.FastTasksBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"DATABASE": "default"},
        }
    }
else:
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
