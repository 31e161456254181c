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


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--queues", "*", "--concurrency", "3", "--prefetch", "0", "--batch", "--max-tasks", "7"],
        ["--queues", "a,b", "--interval", "0.25", "--heartbeat", "0.5", "--dead-after", "1.5"],
        ["--max-crashes", "5", "--grace", "0", "--backend", "other", "-v", "2"],
        ["--health-port", "8000", "--health-host", "127.0.0.1"],
    ],
)
def test_each_supervised_process_gets_the_supervisors_options(flags: list[str]) -> None:
    """The supervisor rebuilds each worker's command line from its options: nothing may be dropped."""
    import dataclasses

    from fasttasks._supervisor import worker_arguments
    from fasttasks._worker import options_from_namespace
    from fasttasks.cli import build_parser

    options = options_from_namespace(build_parser().parse_args([*flags, "--processes", "4"]))
    child = options_from_namespace(build_parser().parse_args(worker_arguments(options, "w-3", 3)))
    # Each process has a health port of its own: the base port plus its slot - 1.
    port = None if options.health_port is None else options.health_port + 2
    assert child == dataclasses.replace(options, processes=1, worker_id="w-3", health_port=port)


def test_process_slots_keep_distinct_ids_within_64_characters() -> None:
    from fasttasks._supervisor import slot_worker_ids
    from fasttasks._worker import WorkerOptions

    assert slot_worker_ids(WorkerOptions(worker_id="web", processes=3)) == ["web-1", "web-2", "web-3"]
    long_ids = slot_worker_ids(WorkerOptions(worker_id="x" * 64, processes=12))
    assert len(set(long_ids)) == 12 and max(map(len, long_ids)) <= 64
    generated = slot_worker_ids(WorkerOptions(processes=2))
    assert generated[0].endswith("-1") and generated[1].endswith("-2")
    assert generated[0][:-2] == generated[1][:-2]
