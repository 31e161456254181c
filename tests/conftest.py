"""Session-wide setup: skip (or, under CI, fail) when the PostgreSQL test server is unreachable."""

from __future__ import annotations

import os

import pytest

_POSTGRES_PROBLEM: str | None = None


def _probe_postgres() -> str | None:
    from django.conf import settings

    params = settings.DATABASES["default"]
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        conn = psycopg.connect(
            host=params["HOST"],
            port=params["PORT"] or None,
            user=params["USER"],
            password=params["PASSWORD"] or None,
            dbname="postgres",
            connect_timeout=3,
        )
    except Exception as exc:
        return f"PostgreSQL at {params['HOST']}:{params['PORT']} is unreachable: {exc}"
    conn.close()
    return None


def pytest_configure(config: pytest.Config) -> None:
    global _POSTGRES_PROBLEM
    if os.environ.get("FASTTASKS_TEST_DB", "sqlite").strip().lower() != "postgres":
        return
    _POSTGRES_PROBLEM = _probe_postgres()
    if _POSTGRES_PROBLEM and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.exit(f"FASTTASKS_TEST_DB=postgres under CI, but {_POSTGRES_PROBLEM}", returncode=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _POSTGRES_PROBLEM:
        skip = pytest.mark.skip(reason=f"FASTTASKS_TEST_DB=postgres, but {_POSTGRES_PROBLEM}")
        for item in items:
            item.add_marker(skip)
