"""How the worker turns Django's DATABASES entry into what the Rust core connects with."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fasttasks._worker import default_postgres_host


def test_empty_host_means_the_unix_socket_like_libpq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    missing, present = tmp_path / "missing", tmp_path / "run"
    present.mkdir()
    assert default_postgres_host(5432, (str(missing), str(present))) == "localhost"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(present / ".s.PGSQL.5432"))
    try:
        assert default_postgres_host(5432, (str(missing), str(present))) == str(present)
        assert default_postgres_host(5433, (str(present),)) == "localhost"
        monkeypatch.setenv("PGHOST", "db.internal")
        assert default_postgres_host(5432, (str(present),)) == "db.internal"
    finally:
        server.close()


def test_an_sqlite_too_old_for_the_worker_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from fasttasks import _worker

    _worker.check_single_sqlite_library()  # this machine's SQLite is new enough
    monkeypatch.setattr(_worker, "MIN_SQLITE_VERSION", (*sqlite3.sqlite_version_info[:2], 999))
    with pytest.raises(_worker.WorkerSetupError, match=r"needs SQLite .* or newer"):
        _worker.check_single_sqlite_library()
